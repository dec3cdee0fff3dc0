"""Born effective charges and eps_inf: symmetrisation by the space group and charge neutrality (as phonopy).

Index convention (phonopy's, and the model's): ``Z[i, a, b] = dF_{i,b} / dE_a``, field index first; both indices
are Cartesian vectors, so an operation acts as ``R Z R^T``.
"""

from __future__ import annotations

import warnings

import numpy as np

from mtsim.phonon.symmetry import SpaceGroup

BROKEN_SYMMETRY_WARNING = 0.1
"""e. Symmetrisation changing any element of Z* by more than this triggers a warning (phonopy's threshold)."""


def symmetrize_born(born: np.ndarray, dielectric: np.ndarray, group: SpaceGroup) -> tuple[np.ndarray, np.ndarray]:
    """Average Z* [n,3,3] (e) and eps_inf [3,3] over the operations of ``group``, then make the charges sum to
    zero. Warns (``UserWarning``) when an element of Z* moves by more than ``BROKEN_SYMMETRY_WARNING``."""
    born = np.asarray(born, dtype=float)
    rotations = group.rotations_cart
    sym = np.zeros_like(born)
    for rotation, perm in zip(rotations, group.permutations):
        sym[perm] += rotation @ born @ rotation.T
    sym /= len(rotations)
    sym -= sym.mean(axis=0)
    eps = np.mean(rotations @ np.asarray(dielectric, dtype=float) @ rotations.transpose(0, 2, 1), axis=0)
    change = np.abs(sym - born).max()
    if change > BROKEN_SYMMETRY_WARNING:
        warnings.warn(
            f"symmetry of the Born effective charges is largely broken: symmetrisation and charge "
            f"neutrality changed an element by {change:.3f} e",
            stacklevel=2,
        )
    return sym, eps
