"""Space-group operations of a unit cell (spglib) and the atom permutations they induce.

An operation maps fractional coordinates x -> R x + t (``R`` integer, ``t`` fractional); on Cartesian vectors it
acts as ``R_cart = A^T R A^-T`` with ``A`` the cell (rows = lattice vectors, Å).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import spglib

from mtsim.structure import Structure


@dataclass(frozen=True)
class SpaceGroup:
    """The operations of one unit cell.

    ``rotations`` int [n_ops,3,3] and ``translations`` [n_ops,3] (fractional); ``rotations_cart`` [n_ops,3,3];
    ``permutations`` int [n_ops,n_atoms]: operation k sends atom u onto atom ``permutations[k, u]``, displaced by the
    lattice vector ``shifts[k, u]`` (int [n_ops,n_atoms,3]): R x_u + t = x_perm(u) + shift.
    ``equivalent_atoms`` [n_atoms]: spglib's representative of each atom's orbit.
    """

    symbol: str
    number: int
    rotations: np.ndarray
    translations: np.ndarray
    rotations_cart: np.ndarray
    permutations: np.ndarray
    shifts: np.ndarray
    equivalent_atoms: np.ndarray

    @property
    def independent_atoms(self) -> np.ndarray:
        """Symmetry-independent atoms, ascending (phonopy lists Z* of these in BORN)."""
        return np.unique(self.equivalent_atoms)

    def subgroup(self, keep: np.ndarray) -> SpaceGroup:
        """The operations selected by the bool mask ``keep`` (a subgroup), with the orbits recomputed."""
        permutations = self.permutations[keep]
        return SpaceGroup(
            self.symbol,
            self.number,
            self.rotations[keep],
            self.translations[keep],
            self.rotations_cart[keep],
            permutations,
            self.shifts[keep],
            permutations.min(axis=0),
        )

    def site_symmetry(self, atom: int) -> np.ndarray:
        """Indices of the operations that leave ``atom`` on its own site (up to a lattice vector)."""
        return np.flatnonzero(self.permutations[:, atom] == atom)


def space_group(structure: Structure, symprec: float = 1e-5) -> SpaceGroup:
    """spglib's space group of ``structure`` with the atom permutation of every operation.

    ``symprec`` (Å) is spglib's tolerance and the one used to match atoms.
    """
    cell = structure.cell
    frac = structure.positions @ np.linalg.inv(cell)
    data = spglib.get_symmetry_dataset((cell, frac, structure.numbers), symprec=symprec)
    if data is None:
        raise ValueError(f"spglib could not find the symmetry of this structure: {spglib.get_error_message()}")
    rotations = np.asarray(data.rotations, dtype=np.int64)
    translations = np.asarray(data.translations, dtype=float)
    images = np.einsum("kab,ub->kua", rotations, frac) + translations[:, None, :]
    diff = images[:, :, None, :] - frac[None, None, :, :]
    shifts = np.rint(diff)
    distance = np.linalg.norm((diff - shifts) @ cell, axis=-1)
    same = (distance < symprec) & (structure.numbers[None, None, :] == structure.numbers[None, :, None])
    if not (same.sum(axis=2) == 1).all():
        raise ValueError("symmetry operations do not map the atoms onto each other one to one; try another symprec")
    permutations = same.argmax(axis=2)
    shifts = np.take_along_axis(shifts, permutations[:, :, None, None], axis=2)[:, :, 0].astype(np.int64)
    inv_t = np.linalg.inv(cell.T)
    return SpaceGroup(
        symbol=data.international,
        number=int(data.number),
        rotations=rotations,
        translations=translations,
        rotations_cart=np.einsum("ij,kjl,lm->kim", cell.T, rotations, inv_t),
        permutations=permutations,
        shifts=shifts,
        equivalent_atoms=np.asarray(data.equivalent_atoms, dtype=np.int64),
    )
