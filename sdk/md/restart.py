"""MD restart files: everything a :class:`mtsim.md.Simulation` needs to continue bitwise as if never stopped.

A restart file is an ``.npz`` archive (read with ``allow_pickle=False``) holding the state arrays (``numbers``,
``positions`` Å unwrapped, ``momenta`` amu·Å/t, ``masses`` amu, ``cell`` Å, ``pbc``, ``field`` V/Å, ``dipole``
e·Å) and ``meta``, a JSON text with the step, time (fs), ``field_work`` (eV), the conserved-energy ``offset`` and
``reference_conserved`` (eV), ``start_temperature`` (K), the integrator's ``ensemble`` and dynamic variables
(``Integrator.get_state``: thermostat chains, cell momentum, the Langevin noise generator), the state of the hooks
that have one (:class:`mtsim.md.RemoveAtoms`) and the sizes in bytes of the log and trajectory when it was written
(a continued run cuts them back to these sizes and appends). Floats go through JSON exactly (``repr`` round-trips).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mtsim.md.state import MDState

FORMAT = "mtsim-md-restart"
VERSION = 1
ARRAYS = ("numbers", "positions", "momenta", "masses", "cell", "pbc", "field", "dipole")


class RestartError(ValueError):
    """A restart file that cannot be read or does not fit the run it should continue."""


def write_restart(path: str | os.PathLike, state: MDState, meta: dict) -> None:
    """Write ``state`` and ``meta`` (JSON-able) to ``path`` atomically: a temporary file beside it, then
    ``os.replace``, so an interrupted write leaves the previous restart file intact."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(state.step),
        "time": float(state.time),
        "field_work": float(state.field_work),
        **meta,
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), **{name: getattr(state, name) for name in ARRAYS})
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def read_restart(path: str | os.PathLike) -> tuple[MDState, dict]:
    """The state and the ``meta`` dict of a restart file; :class:`RestartError` naming the file if it is not
    one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: np.array(data[name]) for name in ARRAYS}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise RestartError(f"{path} is not an mtsim MD restart file ({type(err).__name__}: {err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise RestartError(
            f"{path} is not an mtsim MD restart file of version {VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    state = MDState(time=float(meta["time"]), step=int(meta["step"]), field_work=float(meta["field_work"]), **arrays)
    return state, meta


def cut_back(path, size) -> None:
    """Truncate the output file ``path`` to ``size`` bytes (its size when the restart file was written), dropping
    what a run wrote after it; nothing if ``path`` is not a file path or ``size`` is None."""
    if size is None or not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
        return
    if os.path.getsize(path) > size:
        os.truncate(path, size)
