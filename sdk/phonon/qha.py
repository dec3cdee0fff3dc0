"""Quasi-harmonic approximation: equations of state and G(T, P) = min_V [E(V) + F_vib(V, T) + P V].

Units: volumes Å^3 per unit cell, energies eV per unit cell, pressures GPa at the interface (eV/Å^3 inside),
bulk moduli GPa, temperatures K, thermal expansion 1/K.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize_scalar

from mtsim.units import GPA

EOS_KINDS = ("vinet", "birch_murnaghan")


@dataclass(frozen=True)
class EOS:
    """A fitted equation of state: ``e0`` (eV), ``v0`` (Å^3), ``b0`` (eV/Å^3), ``b0_prime``; ``kind`` is
    ``"vinet"`` or ``"birch_murnaghan"`` (third order)."""

    kind: str
    e0: float
    v0: float
    b0: float
    b0_prime: float

    def energy(self, volume):
        return eos_energy(self.kind, np.asarray(volume, dtype=float), self.e0, self.v0, self.b0, self.b0_prime)

    @property
    def b0_gpa(self) -> float:
        return self.b0 / GPA


def eos_energy(kind: str, v, e0, v0, b0, bp):
    """E(V) of the Vinet or third-order Birch-Murnaghan equation of state."""
    if kind == "vinet":
        eta = (v / v0) ** (1 / 3)
        return e0 + 2 * b0 * v0 / (bp - 1) ** 2 * (
            2 - (5 + 3 * bp * (eta - 1) - 3 * eta) * np.exp(-1.5 * (bp - 1) * (eta - 1))
        )
    if kind == "birch_murnaghan":
        x = (v0 / v) ** (2 / 3) - 1
        return e0 + 9 * v0 * b0 / 16 * (x**3 * bp + x**2 * (6 - 4 * (x + 1)))
    raise ValueError(f"unknown equation of state {kind!r}; choose from {EOS_KINDS}")


def fit_eos(volumes, energies, kind: str = "vinet") -> EOS:
    """Least-squares fit of E(V), started from a parabola."""
    v, e = np.asarray(volumes, dtype=float), np.asarray(energies, dtype=float)
    if len(v) < 4:
        raise ValueError(f"an equation of state needs at least 4 volumes, got {len(v)}")
    a, b, c = np.polyfit(v, e, 2)
    if a <= 0:
        raise ValueError("E(V) is not convex over the volumes given: no minimum to fit")
    v0 = -b / (2 * a)
    start = [a * v0**2 + b * v0 + c, v0, 2 * a * v0, 4.0]
    scale = np.abs(start) + 1e-3
    fit = least_squares(lambda p: eos_energy(kind, v, *(p * scale)) - e, np.array(start) / scale, method="lm")
    return EOS(kind, *(float(x) for x in fit.x * scale))


@dataclass(frozen=True)
class QHAResult:
    """At one pressure (GPa), per temperature [n_T]: equilibrium ``volume`` (Å^3), ``gibbs`` energy (eV),
    ``bulk_modulus`` (GPa), ``thermal_expansion`` (1/K, volumetric), and ``within_range`` (False where the minimum
    lies outside the volumes computed, i.e. extrapolated)."""

    pressure: float
    temperatures: np.ndarray
    volume: np.ndarray
    gibbs: np.ndarray
    bulk_modulus: np.ndarray
    thermal_expansion: np.ndarray
    within_range: np.ndarray


class QHA:
    """QHA from static ``energies`` [n_V] (eV) at ``volumes`` [n_V] (Å^3) and vibrational free energies
    ``free_energies`` [n_T, n_V] (eV) at ``temperatures`` [n_T] (K); F(V) at each T is fitted with ``eos``."""

    def __init__(self, volumes, energies, temperatures, free_energies, eos: str = "vinet"):
        self.volumes = np.asarray(volumes, dtype=float)
        self.energies = np.asarray(energies, dtype=float)
        self.temperatures = np.asarray(temperatures, dtype=float)
        self.free_energies = np.asarray(free_energies, dtype=float)
        self.static = fit_eos(self.volumes, self.energies, eos)
        self.fits = [fit_eos(self.volumes, self.energies + f, eos) for f in self.free_energies]

    def at_pressure(self, pressure: float = 0.0) -> QHAResult:
        """V, G, B and alpha versus T at ``pressure`` (GPa)."""
        p = pressure * GPA
        lo, hi = self.volumes.min(), self.volumes.max()
        volume, gibbs, bulk = [], [], []
        for fit in self.fits:
            span = hi - lo
            best = minimize_scalar(
                lambda v: fit.energy(v) + p * v,
                bounds=(lo - span, hi + span),
                method="bounded",
                options={"xatol": 1e-10 * hi},
            )
            v, h = best.x, 1e-4 * best.x
            curvature = (fit.energy(v + h) - 2 * fit.energy(v) + fit.energy(v - h)) / h**2
            volume.append(v)
            gibbs.append(best.fun)
            bulk.append(v * curvature / GPA)
        volume = np.array(volume)
        within = (volume >= lo) & (volume <= hi)
        if not within.all():
            warnings.warn(
                f"at {pressure} GPa the equilibrium volume leaves the computed range [{lo:.3f}, {hi:.3f}] "
                f"Å^3 above {self.temperatures[~within].min():.0f} K: values there are extrapolated",
                stacklevel=2,
            )
        alpha = np.gradient(volume, self.temperatures) / volume if len(volume) > 1 else np.zeros(1)
        return QHAResult(pressure, self.temperatures, volume, np.array(gibbs), np.array(bulk), alpha, within)
