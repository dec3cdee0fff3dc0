"""``mtsim run``: one task over many structures on Dask, one row per structure in an ASE database.

Task options are given as ``-O NAME=VALUE`` (VALUE is JSON, else a string): ``-O fmax=0.01 -O supercell=[2,2,2]``.
"""

from __future__ import annotations

import json

import click

from mtsim.workflows.tasks import TASKS


def parse_options(pairs) -> dict:
    """``NAME=VALUE`` pairs as a dict (VALUE parsed as JSON where it is JSON)."""
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="-O/--option")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


def option_help() -> str:
    return "; ".join(
        f"{name}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in task.defaults.items())
        for name, task in TASKS.items()
    )


@click.command("run", epilog="Task options and defaults: " + option_help())
@click.argument("task", type=click.Choice(sorted(TASKS)))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--db", required=True, help="ASE database of the results: a file (SQLite) or a postgresql:// URL.")
@click.option("--workers", type=int, default=None, help="Worker processes of a local cluster (default: one per core).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (instead of a local cluster).")
@click.option("--threads", type=int, default=None, help="onnxruntime threads per worker (default: cores shared out).")
@click.option("--model", "model_path", default=None, help="ONNX model file (default: the bundled model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "float64"]), default=None)
@click.option("-O", "--option", "pairs", multiple=True, metavar="NAME=VALUE", help="A task option (JSON value).")
@click.option("--retry-failed", is_flag=True, help="Run again the structures recorded as failed.")
@click.option(
    "--files",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for per-structure files (phonon; default: <db name>_files beside the database).",
)
@click.option("--batch-atoms", type=int, default=None, help="Atoms per Dask task (default: the task's own).")
@click.option("--select", default=None, help="ASE selection of the rows of database inputs (e.g. status=done).")
@click.option("--quiet", is_flag=True, help="No live progress on stderr.")
def run(
    task,
    inputs,
    db,
    workers,
    scheduler,
    threads,
    model_path,
    device,
    precision,
    pairs,
    retry_failed,
    files,
    batch_atoms,
    select,
    quiet,
):
    """Run TASK (predict, relax, phonon, md, label) on every structure in INPUTS (files, globs, folders, ASE databases);
    rerunning skips the structures already done."""
    from mtsim.workflows import Interrupted
    from mtsim.workflows import run as run_workflow

    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers (a local cluster) or --scheduler, not both")
    try:
        summary = run_workflow(
            task,
            list(inputs),
            db,
            workers=workers,
            scheduler=scheduler,
            model=model_path,
            device=device,
            precision=precision,
            threads=threads,
            options=parse_options(pairs),
            retry_failed=retry_failed,
            files=files,
            batch_atoms=batch_atoms,
            select=select,
            progress=not quiet,
        )
    except Interrupted as stop:
        click.echo(stop.summary.table())
        raise click.exceptions.Exit(130) from None
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(summary.table())
