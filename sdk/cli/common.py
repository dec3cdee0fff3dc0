"""What every command shares: loading the model and reading structures, with errors as click messages."""

from __future__ import annotations

import click


def load_model(model, device, precision=None):
    """``mtsim.load`` for a command (tests replace each command module's ``load_model``)."""
    import mtsim
    from mtsim.onnx_format import ModelFileError

    try:
        return mtsim.load(model, device=device, precision=precision)
    except (FileNotFoundError, ModelFileError, ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None


def read_frames(path) -> list:
    """Every frame of any file ASE can read, as ``ase.Atoms``."""
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for unreadable files
        raise click.ClickException(f"cannot read {path}: {err}") from None
    if not frames:
        raise click.ClickException(f"{path} holds no structures")
    return frames


def read_structure(path):
    """The last frame of any file ASE can read."""
    return read_frames(path)[-1]
