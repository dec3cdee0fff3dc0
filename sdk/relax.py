"""Structure relaxation with FIRE, optionally with the cell at a target pressure.

>>> from mtsim.relax import relax                                               # doctest: +SKIP
>>> result = relax(model, atoms, fmax=0.01, cell=True, pressure=10.0)           # doctest: +SKIP
>>> result.converged, result.energy, result.structure.volume                    # doctest: +SKIP

FIRE (Bitzek et al., PRL 97, 170201 (2006)) with ASE's parameters; the largest step of any atom (or cell row) is
capped at ``maxstep`` Å. With ``cell=True`` the cell follows ASE's ``UnitCellFilter``: the degrees of freedom
are the atoms in the undeformed frame and the deformation gradient F (cell = cell0 @ F^T) scaled by the number of
atoms; the cell's generalized force is the virial −V (σ + p I) minimising the enthalpy E + pV. Converged when
every atom force is below ``fmax`` and, with the cell, every component of σ + p I is below ``stress_tol`` GPa
(default: ASE's criterion, the virial per atom below ``fmax`` eV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mtsim.checks import integer, number, positive
from mtsim.md.state import MDState
from mtsim.potential import DEFAULT_SKIN, ModelPotential
from mtsim.structure import Structure
from mtsim.units import GPA


@dataclass
class RelaxResult:
    """``structure`` (mtsim.Structure), ``energy`` (eV, potential energy), ``converged``, ``steps`` (FIRE steps
    taken), ``history`` (one dict per evaluation: step, energy, enthalpy, fmax, stress_GPa = max |σ + p I|,
    volume), ``enthalpy`` E + pV (eV), ``prediction`` (every output at the final structure), ``fmax`` (eV/Å) and
    ``stress`` ([3,3] eV/Å^3, ASE sign) at the end."""

    structure: Structure
    energy: float
    converged: bool
    steps: int
    history: list = field(default_factory=list)
    enthalpy: float = math.nan
    prediction: object = None
    fmax: float = math.nan
    stress: np.ndarray | None = None


class FIRE:
    """FIRE on a flat list of 3-vectors (rows). Parameters as ``ase.optimize.FIRE``."""

    def __init__(self, maxstep=0.2, dt=0.1, dtmax=1.0, nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99):
        self.maxstep, self.dt, self.dtmax, self.nmin = maxstep, dt, dtmax, nmin
        self.finc, self.fdec, self.astart, self.fa = finc, fdec, astart, fa
        self.a, self.v, self.positive = astart, None, 0

    def step(self, f: np.ndarray) -> np.ndarray:
        """The displacement for generalized forces ``f`` [m,3]."""
        if self.v is None:
            self.v = np.zeros_like(f)
        else:
            vf = float(np.vdot(f, self.v))
            if vf > 0:
                norm_f = np.sqrt(np.vdot(f, f))
                self.v = (1 - self.a) * self.v + self.a * f / norm_f * np.sqrt(np.vdot(self.v, self.v))
                if self.positive > self.nmin:
                    self.dt = min(self.dt * self.finc, self.dtmax)
                    self.a *= self.fa
                self.positive += 1
            else:
                self.v[:] = 0
                self.a = self.astart
                self.dt *= self.fdec
                self.positive = 0
        self.v += self.dt * f
        dr = self.dt * self.v
        longest = np.linalg.norm(dr, axis=1).max(initial=0.0)
        if longest > self.maxstep:
            dr *= self.maxstep / longest
        return dr


def relax_arguments(fmax, pressure=0.0, max_steps=500) -> None:
    """``fmax`` > 0 eV/Å, ``pressure`` finite (GPa), ``max_steps`` an integer >= 0."""
    positive("fmax", fmax)
    number("pressure", pressure)
    integer("max_steps", max_steps, 0)


def relax(
    model,
    structure,
    fmax: float = 0.01,
    cell: bool = False,
    pressure: float = 0.0,
    max_steps: int = 500,
    *,
    stress_tol: float | None = None,
    maxstep: float = 0.2,
    skin: float = DEFAULT_SKIN,
    callback=None,
) -> RelaxResult:
    """Relax ``structure`` (ase.Atoms or mtsim.Structure) on ``model`` with FIRE.

    ``fmax`` eV/Å; ``cell``: relax the cell too (needs 3D periodicity) at ``pressure`` GPa; ``max_steps`` caps
    the FIRE steps; ``stress_tol`` GPa (cell only, see the module docstring); ``maxstep`` Å; ``callback(step,
    record)`` is called after every evaluation (progress bars). Returns a :class:`RelaxResult`.
    """
    relax_arguments(fmax, pressure, max_steps)
    if stress_tol is not None:
        positive("stress_tol", stress_tol)
    positive("maxstep", maxstep)
    state = MDState.from_structure(structure)
    if cell and not state.pbc.all():
        raise ValueError("cell relaxation needs a structure periodic in all three directions")
    potential = ModelPotential(model, skin=skin)
    p_ext = float(pressure) * GPA
    n = state.n_atoms
    cell0 = state.cell.copy()
    factor = float(n)
    optimizer = FIRE(maxstep=maxstep)
    history = []

    def evaluate(step):
        state.step = step
        potential.compute(state)
        forces = state.forces
        f_max = float(np.linalg.norm(forces, axis=1).max(initial=0.0))
        record = {
            "step": step,
            "energy": state.energy,
            "enthalpy": state.energy + p_ext * state.volume,
            "fmax": f_max,
            "volume": state.volume,
        }
        done = f_max < fmax
        if cell:
            residual = state.stress + p_ext * np.eye(3)
            record["stress_GPa"] = float(np.abs(residual).max() / GPA)
            F = deformation()
            virial = np.linalg.solve(F, (-state.volume * residual).T).T
            generalized = np.concatenate([forces @ F, virial / factor])
            if stress_tol is None:
                done = done and float(np.linalg.norm(virial / factor, axis=1).max()) < fmax
            else:
                done = done and record["stress_GPa"] < stress_tol
        else:
            generalized = forces
        history.append(record)
        if callback is not None:
            callback(step, record)
        return generalized, done

    def deformation():
        return np.linalg.solve(cell0, state.cell).T

    steps = 0
    generalized, converged = evaluate(0)
    while not converged and steps < max_steps:
        dr = optimizer.step(generalized)
        if cell:
            F = deformation()
            reference = np.linalg.solve(F, state.positions.T).T + dr[:n]
            F_new = F + dr[n:] / factor
            state.cell = cell0 @ F_new.T
            state.positions = reference @ F_new.T
        else:
            state.positions = state.positions + dr
        steps += 1
        generalized, converged = evaluate(steps)
    return RelaxResult(
        structure=state.to_structure(),
        energy=state.energy,
        converged=bool(converged),
        steps=steps,
        history=history,
        enthalpy=state.energy + p_ext * state.volume,
        prediction=state.prediction(),
        fmax=history[-1]["fmax"],
        stress=state.stress.copy(),
    )
