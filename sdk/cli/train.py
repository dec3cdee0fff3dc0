"""``mtsim train CONFIG.yaml``: train or fine-tune a model (needs the ``train`` extra; torch is imported lazily)."""

from __future__ import annotations

import os

import click


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in the config's run_dir from its last.pt.")
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Pause after this many optimizer steps (per ensemble member): write last.pt and exit.",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Pause after this much wall time (per ensemble member).",
)
def train(config, resume, max_steps, max_minutes):
    """Train (or fine-tune) the model described by CONFIG (YAML; schema in mtsim.training.config, example in
    examples/train_tiny.yaml). Prints one line per epoch with the loss of each task; writes last.pt, best.pt and
    metrics.jsonl to the config's run_dir."""
    from mtsim.training.checkpoint import CheckpointError
    from mtsim.training.config import ConfigError, load_config
    from mtsim.training.trainer import train as run

    try:
        settings = load_config(config)
    except ConfigError as err:
        raise click.ClickException(f"{config}: {err}") from None
    try:
        paths = run(
            settings,
            resume=resume,
            max_steps=max_steps,
            max_seconds=None if max_minutes is None else 60.0 * max_minutes,
            log=click.echo,
        )
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for path in paths:
        if os.path.exists(path):
            click.echo(f"best checkpoint: {path}")
