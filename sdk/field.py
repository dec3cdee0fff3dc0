"""The electric field in MD: fields E(t), the force a field exerts on Born charges, and the polarization along a
trajectory.

Convention (design/model-spec.md): ``Z[i, a, b] = dF_ib/dE_a`` — field index first. The field force is therefore
F_i,b += Σ_a Z[i,a,b] E_a, i.e. F_i += Z_i^T E, and the polarization changes by dP_a = (1/Ω) Σ_i Z[i,a,b] du_ib.
P(t) is accumulated along the unwrapped trajectory with the trapezoid rule on Z*, so it is the change of
polarization since the start of the run (the Berry-phase constant is not known to a force field). The electric
enthalpy U − Ω E·P is the conserved quantity of NVE at constant field.

Fields are in V/Å in the Python API (1 MV/cm = ``mtsim.units.MV_PER_CM`` V/Å); times in fs; P in μC/cm².
MD in a field and P–E hysteresis loops are in :mod:`mtsim.field_md`.

>>> from mtsim import field                                                     # doctest: +SKIP
>>> E = field.cosine([0, 0, 4 * MV_PER_CM], period=200_000.0)                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def field_forces(born_charges: np.ndarray, field: np.ndarray) -> np.ndarray:
    """The force of a field on Born charges: F_i,b = Σ_a Z[i,a,b] E_a (eV/Å for E in V/Å), [n,3]."""
    return np.einsum("iab,a->ib", born_charges, np.asarray(field, dtype=float))


def dipole_change(born_old: np.ndarray, born_new: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """dD_a = Σ_i ½ (Z_old + Z_new)[i,a,b] du_ib (e·Å): one trapezoid step of the dipole path integral."""
    return np.einsum("iab,ib->a", 0.5 * (born_old + born_new), displacement)


class PolarizationTracker:
    """The dipole D = Σ_i ∫ Z*_i du_i (e·Å) along a trajectory, from zero at the first update."""

    def __init__(self):
        self.positions = None
        self.born = None
        self.dipole = np.zeros(3)

    def update(self, positions: np.ndarray, born_charges: np.ndarray) -> np.ndarray:
        """Advance to new positions (unwrapped Å) with their Born charges; returns the dipole."""
        if self.positions is not None:
            self.dipole = self.dipole + dipole_change(self.born, born_charges, positions - self.positions)
        self.positions = np.array(positions, dtype=float)
        self.born = np.array(born_charges, dtype=float)
        return self.dipole.copy()

    def remove(self, keep: np.ndarray) -> None:
        """Forget removed atoms (their past contribution stays in the dipole)."""
        if self.positions is not None:
            self.positions, self.born = self.positions[keep], self.born[keep]


# ============================================================================================ fields
class ElectricField:
    """A field E(t) in V/Å as a function of time in fs; call it to evaluate. ``describe`` is for logs."""

    def __init__(self, function: Callable[[float], np.ndarray], describe: str = "E(t)"):
        self.function, self.describe = function, describe

    def __call__(self, time_fs: float) -> np.ndarray:
        value = np.asarray(self.function(float(time_fs)), dtype=float)
        if value.shape != (3,):
            raise ValueError(f"the field must be a 3-vector (V/Å), got shape {value.shape}")
        return value

    def __repr__(self) -> str:
        return f"ElectricField({self.describe})"


def constant(vector) -> ElectricField:
    """A constant field, V/Å."""
    vector = np.array(vector, dtype=float).reshape(3)
    return ElectricField(lambda t: vector, f"constant {vector.tolist()} V/Å")


def cosine(amplitude, period: float, phase: float = 0.0, start: float = 0.0) -> ElectricField:
    """E(t) = amplitude · cos(2π (t − start)/period + phase) for t ≥ start, zero before (paper eq. 21).

    ``amplitude``: 3-vector in V/Å; ``period`` and ``start`` in fs; ``phase`` in radians.
    """
    amplitude = np.array(amplitude, dtype=float).reshape(3)
    if period <= 0:
        raise ValueError("period must be > 0 fs")

    def function(t):
        if t < start:
            return np.zeros(3)
        return amplitude * math.cos(2 * math.pi * (t - start) / period + phase)

    return ElectricField(function, f"{amplitude.tolist()} V/Å cos(2π t/{period:g} fs)")


def as_field(value) -> ElectricField | None:
    """None, an :class:`ElectricField`, a callable ``t_fs -> vector`` or a constant 3-vector (V/Å)."""
    if value is None or isinstance(value, ElectricField):
        return value
    if callable(value):
        return ElectricField(value, getattr(value, "__name__", "E(t)"))
    return constant(value)
