"""What every command shares: the model options, loading the model and reading structures, with errors as click
messages."""

from __future__ import annotations

import click


def model_options(function):
    """--model, --device, --precision (passed as ``model_path``, ``device``, ``precision``)."""
    function = click.option(
        "--precision",
        type=click.Choice(["float32", "float64"]),
        default=None,
        help="Pick the float32 or float64 file of a model stem.",
    )(function)
    function = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(
        function
    )
    return click.option("--model", "model_path", default=None, help="ONNX model file (default: the bundled model).")(
        function
    )


def load_model(model, device, precision=None):
    """``mtsim.load`` for a command (tests replace each command module's ``load_model``)."""
    import mtsim
    from mtsim.onnx_format import ModelFileError

    try:
        return mtsim.load(model, device=device, precision=precision)
    except (FileNotFoundError, ModelFileError, ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None


def read_frames(path) -> list:
    """Every frame of any file ASE can read, as ``ase.Atoms``; a broken file stops with its frame and line."""
    from mtsim.structure import StructureFileError, iread_frames

    try:
        frames = list(iread_frames(path))
    except StructureFileError as err:
        raise click.ClickException(str(err)) from None
    if not frames:
        raise click.ClickException(f"cannot read {path}: it holds no structures")
    return frames


def check_arguments(*checks) -> None:
    """Run ``(function, name, value, ...)`` checks of ``mtsim.checks`` (or any callable raising ``ValueError`` or,
    for an output file that exists, ``FileExistsError``) before anything loads; the first failure is a usage error
    (exit 2) naming the option."""
    try:
        for function, *arguments in checks:
            function(*arguments)
    except (ValueError, FileExistsError) as err:
        raise click.UsageError(str(err)) from None


def read_structure(path):
    """The last frame of any file ASE can read."""
    return read_frames(path)[-1]
