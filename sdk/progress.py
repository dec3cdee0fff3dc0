"""Progress bars for long runs: click's, with position and ETA, on stderr (or nothing when disabled)."""

from __future__ import annotations

import contextlib

import click


def progress(iterable=None, label: str = "", enabled: bool = True, length: int | None = None):
    """A context manager yielding a progress bar over ``iterable`` (or ``length`` steps, updated by the caller),
    or the bare ``iterable`` when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext(iterable)
    return click.progressbar(
        iterable, length=length, label=label, file=click.get_text_stream("stderr"), show_eta=True, show_pos=True
    )
