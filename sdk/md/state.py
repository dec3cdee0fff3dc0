"""The MD state (:class:`MDState`) and what creates or adjusts one: Maxwell–Boltzmann momenta, zero total
momentum, folding positions into the cell.

Units: time in fs, temperature in K, pressure in GPa, electric field in V/Å (everything else ASE's: Å, eV, amu,
e). Momenta are in amu·Å/t with t the ASE time unit (``mtsim.units.FS`` per fs), as in ASE. Positions are kept
unwrapped (atoms are never folded back into the cell), which keeps the polarization path integral and
mean-square displacements continuous; the neighbour list folds them itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np

from mtsim.model import Prediction
from mtsim.structure import Structure, as_structure
from mtsim.units import E_PER_A2_IN_UC_PER_CM2, GPA, KB


@dataclass
class MDState:
    """Everything that evolves: unwrapped positions (Å), momenta (amu·Å/t), masses (amu), cell (Å, rows are the
    lattice vectors), the last model evaluation (``energy`` eV, total ``forces`` eV/Å including the field force,
    ``stress`` eV/Å^3 with ASE's sign, ``outputs``: every model output for this structure), the applied ``field``
    (V/Å), the path-integrated ``dipole`` Σ Z* du (e·Å) and ``field_work`` = ∫ D·dE (eV)."""

    numbers: np.ndarray
    positions: np.ndarray
    momenta: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    time: float = 0.0
    step: int = 0
    energy: float = math.nan
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    outputs: dict = dataclass_field(default_factory=dict)
    field: np.ndarray = dataclass_field(default_factory=lambda: np.zeros(3))
    dipole: np.ndarray = dataclass_field(default_factory=lambda: np.zeros(3))
    field_work: float = 0.0

    @classmethod
    def from_structure(cls, structure, masses=None, momenta=None) -> MDState:
        """A state at rest (or with the given momenta); ``masses`` default to ASE's atomic masses."""
        s = as_structure(structure)
        if masses is None:
            from ase.data import atomic_masses

            masses = atomic_masses[s.numbers]
        n = len(s)
        momenta = np.zeros((n, 3)) if momenta is None else np.array(momenta, dtype=float).reshape(n, 3)
        return cls(
            numbers=s.numbers.copy(),
            positions=s.positions.copy(),
            momenta=momenta,
            masses=np.array(masses, dtype=float).reshape(n),
            cell=s.cell.copy(),
            pbc=s.pbc.copy(),
        )

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def velocities(self) -> np.ndarray:
        """Å per ASE time unit."""
        return self.momenta / self.masses[:, None]

    @property
    def dof(self) -> int:
        """Degrees of freedom: 3N − 3 (the total momentum is kept at zero); 3 for a single atom."""
        return 3 * self.n_atoms - 3 if self.n_atoms > 1 else 3

    @property
    def kinetic_energy(self) -> float:
        return float(0.5 * np.sum(self.momenta**2 / self.masses[:, None]))

    @property
    def temperature(self) -> float:
        """K, from the kinetic energy and :attr:`dof`."""
        return 2 * self.kinetic_energy / (self.dof * KB)

    @property
    def volume(self) -> float:
        """Å^3; 0 unless all three directions are periodic."""
        return float(abs(np.linalg.det(self.cell))) if self.pbc.all() else 0.0

    @property
    def pressure_tensor(self) -> np.ndarray:
        """eV/Å^3: −stress + Σ p⊗p/m / V (virial and kinetic parts); NaN without a 3D cell."""
        if self.volume == 0:
            return np.full((3, 3), np.nan)
        kinetic = np.einsum("ia,ib->ab", self.momenta, self.momenta / self.masses[:, None]) / self.volume
        return -self.stress + kinetic

    @property
    def pressure(self) -> float:
        """Instantaneous pressure in GPa, kinetic part included; NaN without a 3D cell."""
        return float(np.trace(self.pressure_tensor) / 3 / GPA)

    @property
    def polarization(self) -> np.ndarray:
        """μC/cm²: the dipole Σ_i ∫ Z*_i du_i accumulated since the start, over the volume (NaN without a cell)."""
        if self.volume == 0:
            return np.full(3, np.nan)
        return self.dipole / self.volume * E_PER_A2_IN_UC_PER_CM2

    @property
    def electric_enthalpy(self) -> float:
        """eV: −E·D + ∫ D·dE, the field's part of every conserved quantity (0 without a field)."""
        return float(-self.field @ self.dipole + self.field_work)

    def to_structure(self, wrap: bool = False) -> Structure:
        positions = wrap_positions(self.positions, self.cell, self.pbc)[0] if wrap else self.positions
        return Structure(self.numbers, positions, self.cell, self.pbc)

    @property
    def heads(self) -> dict:
        """Alias of :attr:`outputs`."""
        return self.outputs

    def prediction(self) -> Prediction:
        """The model outputs at the current positions as an ``mtsim.Prediction``."""
        return Prediction.from_outputs(self.outputs)


def maxwell_boltzmann(masses, temperature: float, seed=None, exact: bool = False) -> np.ndarray:
    """Momenta drawn from the Maxwell–Boltzmann distribution at ``temperature`` K with zero total momentum.

    ``seed``: int or ``numpy.random.Generator``. ``exact``: rescale so the temperature (3N − 3 degrees of freedom)
    is exactly ``temperature``.
    """
    masses = np.asarray(masses, dtype=float)
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(len(masses), 3)) * np.sqrt(masses * KB * temperature)[:, None]
    p -= masses[:, None] * (p.sum(axis=0) / masses.sum())
    if exact and len(masses) > 1 and temperature > 0:
        current = np.sum(p**2 / masses[:, None]) / ((3 * len(masses) - 3) * KB)
        p *= np.sqrt(temperature / current)
    return p


def zero_momentum(state: MDState) -> None:
    """Remove the centre-of-mass momentum."""
    state.momenta -= state.masses[:, None] * (state.momenta.sum(axis=0) / state.masses.sum())


def wrap_positions(positions, cell, pbc):
    """Fold positions into the cell along periodic directions: returns (wrapped, n) with
    ``wrapped = positions - n @ cell`` and ``n`` integer [n,3] (0 along non-periodic directions)."""
    n = np.zeros(positions.shape, dtype=np.int64)
    if pbc.any():
        inverse = np.linalg.inv(cell) if abs(np.linalg.det(cell)) > 1e-12 else np.linalg.pinv(cell)
        fractional = positions @ inverse
        n[:, pbc] = np.floor(fractional[:, pbc]).astype(np.int64)
    return positions - n @ cell, n
