"""Progress bars (click's, with ETA, on stderr) for the long loops, or nothing."""

from __future__ import annotations

import contextlib

import click


def progress(iterable, label: str, enabled: bool):
    """A context manager yielding ``iterable``, wrapped in a progress bar when ``enabled``."""
    if not enabled:
        return contextlib.nullcontext(iterable)
    return click.progressbar(iterable, label=label, file=click.get_text_stream("stderr"), show_eta=True,
                             show_pos=True)
