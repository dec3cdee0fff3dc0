"""The non-analytical term correction (NAC): the long-range dipole-dipole force constants of Z* and eps_inf.

Wave vectors here are Cartesian without the 2 pi (1/Å), ``q_cart = inv(cell) @ q_reduced``. Both classes return
the correction C[q, i, a, j, b] in eV/Å^2 (not yet divided by the masses), the NAC prefactor being
4 pi e^2 / (4 pi eps0 Omega) = 4 pi ``COULOMB_EV_A`` / Omega.

- ``GonzeLee`` (Gonze & Lee, PRB 55, 10355 (1997)): the Ewald reciprocal-space sum over G with Gaussian damping
  exp(-K.eps.K / (4 Lambda^2)), K = q + G, minus its q -> 0 on-site limit; it is subtracted from the force
  constants at the commensurate points and added back at every q. The real-space and limiting terms are left out,
  as phonopy does by default; its conventions (300 G points, damping 1e-10 at the G cutoff) are kept so that the
  frequencies agree with phonopy's.
- ``Wang`` (Wang et al., J. Phys.: Condens. Matter 22, 202201 (2010)): the q -> 0 term spread evenly over the
  supercell.

At Gamma the term depends on the direction of approach, ``q_direction`` (reduced coordinates); without it the
term is left out there.

Whether to apply it (``choose_nac``): the correction is the macroscopic field of polar optical modes; in a metal
free carriers screen that field (eps -> infinity), Z* and eps_inf are not defined, and the LO-TO splitting is zero.
With ``nac="auto"`` it is applied unless the structure is metallic: marked so by the user, made of metals only (no
nonmetal or metalloid of ``NONMETALS`` to bind electrons: an alloy or intermetallic such as NiAl), or with a model
eps_inf (mean of the diagonal) above ``EPS_INF_METALLIC``. Metals with nonmetal atoms (TiN, metallic carbides and
borides) are not recognised: mark them with ``metallic=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from mtsim.structure import Structure
from mtsim.units import COULOMB_EV_A

GAMMA_TOLERANCE = 1e-5
"""1/Å. |q| (or |q + G|) below this counts as Gamma."""
NONMETALS = frozenset({1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32, 33, 34, 35, 36, 51, 52, 53, 54, 85, 86})
"""Atomic numbers of the nonmetals, noble gases and metalloids (H, He, B, C, N, O, F, Ne, Si, P, S, Cl, Ar, Ge, As,
Se, Br, Kr, Sb, Te, I, Xe, At, Rn); every other element counts as a metal."""
EPS_INF_METALLIC = 50.0
"""Mean diagonal eps_inf above which a structure counts as metallic (the screening of a metal diverges)."""


@dataclass(frozen=True)
class NACChoice:
    """Whether the NAC is applied (``applied``) and why (``reason``, one sentence)."""

    applied: bool
    reason: str


def choose_nac(numbers, dielectric, nac: bool | str = "auto", metallic: bool = False) -> NACChoice:
    """The NAC decision for atomic numbers ``numbers`` with eps_inf ``dielectric`` [3,3]: ``nac`` True/False as
    asked, or ``"auto"`` by the rule of the module docstring; ``metallic``: the user marks the structure as a
    metal (contradicts ``nac=True``)."""
    if nac is True and metallic:
        raise ValueError("nac=True contradicts metallic=True (a metal has no LO-TO splitting)")
    if nac is True:
        return NACChoice(True, "asked for (nac on)")
    if nac is False:
        return NACChoice(False, "switched off (nac off)")
    if nac != "auto":
        raise ValueError(f"nac must be True, False or 'auto', got {nac!r}")
    if metallic:
        return NACChoice(False, "metallic (marked by the user): free carriers screen the macroscopic field")
    present = sorted({int(z) for z in np.asarray(numbers)})
    names = "".join(chemical_symbols[z] for z in present)
    if not NONMETALS.intersection(present):
        return NACChoice(
            False,
            f"metallic: {names} holds only metals (no nonmetal or metalloid), so free carriers "
            "screen the macroscopic field",
        )
    eps = float(np.trace(np.asarray(dielectric, dtype=float))) / 3
    if eps > EPS_INF_METALLIC:
        return NACChoice(False, f"metallic: the model's eps_inf {eps:.3g} exceeds {EPS_INF_METALLIC:g}")
    anions = "".join(chemical_symbols[z] for z in present if z in NONMETALS)
    return NACChoice(
        True,
        f"insulator: {names} holds nonmetal(s) {anions} and the model's eps_inf {eps:.3g} is "
        f"at most {EPS_INF_METALLIC:g}",
    )


class GonzeLee:
    """Gonze-Lee dipole-dipole sum for ``unitcell`` with Z* ``born`` [n,3,3] (e) and eps_inf ``dielectric``."""

    def __init__(
        self, unitcell: Structure, born: np.ndarray, dielectric: np.ndarray, g_points: int = 300, damping: float = 1e-10
    ):
        self.born = np.asarray(born, dtype=float)
        self.dielectric = np.asarray(dielectric, dtype=float)
        self.reciprocal = np.linalg.inv(unitcell.cell)
        self.factor = 4 * np.pi * COULOMB_EV_A / unitcell.volume
        self.g_cutoff = (3 * g_points / (4 * np.pi * unitcell.volume)) ** (1 / 3)
        self.g_vectors = reciprocal_sphere(self.reciprocal, self.g_cutoff)
        self.four_lambda2 = self.g_cutoff**2 * np.trace(self.dielectric) / 3 / -np.log(damping)
        tau = unitcell.positions
        self.g_phases = np.exp(2j * np.pi * np.einsum("ga,ija->gij", self.g_vectors, tau[:, None] - tau[None, :]))
        at_zero = self._ewald_sum(np.zeros((1, 3)), None)[0].sum(axis=2)
        self.on_site = 0.5 * (at_zero + at_zero.conj().transpose(0, 2, 1))

    def _ewald_sum(self, q_cart: np.ndarray, direction: np.ndarray | None) -> np.ndarray:
        """sum_G Z_i^T K(q+G) Z_j exp(2 pi i G.(tau_i - tau_j)), complex [nq, n, 3, n, 3] (no prefactor)."""
        k = q_cart[:, None, :] + self.g_vectors[None, :, :]
        kek = np.einsum("qga,ab,qgb->qg", k, self.dielectric, k)
        zero = np.linalg.norm(k, axis=-1) < GAMMA_TOLERANCE
        safe = np.where(zero, 1.0, kek)
        kernel = np.einsum("qga,qgb->qgab", k, k) * (np.exp(-safe / self.four_lambda2) / safe)[..., None, None]
        kernel[zero] = (
            0.0 if direction is None else np.outer(direction, direction) / (direction @ self.dielectric @ direction)
        )
        n = len(self.born)
        kernel = kernel.reshape(len(q_cart), -1, 9)
        phases = self.g_phases.reshape(-1, n * n).T  # [ij, g] @ [q, g, cd] as real matmuls (much faster than einsum)
        summed = np.matmul(phases.real, kernel) + 1j * np.matmul(phases.imag, kernel)
        summed = summed.reshape(len(q_cart), n, n, 3, 3)
        born_t = self.born.transpose(0, 2, 1)
        return (born_t[None, :, None] @ summed @ self.born[None, None, :]).transpose(0, 1, 3, 2, 4)

    def __call__(self, qpoints: np.ndarray, q_direction: np.ndarray | None = None) -> np.ndarray:
        """The dipole-dipole force constants at ``qpoints`` [nq,3] (reduced), complex [nq, n, 3, n, 3] eV/Å^2."""
        direction = None if q_direction is None else self.reciprocal @ np.asarray(q_direction, dtype=float)
        dd = self._ewald_sum(np.asarray(qpoints, dtype=float) @ self.reciprocal.T, direction)
        n = len(self.born)
        dd[:, np.arange(n), :, np.arange(n), :] -= self.on_site[:, None]
        return self.factor * dd


class Wang:
    """Wang's correction for ``unitcell`` with Z* ``born`` [n,3,3] (e) and eps_inf ``dielectric``."""

    def __init__(self, unitcell: Structure, born: np.ndarray, dielectric: np.ndarray):
        self.born = np.asarray(born, dtype=float)
        self.dielectric = np.asarray(dielectric, dtype=float)
        self.reciprocal = np.linalg.inv(unitcell.cell)
        self.factor = 4 * np.pi * COULOMB_EV_A / unitcell.volume

    def __call__(self, qpoints: np.ndarray, q_direction: np.ndarray | None = None) -> np.ndarray:
        """factor (q.Z_i)_a (q.Z_j)_b / (q.eps.q) at ``qpoints`` [nq,3] (reduced), real [nq, n, 3, n, 3] eV/Å^2."""
        q = np.asarray(qpoints, dtype=float) @ self.reciprocal.T
        at_gamma = np.linalg.norm(q, axis=1) < GAMMA_TOLERANCE
        if q_direction is not None:
            q[at_gamma] = self.reciprocal @ np.asarray(q_direction, dtype=float)
        qz = np.einsum("qc,ica->qia", q, self.born)
        qeq = np.einsum("qa,ab,qb->q", q, self.dielectric, q)
        valid = ~at_gamma | (q_direction is not None)
        scale = np.where(valid, self.factor / np.where(valid, qeq, 1.0), 0.0)
        return np.einsum("q,qia,qjb->qiajb", scale, qz, qz)


def reciprocal_sphere(reciprocal: np.ndarray, cutoff: float) -> np.ndarray:
    """Reciprocal lattice vectors G = reciprocal @ n (Cartesian, no 2 pi) with |G| < cutoff, [ng, 3]."""
    bound = np.ceil(cutoff * np.linalg.norm(np.linalg.inv(reciprocal), axis=1)).astype(int)
    n = np.stack(np.meshgrid(*[np.arange(-b, b + 1) for b in bound], indexing="ij"), axis=-1).reshape(-1, 3)
    g = n @ reciprocal.T
    return g[np.linalg.norm(g, axis=1) < cutoff]
