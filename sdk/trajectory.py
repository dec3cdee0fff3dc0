"""MD output: extxyz trajectories with every output per frame, and CSV logs.

A trajectory frame holds the unwrapped positions, the cell, the momenta and every model output: per atom
``forces`` (the model's, without the field force), ``magmoms``, ``charges``, ``born_charges`` (9 values per atom,
row-major ``Z[i, a, b]``); per frame ``energy``, ``stress`` (9), ``dielectric`` (9), ``polarization`` (μC/cm²),
``field`` (V/Å), ``time_fs``, ``step``, ``temperature_K``. ``ase.io.read(path, index=":")`` reads it back (energy,
forces, stress, magmoms, charges and polarization land on the calculator, ``atoms.calc.results``; the rest in
``atoms.info``/``atoms.arrays``).

The log is CSV with the columns :data:`LOG_COLUMNS`.
"""

from __future__ import annotations

import contextlib
import csv
import os

import numpy as np

LOG_COLUMNS = (
    "step",
    "time_fs",
    "temperature_K",
    "potential_energy_eV",
    "kinetic_energy_eV",
    "conserved_eV",
    "pressure_GPa",
    "polarization_x_uC_cm2",
    "polarization_y_uC_cm2",
    "polarization_z_uC_cm2",
)


def open_output(path: str | os.PathLike, overwrite: bool = False, append: bool = False, **kwargs):
    """Open an output file for writing: a new file; an existing one only with ``overwrite`` (replaced) or
    ``append`` (continued), else a ``FileExistsError`` naming it."""
    if append:
        return open(path, "a", **kwargs)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True (mtsim: --overwrite) to replace it")
    return open(path, "w", **kwargs)


class CSVLog:
    """One row per call of :meth:`write` (a :class:`mtsim.md.Simulation`), columns :data:`LOG_COLUMNS`.

    An existing file is replaced only with ``overwrite``; with ``append`` rows are added to it (the header is
    written only if it is empty)."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, append: bool = False):
        self.path = path
        self.handle = open_output(path, overwrite, append, newline="")
        self.writer = csv.writer(self.handle)
        if self.handle.tell() == 0:
            self.writer.writerow(LOG_COLUMNS)
        self.last_step = None

    def write(self, sim) -> None:
        """Append a row (once per step: a repeated step is skipped)."""
        s = sim.state
        if s.step == self.last_step:
            return
        self.last_step = s.step
        p = s.polarization
        row = (s.step, s.time, s.temperature, s.energy, s.kinetic_energy, sim.conserved, s.pressure, *p)
        self.writer.writerow([row[0]] + [f"{v:.12g}" for v in row[1:]])
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def frame(state):
    """An ``ase.Atoms`` with every output of the state (see the module docstring)."""
    from ase import Atoms

    n = state.n_atoms
    atoms = Atoms(numbers=state.numbers, positions=state.positions, cell=state.cell, pbc=state.pbc)
    atoms.set_momenta(state.momenta)
    outputs = state.outputs
    atoms.info.update(
        energy=float(outputs["energy"]),
        stress=np.asarray(outputs["stress"]).reshape(9),
        dielectric=np.asarray(outputs["dielectric"]).reshape(9),
        polarization=np.asarray(state.polarization),
        field=np.asarray(state.field),
        time_fs=float(state.time),
        step=int(state.step),
        temperature_K=float(state.temperature),
    )
    atoms.arrays.update(
        forces=np.asarray(outputs["forces"]),
        magmoms=np.asarray(outputs["magmoms"]),
        charges=np.asarray(outputs["charges"]),
        born_charges=np.asarray(outputs["born_charges"]).reshape(n, 9),
    )
    return atoms


class TrajectoryWriter:
    """Append frames of :class:`mtsim.md.MDState` to an extxyz file (an existing one only with ``overwrite``:
    replaced, or ``append``: continued)."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, append: bool = False):
        self.path = path
        self.handle = open_output(path, overwrite, append)
        self.frames = 0
        self.last_step = None

    def write(self, state) -> None:
        """Append a frame (once per step: a repeated step is skipped)."""
        from ase.io.extxyz import write_xyz

        if state.step == self.last_step:
            return
        self.last_step = state.step

        write_xyz(self.handle, [frame(state)])
        self.handle.flush()
        self.frames += 1

    def close(self) -> None:
        self.handle.close()


@contextlib.contextmanager
def _opened(target, cls, overwrite, append):
    if target is None or not isinstance(target, (str, os.PathLike)):
        yield target  # None, or an object the caller owns
        return
    obj = cls(target, overwrite=overwrite, append=append)
    try:
        yield obj
    finally:
        obj.close()


def open_log(target, overwrite: bool = False, append: bool = False):
    """Context manager: None -> None, a path -> a :class:`CSVLog` closed on exit, an object -> itself."""
    return _opened(target, CSVLog, overwrite, append)


def open_trajectory(target, overwrite: bool = False, append: bool = False):
    """Context manager: None -> None, a path -> a :class:`TrajectoryWriter` closed on exit, an object -> itself."""
    return _opened(target, TrajectoryWriter, overwrite, append)


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A CSV log as a dict of column -> array (``step`` as int)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    data = np.array(body, dtype=float).reshape(len(body), len(header))
    out = {name: data[:, k] for k, name in enumerate(header)}
    if "step" in out:
        out["step"] = out["step"].astype(np.int64)
    return out


def read_trajectory(path: str | os.PathLike, index=":"):
    """Frames of an extxyz trajectory (``ase.io.read``) — a list of ``ase.Atoms`` for slices."""
    import ase.io

    return ase.io.read(path, index=index, format="extxyz")
