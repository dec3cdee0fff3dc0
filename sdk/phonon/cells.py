"""Diagonal supercells in phonopy's atom order, and the shortest pair vectors used by the Fourier sums.

Supercell atom ``s = u * N + l``: unit-cell atom ``u`` (the "primitive" atom; mtsim uses the given cell as the
primitive cell) translated by lattice point ``l``, the lattice points ordered with the a index fastest
(phonopy's order, so that FORCE_CONSTANTS files are interchangeable).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ase.geometry import minkowski_reduce
from scipy.sparse import csr_matrix

from mtsim.phonon.symmetry import SpaceGroup
from mtsim.structure import Structure

SUPERCELL_WIDTH = 10.0
"""Å. The default supercell's widths (distances between opposite faces) are at least this and twice the cutoff."""


class SupercellTooSmall(ValueError):
    """The supercell does not contain the model's cutoff sphere (see ``check_supercell``)."""


def widths(cell: np.ndarray) -> np.ndarray:
    """The distances (Å) between opposite faces of ``cell`` (rows = lattice vectors)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def default_supercell(cell: np.ndarray, cutoff: float = 0.0) -> tuple[int, int, int]:
    """The smallest diagonal supercell of ``cell`` whose widths are all at least ``SUPERCELL_WIDTH`` and twice
    ``cutoff`` (Å), so that it passes ``check_supercell``."""
    width = max(SUPERCELL_WIDTH, 2.0 * cutoff)
    return tuple(max(1, int(np.ceil(width / w - 1e-9))) for w in widths(cell))


def shortest_lattice_vector(cell: np.ndarray) -> float:
    """Length (Å) of the shortest nonzero lattice vector of ``cell`` (the first row of its Minkowski reduction)."""
    reduced, _ = minkowski_reduce(np.asarray(cell, dtype=float))
    return float(np.linalg.norm(reduced, axis=1).min())


def check_supercell(supercell: Supercell, cutoff: float) -> float:
    """Refuse (``SupercellTooSmall``) a supercell whose shortest lattice vector is shorter than 2 ``cutoff`` (Å);
    returns that length.

    Rule: the sphere of radius ``cutoff`` around any atom must hold at most one periodic image of each atom (it then
    lies inside the supercell's Wigner-Seitz cell). Only then is every force constant between atoms closer than the
    cutoff, where the model's direct interactions act, resolved to one image pair instead of a sum over images, and
    the force constants (hence the frequencies) are exact for interactions of that range. Message passing carries
    interactions further (layers x cutoff); those tails are folded back into the supercell in any finite supercell
    and converge with its size."""
    length = shortest_lattice_vector(supercell.structure.cell)
    if length < 2.0 * cutoff - 1e-6:
        raise SupercellTooSmall(
            f"supercell {'x'.join(map(str, supercell.size))} is too small for the model's cutoff {cutoff:g} Å: its "
            f"shortest lattice vector is {length:.3f} Å < 2 x cutoff = {2 * cutoff:g} Å, so an atom's cutoff sphere "
            "holds several images of one neighbour and the force constants mix them; use a larger supercell "
            f"(default: {'x'.join(map(str, default_supercell(supercell.unitcell.cell, cutoff)))}) or allow it "
            "explicitly (allow_small_supercell / --allow-small-supercell)"
        )
    return length


@dataclass(frozen=True)
class Supercell:
    """``unitcell`` repeated ``size`` (3 ints) times; ``structure`` is the supercell, ``points`` int [N,3] its
    lattice points in unit-cell lattice coordinates."""

    unitcell: Structure
    size: tuple[int, int, int]

    @cached_property
    def points(self) -> np.ndarray:
        na, nb, nc = self.size
        c, b, a = np.meshgrid(np.arange(nc), np.arange(nb), np.arange(na), indexing="ij")
        return np.stack([a.ravel(), b.ravel(), c.ravel()], axis=1)

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.size))

    @property
    def n_unit(self) -> int:
        return len(self.unitcell)

    @cached_property
    def structure(self) -> Structure:
        cell = self.unitcell.cell
        shifts = self.points @ cell
        positions = (self.unitcell.positions[:, None, :] + shifts[None, :, :]).reshape(-1, 3)
        return Structure(np.repeat(self.unitcell.numbers, self.n_cells), positions, np.diag(self.size) @ cell, True)

    @property
    def p2s(self) -> np.ndarray:
        """Supercell index of each unit-cell atom at lattice point 0."""
        return np.arange(self.n_unit) * self.n_cells

    def index(self, atoms: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Supercell index of unit-cell atom(s) ``atoms`` at lattice point(s) ``points`` (wrapped)."""
        na, nb, nc = self.size
        p = np.mod(points, self.size)
        return atoms * self.n_cells + p[..., 0] + na * (p[..., 1] + nb * p[..., 2])

    def compatible(self, rotation: np.ndarray) -> bool:
        """True if the rotation (fractional, int [3,3]) maps the supercell lattice onto itself."""
        size = np.array(self.size)
        return bool((np.mod(rotation * size[None, :], size[:, None]) == 0).all())

    def symmetry(self, group: SpaceGroup) -> SpaceGroup:
        """The operations of the unit cell's ``group`` that are also symmetries of the supercell."""
        return group.subgroup(np.array([self.compatible(r) for r in group.rotations]))

    def permutation(self, group: SpaceGroup, op: int, center: int) -> np.ndarray:
        """Supercell atom permutation of operation ``op`` followed by the lattice translation that brings unit-cell
        atom ``center`` (at lattice point 0) onto its image at lattice point 0."""
        rotation = group.rotations[op]
        shift = group.shifts[op] - group.shifts[op, center]
        atoms = np.repeat(np.arange(self.n_unit), self.n_cells)
        points = np.tile(self.points, (self.n_unit, 1)) @ rotation.T + shift[atoms]
        return self.index(group.permutations[op][atoms], points)

    def translation(self, point: np.ndarray) -> np.ndarray:
        """Supercell atom permutation of the lattice translation ``point``."""
        atoms = np.repeat(np.arange(self.n_unit), self.n_cells)
        return self.index(atoms, np.tile(self.points, (self.n_unit, 1)) + point)


@dataclass(frozen=True)
class ShortestVectors:
    """For each unit-cell atom u and supercell atom s, the shortest vectors from u to the periodic images of s,
    ``multiplicity`` [n_unit, n_s] of them (equally short within ``tol`` Å). Stored flat: ``vectors`` [K, 3]
    (fractional coordinates of the unit cell) and ``average`` [K, n_unit * n_s], the sparse matrix that averages
    them per pair."""

    vectors: np.ndarray
    average: csr_matrix
    multiplicity: np.ndarray

    def phases(self, qpoints: np.ndarray) -> np.ndarray:
        """exp(2 pi i q.r) averaged over the equally short images: complex [nq, n_unit, n_s]."""
        phase = np.exp(2j * np.pi * (qpoints @ self.vectors.T))
        return (self.average.T @ phase.T).T.reshape((len(qpoints),) + self.multiplicity.shape)


def shortest_vectors(supercell: Supercell, tol: float = 1e-5) -> ShortestVectors:
    """phonopy's "smallest vectors": images searched in a Minkowski-reduced supercell basis."""
    reduced, _ = minkowski_reduce(supercell.structure.cell)
    inv_reduced = np.linalg.inv(reduced)
    images = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T @ reduced
    vectors, pairs, multiplicity = [], [], []
    n_s = len(supercell.structure)
    for u, origin in enumerate(supercell.unitcell.positions):
        frac = (supercell.structure.positions - origin) @ inv_reduced
        candidates = ((frac - np.floor(frac + 0.5)) @ reduced)[:, None, :] + images[None, :, :]
        length = np.linalg.norm(candidates, axis=-1)
        shortest = length <= length.min(axis=-1, keepdims=True) + tol
        s, k = np.nonzero(shortest)
        vectors.append(candidates[s, k])
        pairs.append(u * n_s + s)
        multiplicity.append(shortest.sum(axis=1))
    vectors, pairs, multiplicity = np.concatenate(vectors), np.concatenate(pairs), np.array(multiplicity)
    average = csr_matrix(
        (1.0 / multiplicity.ravel()[pairs], (np.arange(len(pairs)), pairs)), shape=(len(pairs), multiplicity.size)
    )
    return ShortestVectors(vectors @ np.linalg.inv(supercell.unitcell.cell), average, multiplicity)
