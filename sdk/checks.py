"""Argument checks shared by the API and the command line: each raises a ``ValueError`` naming the argument, so that
bad input stops before a model loads or a run starts.

>>> from mtsim.checks import positive
>>> positive("timestep", 0.5)
0.5
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

THERMOSTATS = ("nvt-nh", "npt")
"""Ensembles whose Nosé–Hoover thermostat needs a target temperature above 0 K (its mass is N k T tau^2); Langevin
at 0 K is plain friction (a quench) and allowed."""


def number(name: str, value) -> float:
    """``value`` as a finite float (a real number, not a string or bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def positive(name: str, value) -> float:
    """``value`` > 0 (finite)."""
    value = number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value:g}")
    return value


def non_negative(name: str, value) -> float:
    """``value`` >= 0 (finite)."""
    value = number(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value:g}")
    return value


def integer(name: str, value, minimum: int = 0) -> int:
    """``value`` an integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def finite(name: str, value) -> np.ndarray:
    """``value`` (a number or an array of them) with every entry finite, as a float array."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return array


def parent_exists(name: str, path) -> None:
    """The folder that ``path`` (a file to be written; None or an open object: nothing to check) goes into
    exists."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise ValueError(f"{name}: folder {parent} does not exist (for {path})")


def output_file(name: str, path, overwrite: bool = False) -> None:
    """A file to be written: its folder exists, and it does not exist unless ``overwrite`` (None or an open object:
    nothing to check). A ``FileExistsError`` names the argument and the file."""
    parent_exists(name, path)
    if path is not None and isinstance(path, (str, os.PathLike)) and not overwrite and os.path.exists(path):
        raise FileExistsError(f"{name}: {path} exists; use --overwrite (overwrite=True) to replace it")


def md_arguments(ensemble: str, timestep, steps, temperature, pressure=0.0, field=None) -> None:
    """The arguments of an MD run: ``timestep`` > 0 fs, ``steps`` >= 0, ``temperature`` >= 0 K and > 0 K for a
    Nosé–Hoover thermostat (``THERMOSTATS``), ``pressure`` finite (GPa), ``field`` finite (a vector; callables are not
    checked)."""
    positive("timestep", timestep)
    integer("steps", steps, 0)
    non_negative("temperature", temperature)
    if ensemble in THERMOSTATS and temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 K for {ensemble} (its thermostat target), got {temperature:g}; "
            "use nve or nvt-langevin at 0 K"
        )
    number("pressure", pressure)
    if field is not None and not callable(field):
        finite("field", field)
