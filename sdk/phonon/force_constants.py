"""Force constants from displacement-force data: site-symmetry least squares, symmetrisation, and layouts.

Layouts (eV/Å^2): *compact* ``[n_unit, n_s, 3, 3]`` holds the rows of the unit-cell atoms at lattice point 0
(``Phi[u, s, a, b] = d^2E / du_{u,a} du_{s,b}``); *full* ``[n_s, n_s, 3, 3]`` is phonopy's FORCE_CONSTANTS layout.
"""

from __future__ import annotations

import numpy as np

from mtsim.phonon.cells import Supercell
from mtsim.phonon.displacements import Displacement
from mtsim.phonon.symmetry import SpaceGroup


def solve_force_constants(
    group: SpaceGroup, supercell: Supercell, displacements: list[Displacement], forces: np.ndarray
) -> np.ndarray:
    """Compact force constants from ``forces`` [n_disp, n_s, 3] (eV/Å) of the displaced supercells.

    ``group`` is the supercell's symmetry (``Supercell.symmetry``). Each displacement is replicated by the site
    symmetry of its atom, the rows of the independent atoms solved by least squares (F = -u Phi), and the rows of
    the other atoms obtained by the operations that map them onto an independent one.
    """
    n_s = len(supercell.structure)
    forces = np.asarray(forces, dtype=float)
    fc = np.zeros((supercell.n_unit, n_s, 3, 3))
    atoms = np.array([d.atom for d in displacements])
    vectors = np.array([d.vector for d in displacements])
    for atom in group.independent_atoms:
        mine = np.flatnonzero(atoms == atom)
        u_rows, f_rows = [], []
        for op in group.site_symmetry(atom):
            rotation = group.rotations_cart[op]
            perm = supercell.permutation(group, op, atom)
            rotated = np.empty_like(forces[mine])
            rotated[:, perm] = forces[mine] @ rotation.T
            u_rows.append(vectors[mine] @ rotation.T)
            f_rows.append(rotated)
        u_rows, f_rows = np.concatenate(u_rows), np.concatenate(f_rows)
        fc[atom] = -(np.linalg.pinv(u_rows) @ f_rows.reshape(len(f_rows), -1)).reshape(3, n_s, 3).transpose(1, 0, 2)
    for atom in range(supercell.n_unit):
        source = group.equivalent_atoms[atom]
        if source == atom:
            continue
        op = np.flatnonzero(group.permutations[:, source] == atom)[0]
        rotation = group.rotations_cart[op]
        fc[atom, supercell.permutation(group, op, source)] = rotation @ fc[source] @ rotation.T
    return fc


def symmetrize(fc: np.ndarray, supercell: Supercell, iterations: int = 10) -> np.ndarray:
    """Alternately impose index-permutation symmetry Phi(i,j) = Phi(j,i)^T and the translational sum rule
    sum_j Phi(i,j) = 0 (drift subtracted evenly), ending on the sum rule; compact layout in and out."""
    n = supercell.n_cells
    s = np.arange(fc.shape[1])
    partner_row = s // n
    partner_col = supercell.index(np.arange(supercell.n_unit)[:, None], -supercell.points[s % n][None, :])
    fc = fc.copy()
    for _ in range(iterations):
        fc = 0.5 * (fc + fc[partner_row[None, :], partner_col].transpose(0, 1, 3, 2))
        fc -= fc.sum(axis=1, keepdims=True) / fc.shape[1]
    return fc


def full_force_constants(fc: np.ndarray, supercell: Supercell) -> np.ndarray:
    """Compact -> full layout by lattice translations: Phi(u + l, s + l) = Phi(u, s)."""
    n_s = fc.shape[1]
    full = np.empty((n_s, n_s, 3, 3))
    rows = supercell.p2s
    for image, point in enumerate(supercell.points):
        full[rows[:, None] + image, supercell.translation(point)[None, :]] = fc
    return full
