"""Finite displacements reduced by symmetry (phonopy's scheme).

For each symmetry-independent atom, one to three directions (supercell lattice vectors and diagonals, searched in
phonopy's order) whose images under the atom's site symmetry span space; a direction is also displaced in the minus
sense unless a site-symmetry operation already maps it onto its negative (``plusminus="auto"``). The choices equal
phonopy's, so the force constants agree with phonopy's even where the forces are anharmonic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtsim.phonon.cells import Supercell
from mtsim.phonon.symmetry import SpaceGroup
from mtsim.structure import Structure

CANDIDATES = np.array(
    [
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 1, 0],
        [1, 0, 1],
        [0, 1, 1],
        [1, -1, 0],
        [1, 0, -1],
        [0, 1, -1],
        [1, 1, 1],
        [1, 1, -1],
        [1, -1, 1],
        [-1, 1, 1],
    ]
)
"""Trial directions in supercell lattice coordinates, in phonopy's order of preference."""


@dataclass(frozen=True)
class Displacement:
    """Unit-cell atom ``atom`` (displaced at lattice point 0 of the supercell) moved by ``vector`` (Cartesian, Å)."""

    atom: int
    vector: np.ndarray


def displacement_directions(rotations: np.ndarray) -> list[np.ndarray]:
    """phonopy's choice of directions (supercell lattice coordinates) for a site symmetry ``rotations`` (integer,
    supercell lattice coordinates): one whose images span space; else one, an image of it and a second trial
    direction spanning space; else the three axes."""
    for d in CANDIDATES:
        if np.linalg.matrix_rank(rotations @ d) == 3:
            return [d]
    for d in CANDIDATES:
        for image in rotations @ d:
            for second in CANDIDATES:
                if round(np.linalg.det(np.array([d, image, second]))) != 0:
                    return [d, second]
    return list(CANDIDATES[:3])


def generate_displacements(
    group: SpaceGroup, supercell: Supercell, amplitude: float = 0.01, plusminus: bool | str = "auto"
) -> list[Displacement]:
    """Displacements of ``amplitude`` Å for every independent atom of ``group`` (the symmetry of the supercell,
    ``Supercell.symmetry``). ``plusminus``: True (always ±), False (+ only) or
    ``"auto"`` (± only where the site symmetry does not relate +d to -d)."""
    if plusminus not in (True, False, "auto"):
        raise ValueError(f"plusminus must be True, False or 'auto', got {plusminus!r}")
    size = np.array(supercell.size)
    result = []
    for atom in group.independent_atoms:
        rotations = np.rint(
            group.rotations[group.site_symmetry(atom)] * size[None, None, :] / size[None, :, None]
        ).astype(int)
        for direction in displacement_directions(rotations):
            vector = direction @ supercell.structure.cell
            vector *= amplitude / np.linalg.norm(vector)
            result.append(Displacement(int(atom), vector))
            equivalent = (rotations @ direction == -direction).all(axis=1).any()
            if plusminus is True or (plusminus == "auto" and not equivalent):
                result.append(Displacement(int(atom), -vector))
    return result


def displaced_structures(supercell: Supercell, displacements: list[Displacement]) -> list[Structure]:
    """One supercell ``Structure`` per displacement."""
    base = supercell.structure
    out = []
    for d in displacements:
        positions = base.positions.copy()
        positions[supercell.p2s[d.atom]] += d.vector
        out.append(Structure(base.numbers, positions, base.cell, base.pbc))
    return out
