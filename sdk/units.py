"""Every physical constant and unit conversion of mtsim, once (values from ``ase.units``, CODATA 2014).

Internal units are ASE's: Å, eV, e, amu, and time in Å·sqrt(amu/eV) (``FS`` converts femtoseconds to it).
Fields in the Python API are in V/Å (an energy eV per charge e per Å); the CLI takes MV/cm.
"""

from ase import units as _ase

FS = _ase.fs
"""One femtosecond in ASE time units."""
KB = _ase.kB
"""Boltzmann constant, eV/K."""
GPA = _ase.GPa
"""One GPa in eV/Å^3 (stress conversions: stress_GPa = stress_eV_A3 / GPA)."""
BOHR = _ase.Bohr
"""One bohr in Å."""
HARTREE = _ase.Hartree
"""One hartree in eV."""
AMU_KG = _ase._amu
EV_J = _ase._e
ANGSTROM_M = 1e-10
HBAR_EV_S = _ase._hbar / _ase._e
"""Reduced Planck constant, eV·s."""

MV_PER_CM = 1e6 / 1e8
"""One MV/cm in V/Å (= 0.01)."""
E_PER_A2_IN_UC_PER_CM2 = _ase._e * 1e6 / 1e-16
"""A polarization of 1 e/Å^2 in μC/cm^2 (≈ 1602.18)."""

THZ_PER_SQRT_EV_A2_AMU = (EV_J / ANGSTROM_M**2 / AMU_KG) ** 0.5 / (2 * 3.141592653589793) / 1e12
"""Phonon frequency factor: sqrt(eigenvalue in eV/Å^2/amu) -> THz (≈ 15.633, phonopy's DefaultToTHz)."""
THZ_IN_MEV = 1e12 * 2 * 3.141592653589793 * HBAR_EV_S * 1e3
"""One THz (frequency, h·f) in meV."""

COULOMB_EV_A = 1.0 / (4 * 3.141592653589793 * _ase._eps0) * _ase._e / ANGSTROM_M
"""e^2 / (4 pi eps0) in eV·Å (≈ 14.40): Coulomb energy of two unit charges 1 Å apart."""
