"""The dynamical matrix D(q) from compact force constants, with or without the NAC; frequencies in THz.

phonopy's convention: D_{ua,vb}(q) = sum_m Phi(u, (v,m))_{ab} exp(2 pi i q.r) / sqrt(M_u M_v), r the shortest
vector from atom u to atom (v,m) (averaged over equally short images); q in reduced coordinates of the unit cell's
reciprocal lattice (no 2 pi). D is in eV/Å^2/amu; frequencies f = sign(lambda) sqrt(|lambda|) in THz.
"""

from __future__ import annotations

import numpy as np

from mtsim.phonon.cells import Supercell, shortest_vectors
from mtsim.phonon.nac import GonzeLee, Wang
from mtsim.units import THZ_PER_SQRT_EV_A2_AMU

CHUNK = 256
"""q points per vectorised block."""


class DynamicalMatrix:
    """D(q) of compact force constants ``force_constants`` [n_unit, n_s, 3, 3] (eV/Å^2) on ``supercell``, masses
    [n_unit] (amu), and an optional NAC (``GonzeLee`` or ``Wang``)."""

    def __init__(
        self, supercell: Supercell, force_constants: np.ndarray, masses: np.ndarray, nac: GonzeLee | Wang | None = None
    ):
        self.supercell = supercell
        self.masses = np.asarray(masses, dtype=float)
        self.nac = nac
        self.vectors = shortest_vectors(supercell)
        n, cells = supercell.n_unit, supercell.n_cells
        fc = np.asarray(force_constants, dtype=float)
        if isinstance(nac, GonzeLee):
            fc = fc - dipole_force_constants(nac, supercell)
        self.force_constants = fc.reshape(n, n, cells, 9)

    def __call__(self, qpoints: np.ndarray, q_direction: np.ndarray | None = None) -> np.ndarray:
        """Hermitian D at ``qpoints`` [nq,3] (or one [3]), complex [nq, 3n, 3n]. ``q_direction`` (reduced) is the
        direction of approach used for the NAC at Gamma points."""
        qpoints = np.atleast_2d(np.asarray(qpoints, dtype=float))
        return np.concatenate([self._block(qpoints[k : k + CHUNK], q_direction) for k in range(0, len(qpoints), CHUNK)])

    def _block(self, qpoints: np.ndarray, q_direction) -> np.ndarray:
        n, cells = self.supercell.n_unit, self.supercell.n_cells
        phases = self.vectors.phases(qpoints).reshape(len(qpoints), n, n, cells)
        by_pair = phases.transpose(1, 2, 0, 3)  # [u, v, q, m] @ [u, v, m, ab]: real matmuls are much faster
        d = np.matmul(by_pair.real, self.force_constants) + 1j * np.matmul(by_pair.imag, self.force_constants)
        d = d.reshape(n, n, len(qpoints), 3, 3).transpose(2, 0, 3, 1, 4)
        if isinstance(self.nac, Wang):
            d += self.nac(qpoints, q_direction) * (phases.sum(axis=-1) / cells)[:, :, None, :, None]
        elif isinstance(self.nac, GonzeLee):
            d += self.nac(qpoints, q_direction)
        d /= np.sqrt(np.outer(self.masses, self.masses))[None, :, None, :, None]
        d = d.reshape(len(qpoints), 3 * n, 3 * n)
        return 0.5 * (d + d.conj().transpose(0, 2, 1))

    def frequencies(self, qpoints: np.ndarray, q_direction: np.ndarray | None = None, eigenvectors: bool = False):
        """Frequencies [nq, 3n] in THz, ascending (negative = imaginary); with ``eigenvectors`` also the
        eigenvectors [nq, 3n, 3n] (columns, as ``numpy.linalg.eigh``)."""
        d = self(qpoints, q_direction)
        if eigenvectors:
            values, vectors = np.linalg.eigh(d)
            return to_thz(values), vectors
        return to_thz(np.linalg.eigvalsh(d))


def to_thz(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of D (eV/Å^2/amu) -> frequencies in THz, negative for imaginary modes."""
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * THZ_PER_SQRT_EV_A2_AMU


def commensurate_points(supercell: Supercell) -> np.ndarray:
    """The q points (reduced) whose phases are periodic over the supercell, [N, 3]."""
    return supercell.points / np.array(supercell.size)


def dipole_force_constants(nac: GonzeLee, supercell: Supercell) -> np.ndarray:
    """The Gonze-Lee dipole-dipole term (q_direction None) at the commensurate points, Fourier-transformed back
    to compact real-space force constants [n_unit, n_s, 3, 3] (eV/Å^2)."""
    q = commensurate_points(supercell)
    frac = supercell.unitcell.positions @ np.linalg.inv(supercell.unitcell.cell)
    r = frac[None, :, None, :] - frac[:, None, None, :] + supercell.points[None, None, :, :]
    phases = np.exp(-2j * np.pi * np.einsum("qa,uvma->quvm", q, r))
    dd = nac(q)
    fc = np.einsum("quavb,quvm->uvmab", dd, phases, optimize=True).real / len(q)
    n = supercell.n_unit
    return fc.reshape(n, n * supercell.n_cells, 3, 3)
