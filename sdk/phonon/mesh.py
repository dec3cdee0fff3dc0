"""Gamma-centred q meshes reduced by symmetry (spglib), and the phonon density of states."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import spglib

from mtsim.structure import Structure


@dataclass(frozen=True)
class Mesh:
    """Irreducible q points [n,3] (reduced), their ``weights`` [n] (summing to 1), and ``frequencies`` [n, 3n_atoms]
    (THz) on a ``size`` mesh."""

    size: tuple[int, int, int]
    qpoints: np.ndarray
    weights: np.ndarray
    frequencies: np.ndarray


def irreducible_qpoints(unitcell: Structure, size, symprec: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Irreducible points of the Gamma-centred ``size`` mesh (with time reversal) and their weights."""
    size = np.asarray(size, dtype=int)
    frac = unitcell.positions @ np.linalg.inv(unitcell.cell)
    mapping, grid = spglib.get_ir_reciprocal_mesh(
        size, (unitcell.cell, frac, unitcell.numbers), is_shift=[0, 0, 0], symprec=symprec
    )
    unique, counts = np.unique(mapping, return_counts=True)
    return grid[unique] / size, counts / counts.sum()


@dataclass(frozen=True)
class DensityOfStates:
    """``frequencies`` (THz) and ``dos`` (states/THz per unit cell, integrating to 3 n_atoms)."""

    frequencies: np.ndarray
    dos: np.ndarray


def density_of_states(mesh: Mesh, sigma: float | None = None, points: int = 401) -> DensityOfStates:
    """Gaussian-smeared DOS of ``mesh``; ``sigma`` (THz) defaults to 1/100 of the frequency range."""
    f = mesh.frequencies
    span = f.max() - f.min()
    sigma = sigma or max(span / 100, 1e-3)
    grid = np.linspace(f.min() - 5 * sigma, f.max() + 5 * sigma, points)
    dos = np.zeros(points)
    for k in range(0, len(f), 256):
        gauss = np.exp(-0.5 * ((grid[:, None, None] - f[None, k : k + 256]) / sigma) ** 2)
        dos += np.einsum("gqb,q->g", gauss, mesh.weights[k : k + 256]) / (np.sqrt(2 * np.pi) * sigma)
    return DensityOfStates(grid, dos)
