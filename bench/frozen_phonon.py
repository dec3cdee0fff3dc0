"""Frozen Γ phonons for any energy-and-forces function (GPAW, a model): the TO frequency of a two-atom crystal, and
the energy along the ferroelectric soft mode of cubic BaTiO3.

TO: the lattice constant a0 comes from a Birch–Murnaghan fit of E(V) at seven lattice constants (±3 % of a guess); then
atom 0 is displaced by ±u along x. Displacing one sublattice of the primitive cell is a Γ phonon (all images move
together), and with two atoms the acoustic sum rule gives ω²_TO = Φ (1/m_1 + 1/m_2), Φ = -dF_0x/du_0x (central
difference). No macroscopic field arises in the periodic cell, so this is the TO frequency.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.eos import EquationOfState

from mtsim.units import GPA, THZ_PER_SQRT_EV_A2_AMU

EnergyAndForces = Callable[[Atoms], tuple[float, np.ndarray]]
"""atoms -> (energy eV, forces [n,3] eV/Å)."""


def gamma_to(name: str, lattice: str, guess: float, evaluate: EnergyAndForces, displacement: float = 0.01) -> dict:
    """a0 (Å), bulk modulus (GPa), force constant Φ (eV/Å²) and TO (THz; negative for Φ < 0, an unstable mode, as
    phonopy writes imaginary frequencies) of ``bulk(name, lattice)``, and the energies of the E(V) fit (the 4th is
    at ``guess``); ``evaluate`` gets the cells of the fit and the displaced cells at a0."""
    scales = np.linspace(0.97, 1.03, 7)
    cells = [bulk(name, lattice, a=guess * s) for s in scales]
    energies = [evaluate(atoms)[0] for atoms in cells]
    volumes = [atoms.get_volume() for atoms in cells]
    v0, _, bulk_modulus = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    a0 = guess * (v0 / volumes[3]) ** (1 / 3)
    forces = []
    for sign in (1, -1):
        atoms = bulk(name, lattice, a=a0)
        atoms.positions[0, 0] += sign * displacement
        forces.append(evaluate(atoms)[1][0, 0])
    phi = -(forces[0] - forces[1]) / (2 * displacement)
    masses = bulk(name, lattice, a=a0).get_masses()
    omega2 = phi * (1 / masses[0] + 1 / masses[1])
    return {
        "energies_eV": [float(e) for e in energies],
        "a0_A": float(a0),
        "bulk_modulus_GPa": float(bulk_modulus) / GPA,
        "force_constant_eV_A2": float(phi),
        "to_THz": float(np.sign(omega2) * np.sqrt(abs(omega2)) * THZ_PER_SQRT_EV_A2_AMU),
    }


SOFT_MODE_AMPLITUDES = (0.0, 0.04, 0.08, 0.12, 0.16)
"""Å, Ti displacements of the BaTiO3 soft-mode scan."""


def soft_mode_scan(evaluate: EnergyAndForces, a: float = 4.0, amplitudes=SOFT_MODE_AMPLITUDES) -> dict:
    """E(u) - E(0) (meV per formula unit) of cubic BaTiO3 (lattice constant ``a`` Å, held fixed) with Ti moved by u
    along z and the three O by -u/2 (the pattern of the tetragonal P4mm phase): negative values mean the cubic
    Pm-3m structure is unstable towards P4mm at this volume."""
    cubic = Atoms(
        "BaTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=np.eye(3) * a,
        pbc=True,
    )
    energies = []
    for u in amplitudes:
        atoms = cubic.copy()
        atoms.positions[1, 2] += u
        atoms.positions[2:, 2] -= 0.5 * u
        energies.append(evaluate(atoms)[0])
    return {
        "a_A": a,
        "amplitudes_A": list(amplitudes),
        "energy_meV": [1000 * (e - energies[0]) for e in energies],
    }
