"""Atomic structures as plain numpy, validated once at the edge.

Units: positions and cell in Å; the rows of ``cell`` are the lattice vectors (ASE convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ATOMIC_NUMBER = 94
"""Largest atomic number the model embeds (Pu)."""


@dataclass(frozen=True)
class Structure:
    """One structure: ``numbers`` int64 [n], ``positions`` float64 [n,3] Å, ``cell`` float64 [3,3] Å, ``pbc`` bool [3].

    The constructor validates and raises ``ValueError`` naming the problem (unknown element, NaN, singular
    periodic cell, wrong shapes). Non-periodic directions may have a zero lattice vector (molecules).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    def __init__(self, numbers, positions, cell=None, pbc=False):
        numbers = _as_int_array(numbers, "numbers")
        positions = _as_float_array(positions, "positions")
        cell = np.zeros((3, 3)) if cell is None else _as_float_array(cell, "cell")
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy() if np.ndim(pbc) == 0 else np.asarray(pbc)
        if numbers.ndim != 1 or numbers.size == 0:
            raise ValueError(f"numbers must be a non-empty 1-D array, got shape {numbers.shape}")
        n = numbers.size
        if positions.shape != (n, 3):
            raise ValueError(f"positions must have shape ({n}, 3) for {n} atoms, got {positions.shape}")
        if cell.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
        if pbc.shape != (3,) or pbc.dtype != bool:
            raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
        bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
        if bad.any():
            raise ValueError(
                f"unknown element: atomic number(s) {sorted(set(numbers[bad].tolist()))} at atom index(es) "
                f"{np.flatnonzero(bad)[:10].tolist()}; supported are 1..{MAX_ATOMIC_NUMBER}"
            )
        if not np.isfinite(positions).all():
            rows = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise ValueError(f"positions contain NaN or inf at atom index(es) {rows[:10].tolist()}")
        if not np.isfinite(cell).all():
            raise ValueError("cell contains NaN or inf")
        check_periodic_cell(cell, pbc)
        for name, value in (("numbers", numbers), ("positions", positions), ("cell", cell), ("pbc", pbc)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return self.numbers.size

    @property
    def volume(self) -> float:
        """|det(cell)| in Å^3 (0 for molecules)."""
        return float(abs(np.linalg.det(self.cell)))

    @classmethod
    def from_atoms(cls, atoms) -> Structure:
        """From an ``ase.Atoms``."""
        return cls(atoms.numbers, atoms.positions, np.asarray(atoms.cell), atoms.pbc)

    def to_atoms(self):
        """To an ``ase.Atoms``."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)


def as_structure(obj) -> Structure:
    """Accept a ``Structure`` or an ``ase.Atoms`` (anything with numbers, positions, cell, pbc)."""
    if isinstance(obj, Structure):
        return obj
    if all(hasattr(obj, name) for name in ("numbers", "positions", "cell", "pbc")):
        return Structure.from_atoms(obj)
    raise TypeError(f"expected an ase.Atoms or mtsim.Structure, got {type(obj).__name__}")


def check_periodic_cell(cell: np.ndarray, pbc: np.ndarray, tol: float = 1e-6) -> None:
    """Raise ``ValueError`` if the lattice vectors of the periodic directions are zero or linearly dependent."""
    periodic = cell[pbc]
    if periodic.shape[0] == 0:
        return
    singular = np.linalg.svd(periodic, compute_uv=False)
    scale = max(1.0, float(np.abs(periodic).max()))
    if singular.min() < tol * scale:
        raise ValueError(
            f"singular cell: the lattice vectors of the periodic directions {np.flatnonzero(pbc).tolist()} "
            f"are zero or linearly dependent (cell = {cell.tolist()})"
        )


def _as_int_array(value, name: str) -> np.ndarray:
    array = np.array(value)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must be integers, got non-integral values")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _as_float_array(value, name: str) -> np.ndarray:
    array = np.array(value)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


class StructureFileError(ValueError):
    """A structure file that cannot be read: ``path``, ``frame`` (0-based index of the first frame that failed),
    ``line`` (1-based line where that frame starts, for xyz/extxyz files; else None) and ``reason``."""

    def __init__(self, path, frame: int, line: int | None, reason: str):
        self.path, self.frame, self.line, self.reason = str(path), frame, line, reason
        where = f"frame {frame}" + (f" (starting at line {line})" if line is not None else "")
        super().__init__(f"cannot read {path}: {where}: {reason}")


XYZ_SUFFIXES = (".xyz", ".extxyz")


def iread_frames(path):
    """Each frame of ``path`` (any format ASE reads) as ``ase.Atoms``, in order; a frame that cannot be read raises
    ``StructureFileError`` naming it, after the frames before it were yielded."""
    import ase.io

    frame, line = 0, 1
    counts_lines = str(path).lower().endswith(XYZ_SUFFIXES)
    try:
        for atoms in ase.io.iread(path, index=":"):
            yield atoms
            frame += 1
            line += len(atoms) + 2
    except Exception as err:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise StructureFileError(path, frame, line if counts_lines else None, f"{type(err).__name__}: {err}") from None
