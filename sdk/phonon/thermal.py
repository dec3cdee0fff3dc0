"""Harmonic thermodynamics of phonon frequencies (per unit cell, eV and eV/K).

With E = h f and x = E / (k_B T), summed over modes with weights w_q (sum w_q = 1):
F = sum w [E/2 + k_B T ln(1 - e^-x)],  S = sum w k_B [x / (e^x - 1) - ln(1 - e^-x)],
U = sum w E [1/2 + 1/(e^x - 1)],  C_v = sum w k_B x^2 e^x / (e^x - 1)^2.
Modes below ``cutoff`` (THz; acoustic modes at Gamma, imaginary modes) are left out, as phonopy does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtsim.units import KB, THZ_IN_MEV

CUTOFF = 1e-3
"""THz. Modes at or below this frequency are left out of the sums."""


@dataclass(frozen=True)
class ThermalProperties:
    """``temperatures`` (K); ``free_energy`` F and ``internal_energy`` U (eV/cell), ``entropy`` S and
    ``heat_capacity`` C_v (eV/K/cell), all [n_T]; ``zero_point`` (eV/cell)."""

    temperatures: np.ndarray
    free_energy: np.ndarray
    entropy: np.ndarray
    heat_capacity: np.ndarray
    internal_energy: np.ndarray
    zero_point: float


def thermal_properties(
    frequencies: np.ndarray, weights: np.ndarray, temperatures, cutoff: float = CUTOFF
) -> ThermalProperties:
    """F, S, U, C_v at ``temperatures`` (K) from ``frequencies`` [nq, n_bands] (THz) with q ``weights`` [nq]."""
    temperatures = np.atleast_1d(np.asarray(temperatures, dtype=float))
    f = np.asarray(frequencies, dtype=float)
    w = np.broadcast_to(np.asarray(weights, dtype=float)[:, None], f.shape)
    keep = f > cutoff
    energy, w = f[keep] * THZ_IN_MEV * 1e-3, w[keep]
    zero_point = float(np.sum(w * energy) / 2)
    kt = KB * np.maximum(temperatures, 1e-12)[:, None]
    x = energy[None, :] / kt
    with np.errstate(over="ignore"):
        occupation = 1 / np.expm1(x)
    log_term = np.log1p(-np.exp(-x))
    free = zero_point + np.sum(w * kt * log_term, axis=1)
    entropy = KB * np.sum(w * (x * occupation - log_term), axis=1)
    internal = zero_point + np.sum(w * energy * occupation, axis=1)
    heat = KB * np.sum(w * x**2 * occupation * (1 + occupation), axis=1)
    return ThermalProperties(temperatures, free, entropy, heat, internal, zero_point)
