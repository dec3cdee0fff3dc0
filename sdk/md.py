"""Molecular dynamics on an mtsim model, plain numpy (no ASE in the loop).

One state dataclass (:class:`MDState`), one potential that evaluates the model on a reused neighbour list
(:class:`ModelPotential`), and one integrator class per ensemble, each with a ``step(state, potential)``:

- :class:`NVE` — velocity Verlet; conserved: K + U.
- :class:`Langevin` — BAOAB (Leimkuhler–Matthews); conserved: K + U minus the heat given to the bath.
- :class:`NoseHooverChain` — NVT with a Nosé–Hoover chain (Martyna, Klein, Tuckerman 1992), Suzuki–Yoshida
  4th-order thermostat sub-steps; conserved: K + U + chain energy.
- :class:`NPT` — Martyna–Tobias–Klein barostat with Nosé–Hoover chains on particles and cell
  (Tuckerman et al., J. Phys. A 39, 5629 (2006)); ``mode="isotropic"`` or ``"full"`` (symmetric cell
  momentum, no rotations); conserved: K + U + PV + cell kinetic energy + both chains.

:class:`Simulation` ties them together, with logging, extxyz trajectories, per-step hooks and atom removal
(:class:`RemoveAtoms`, the paper's delithiation protocol); :func:`run` is the one-call front end.

Units: time in fs, temperature in K, pressure in GPa, electric field in V/Å (everything else ASE's: Å, eV, amu,
e). Momenta are in amu·Å/t with t the ASE time unit (``mtsim.units.FS`` per fs), as in ASE.

In an electric field E(t) (:mod:`mtsim.field`) the force is F_i = F_i^0 + Z*_i^T E and the dipole
D = Ω P is integrated along the unwrapped trajectory; every conserved quantity then contains the electric
enthalpy term −E·D plus ∫ D·dE (zero at constant field), so it stays conserved for any E(t).

Positions are kept unwrapped (atoms are never folded back into the cell), which keeps the polarization path
integral and mean-square displacements continuous; the neighbour list folds them itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np

from mtsim.field import ElectricField, PolarizationTracker, as_field, field_forces
from mtsim.graph import MIN_DISTANCE, graph_inputs
from mtsim.kernels import NeighborList
from mtsim.model import PER_STRUCTURE, PROPERTIES
from mtsim.structure import Structure, as_structure
from mtsim.units import E_PER_A2_IN_UC_PER_CM2, FS, GPA, KB

ENSEMBLES = ("nve", "nvt-langevin", "nvt-nh", "npt")
MAX_FORCE = 500.0
"""eV/Å. A force above this (or a NaN) stops the run: the dynamics has exploded."""
DEFAULT_SKIN = 0.5
"""Å. Neighbour-list skin: pairs within cutoff + skin are kept until some atom may have crossed it."""

# 4th-order Suzuki–Yoshida weights for the thermostat sub-steps
SUZUKI_YOSHIDA = (1 / (2 - 2 ** (1 / 3)), -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))


def exprel(x):
    """(exp(x) − 1)/x, 1 at x = 0 (accurate for small x)."""
    x = np.asarray(x, dtype=float)
    safe = np.where(x == 0, 1.0, x)
    return np.where(x == 0, 1.0, np.expm1(safe) / safe)


class MDError(RuntimeError):
    """The dynamics broke down (NaN or exploding forces, overlapping atoms); the message names step and atom."""


# ============================================================================================ state
@dataclass
class MDState:
    """Everything that evolves: unwrapped positions (Å), momenta (amu·Å/t), masses (amu), cell (Å, rows are the
    lattice vectors), the last model evaluation (``energy`` eV, total ``forces`` eV/Å including the field force,
    ``stress`` eV/Å^3 with ASE's sign, ``heads``: every model output for this structure), the applied ``field``
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
    heads: dict = dataclass_field(default_factory=dict)
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
        return cls(numbers=s.numbers.copy(), positions=s.positions.copy(), momenta=momenta,
                   masses=np.array(masses, dtype=float).reshape(n), cell=s.cell.copy(), pbc=s.pbc.copy())

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

    def prediction(self):
        """The model heads at the current positions as an ``mtsim.Prediction``."""
        from mtsim.model import Prediction

        values = {k: self.heads[k] for k in PROPERTIES}
        values["energy"] = float(values["energy"])
        return Prediction(**values)


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


# ============================================================================================ neighbours
def wrap_positions(positions, cell, pbc):
    """Fold positions into the cell along periodic directions: returns (wrapped, n) with
    ``wrapped = positions - n @ cell`` and ``n`` integer [n,3] (0 along non-periodic directions)."""
    n = np.zeros(positions.shape, dtype=np.int64)
    if pbc.any():
        inverse = np.linalg.inv(cell) if abs(np.linalg.det(cell)) > 1e-12 else np.linalg.pinv(cell)
        fractional = positions @ inverse
        n[:, pbc] = np.floor(fractional[:, pbc]).astype(np.int64)
    return positions - n @ cell, n


# ============================================================================================ potential
class ModelPotential:
    """The model on a reused ``mtsim.kernels.NeighborList`` (with skin), plus an optional electric field; fills an
    :class:`MDState`.

    ``field``: None, a constant vector (V/Å), a callable ``t_fs -> vector`` or an :class:`mtsim.field.ElectricField`.
    ``max_force`` (eV/Å): larger forces (or NaN) raise :class:`MDError` naming the step and the atom.
    """

    def __init__(self, model, skin: float = DEFAULT_SKIN, field=None, max_force: float = MAX_FORCE):
        self.model = model
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff = float(model.cutoff)
        self.neighbors = NeighborList(self.cutoff, skin)
        self.field: ElectricField | None = as_field(field)
        self.max_force = float(max_force)
        self.tracker = PolarizationTracker()
        self.dtype = np.dtype(getattr(model, "dtype", np.float64))
        self.evaluations = 0

    def compute(self, state: MDState) -> None:
        """Evaluate every head at the state's positions and cell; update forces, dipole and field terms."""
        if self.evaluations == 0 and hasattr(self.model, "check_elements"):
            self.model.check_elements(state.numbers)
        self._check_positions(state)
        i, j, S, _, d = self.edges(state)
        self._check_distances(state, i, j, d)
        inputs = graph_inputs(state.numbers, state.positions, state.cell, i, j, S, self.dtype)
        out = self.model.evaluate(inputs)
        self.evaluations += 1
        heads = {k: np.array(out[k][0] if k in PER_STRUCTURE else out[k], dtype=np.float64) for k in PROPERTIES}
        forces = heads["forces"].copy()
        dipole = self.tracker.update(state.positions, heads["born_charges"])
        if self.field is not None:
            e_new = np.asarray(self.field(state.time), dtype=float)
            # trapezoid rule for ∫ D·dE, so that K + U − E·D + ∫ D·dE is conserved for any E(t)
            state.field_work += float(0.5 * (state.dipole + dipole) @ (e_new - state.field))
            state.field = e_new
            forces += field_forces(heads["born_charges"], e_new)
        state.dipole = dipole
        state.energy = float(heads["energy"])
        state.forces = forces
        state.stress = heads["stress"]
        state.heads = heads
        self._check_forces(state)

    def edges(self, state: MDState):
        """(i, j, shifts, vectors, distances) of the pairs within the cutoff (self edges included), from the skin
        list, which is rebuilt only when needed."""
        self.neighbors.update(state.positions, state.cell, state.pbc)
        i, j, S = self.neighbors.get()
        S = S.astype(np.float64)
        r = state.positions[j] - state.positions[i] + S @ state.cell
        d = np.sqrt(np.einsum("ij,ij->i", r, r))
        inside = d < self.cutoff
        return i[inside], j[inside], S[inside], r[inside], d[inside]

    def start_field(self, state: MDState) -> None:
        """Set the field at the state's time without counting work (before the first step)."""
        if self.field is not None:
            state.field = np.asarray(self.field(state.time), dtype=float)

    def remove_atoms(self, keep: np.ndarray) -> None:
        self.neighbors.remove(keep)
        self.tracker.remove(keep)

    # -------------------------------------------------------------------------------------- checks
    @staticmethod
    def _label(state, atom) -> str:
        from ase.data import chemical_symbols

        return f"atom {atom} ({chemical_symbols[state.numbers[atom]]})"

    def _check_positions(self, state):
        bad = ~np.isfinite(state.positions).all(axis=1)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise MDError(f"step {state.step}: non-finite position on {self._label(state, atom)}")
        if not np.isfinite(state.cell).all():
            raise MDError(f"step {state.step}: the cell became non-finite")

    def _check_distances(self, state, i, j, d):
        close = (d < MIN_DISTANCE) & (i != j)
        if close.any():
            k = int(np.flatnonzero(close)[0])
            raise MDError(f"step {state.step}: {self._label(state, i[k])} and {self._label(state, j[k])} are "
                          f"{d[k]:.3g} Å apart (below {MIN_DISTANCE} Å); the dynamics has exploded")

    def _check_forces(self, state):
        norms = np.linalg.norm(state.forces, axis=1)
        bad = ~np.isfinite(norms)
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            raise MDError(f"step {state.step}: NaN or infinite force on {self._label(state, atom)}")
        if not math.isfinite(state.energy):
            raise MDError(f"step {state.step}: the energy is NaN or infinite")
        atom = int(np.argmax(norms)) if len(norms) else 0
        if len(norms) and norms[atom] > self.max_force:
            raise MDError(f"step {state.step}: exploding force on {self._label(state, atom)}: "
                          f"|F| = {norms[atom]:.4g} eV/Å > {self.max_force:g} eV/Å")


# ============================================================================================ integrators
class NVE:
    """Velocity Verlet; ``timestep`` in fs."""

    name = "nve"

    def __init__(self, timestep: float):
        self.timestep = float(timestep)
        self.dt = self.timestep * FS

    def init(self, state: MDState) -> None:
        """Called once the forces of the initial state are known."""

    def resize(self, state: MDState) -> None:
        """Called after atoms were removed."""

    def extra_energy(self, state: MDState) -> float:
        """The integrator's own terms of the conserved quantity (eV)."""
        return 0.0

    def conserved(self, state: MDState) -> float:
        return state.kinetic_energy + state.energy + state.electric_enthalpy + self.extra_energy(state)

    def kick(self, state, dt):
        state.momenta += dt * state.forces

    def drift(self, state, dt):
        state.positions += dt * state.momenta / state.masses[:, None]

    def advance(self, state, potential):
        state.time += self.timestep
        potential.compute(state)

    def step(self, state: MDState, potential: ModelPotential) -> MDState:
        self.kick(state, 0.5 * self.dt)
        self.drift(state, self.dt)
        self.advance(state, potential)
        self.kick(state, 0.5 * self.dt)
        return state


class Langevin(NVE):
    """Langevin dynamics, BAOAB splitting. ``temperature`` K, ``friction`` in 1/fs, ``seed`` for the noise.

    The noise keeps the total momentum at zero (mass-weighted projection), which samples the canonical
    distribution on the 3N − 3 remaining degrees of freedom. ``extra_energy`` is minus the heat handed to the bath,
    so the conserved quantity drifts only by the integration error.
    """

    name = "nvt-langevin"

    def __init__(self, timestep: float, temperature: float, friction: float = 0.01, seed=None):
        super().__init__(timestep)
        self.temperature, self.friction = float(temperature), float(friction)
        self.rng = np.random.default_rng(seed)
        self.c1 = math.exp(-self.friction * self.timestep)
        self.heat = 0.0

    def extra_energy(self, state):
        return -self.heat

    def thermalize(self, state):
        kinetic = state.kinetic_energy
        noise = self.rng.normal(size=state.momenta.shape) * np.sqrt(state.masses * KB * self.temperature)[:, None]
        noise -= state.masses[:, None] * (noise.sum(axis=0) / state.masses.sum())
        state.momenta *= self.c1
        state.momenta += math.sqrt(1 - self.c1**2) * noise
        self.heat += state.kinetic_energy - kinetic

    def step(self, state, potential):
        self.kick(state, 0.5 * self.dt)
        self.drift(state, 0.5 * self.dt)
        self.thermalize(state)
        self.drift(state, 0.5 * self.dt)
        self.advance(state, potential)
        self.kick(state, 0.5 * self.dt)
        return state


class _Chain:
    """A Nosé–Hoover chain acting on kinetic energy Σp²/m of ``dof`` degrees of freedom (Suzuki–Yoshida 4th order).

    ``half_step(twice_kinetic, dt)`` integrates the chain for ``dt`` (ASE time) and returns the factor by which the
    thermostatted momenta must be scaled.
    """

    def __init__(self, dof: int, temperature: float, tdamp: float, length: int = 3, loops: int = 1):
        if length < 1:
            raise ValueError("the chain needs at least one thermostat")
        self.kT = KB * float(temperature)
        self.tdamp, self.length, self.loops = float(tdamp) * FS, int(length), int(loops)
        self.xi = np.zeros(self.length)
        self.p_xi = np.zeros(self.length)
        self.set_dof(dof)

    def set_dof(self, dof: int) -> None:
        self.dof = int(dof)
        self.Q = np.full(self.length, self.kT * self.tdamp**2)
        self.Q[0] *= self.dof

    def energy(self) -> float:
        return float(np.sum(0.5 * self.p_xi**2 / self.Q) + self.dof * self.kT * self.xi[0]
                     + self.kT * np.sum(self.xi[1:]))

    def _force(self, k, twice_kinetic):
        if k == 0:
            return twice_kinetic - self.dof * self.kT
        return self.p_xi[k - 1] ** 2 / self.Q[k - 1] - self.kT

    def _update(self, k, twice_kinetic, delta):
        if k < self.length - 1:
            self.p_xi[k] *= math.exp(-0.25 * delta * self.p_xi[k + 1] / self.Q[k + 1])
        self.p_xi[k] += 0.5 * delta * self._force(k, twice_kinetic)
        if k < self.length - 1:
            self.p_xi[k] *= math.exp(-0.25 * delta * self.p_xi[k + 1] / self.Q[k + 1])

    def half_step(self, twice_kinetic: float, dt: float) -> float:
        scale = 1.0
        for _ in range(self.loops):
            for weight in SUZUKI_YOSHIDA:
                delta = weight * dt / self.loops
                for k in reversed(range(self.length)):
                    self._update(k, twice_kinetic * scale**2, delta)
                self.xi += delta * self.p_xi / self.Q
                scale *= math.exp(-delta * self.p_xi[0] / self.Q[0])
                for k in range(self.length):
                    self._update(k, twice_kinetic * scale**2, delta)
        return scale


class NoseHooverChain(NVE):
    """NVT with a Nosé–Hoover chain (the paper's thermostat). ``tdamp``: thermostat time constant in fs
    (~100 time steps); ``chain``: number of thermostats; ``loops``: Suzuki–Yoshida sub-steps."""

    name = "nvt-nh"

    def __init__(self, timestep: float, temperature: float, tdamp: float = 100.0, chain: int = 3, loops: int = 1):
        super().__init__(timestep)
        self.temperature, self.tdamp, self.chain_length, self.loops = float(temperature), tdamp, chain, loops
        self.chain: _Chain | None = None

    def init(self, state):
        self.chain = _Chain(state.dof, self.temperature, self.tdamp, self.chain_length, self.loops)

    def resize(self, state):
        self.chain.set_dof(state.dof)

    def extra_energy(self, state):
        return self.chain.energy()

    def thermostat(self, state):
        state.momenta *= self.chain.half_step(2 * state.kinetic_energy, 0.5 * self.dt)

    def step(self, state, potential):
        self.thermostat(state)
        super().step(state, potential)
        self.thermostat(state)
        return state


class NPT(NVE):
    """Isothermal–isobaric MD: MTK barostat with Nosé–Hoover chains on the particles and on the cell.

    ``pressure`` GPa; ``mode``: ``"isotropic"`` (the cell shape is kept, the volume fluctuates) or ``"full"``
    (all six strain components, no rotation); ``tdamp``/``pdamp``: thermostat and barostat time constants in fs
    (~100 and ~1000 time steps). Needs a cell periodic in all three directions.
    """

    name = "npt"

    def __init__(self, timestep: float, temperature: float, pressure: float = 0.0, mode: str = "isotropic",
                 tdamp: float = 100.0, pdamp: float = 1000.0, chain: int = 3, loops: int = 1):
        super().__init__(timestep)
        if mode not in ("isotropic", "full"):
            raise ValueError(f"mode must be 'isotropic' or 'full', got {mode!r}")
        self.temperature, self.pressure, self.mode = float(temperature), float(pressure), mode
        self.tdamp, self.pdamp, self.chain_length, self.loops = tdamp, pdamp, chain, loops
        self.p_ext = self.pressure * GPA
        self.kT = KB * self.temperature

    def init(self, state):
        if not state.pbc.all():
            raise ValueError("NPT needs a cell that is periodic in all three directions")
        self.chain = _Chain(state.dof, self.temperature, self.tdamp, self.chain_length, self.loops)
        self.cell_chain = _Chain(1 if self.mode == "isotropic" else 6, self.temperature, self.pdamp,
                                 self.chain_length, self.loops)
        self.W = (state.dof + 3) / 3 * self.kT * (self.pdamp * FS) ** 2  # barostat mass, eV·t²
        self.p_g = np.zeros((3, 3))  # cell momentum (symmetric)

    def resize(self, state):
        self.chain.set_dof(state.dof)

    def extra_energy(self, state):
        return (self.chain.energy() + self.cell_chain.energy() + float(np.sum(self.p_g**2)) / (2 * self.W)
                + self.p_ext * state.volume)

    def _cell_force(self, state):
        twice_kinetic = 2 * state.kinetic_energy
        G = state.volume * (state.pressure_tensor - self.p_ext * np.eye(3)) + twice_kinetic / state.dof * np.eye(3)
        if self.mode == "isotropic":
            G = np.trace(G) / 3 * np.eye(3)
        return 0.5 * (G + G.T)

    def _thermostats(self, state):
        self.p_g *= self.cell_chain.half_step(float(np.sum(self.p_g**2)) / self.W, 0.5 * self.dt)
        state.momenta *= self.chain.half_step(2 * state.kinetic_energy, 0.5 * self.dt)

    def _kick(self, state, delta):
        lam, U = np.linalg.eigh(self.p_g)
        kappa = (lam + np.trace(self.p_g) / state.dof) * delta / self.W
        y = state.momenta @ U
        y = y * np.exp(-kappa) + delta * (state.forces @ U) * exprel(-kappa)
        state.momenta = y @ U.T

    def _drift(self, state, delta):
        lam, U = np.linalg.eigh(self.p_g)
        x = lam * delta / self.W
        q = state.positions @ U
        q = q * np.exp(x) + delta * (state.momenta @ U) / state.masses[:, None] * exprel(x)
        state.positions = q @ U.T
        state.cell = ((state.cell @ U) * np.exp(x)) @ U.T

    def step(self, state, potential):
        self._thermostats(state)
        self.p_g += 0.5 * self.dt * self._cell_force(state)
        self._kick(state, 0.5 * self.dt)
        self._drift(state, self.dt)
        self.advance(state, potential)
        self._kick(state, 0.5 * self.dt)
        self.p_g += 0.5 * self.dt * self._cell_force(state)
        self._thermostats(state)
        return state


def make_integrator(ensemble: str, timestep: float, temperature: float = 300.0, pressure: float = 0.0,
                    seed=None, friction: float = 0.01, tdamp: float = 100.0, pdamp: float = 1000.0,
                    barostat: str = "isotropic"):
    """The integrator for ``ensemble`` in :data:`ENSEMBLES` (times in fs, K, GPa, friction in 1/fs)."""
    if ensemble == "nve":
        return NVE(timestep)
    if ensemble == "nvt-langevin":
        return Langevin(timestep, temperature, friction=friction, seed=seed)
    if ensemble == "nvt-nh":
        return NoseHooverChain(timestep, temperature, tdamp=tdamp)
    if ensemble == "npt":
        return NPT(timestep, temperature, pressure, mode=barostat, tdamp=tdamp, pdamp=pdamp)
    raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")


# ============================================================================================ driver
Hook = Callable[["Simulation"], None]


class Simulation:
    """A model, a state, an integrator and the bookkeeping around them.

    ``temperature`` (K): draw Maxwell–Boltzmann momenta with ``seed`` unless ``momenta`` are given.
    ``field``: see :class:`ModelPotential`. After construction the forces of the initial state are known.
    """

    def __init__(self, model, structure, integrator, *, temperature: float | None = None, seed=None,
                 momenta=None, masses=None, field=None, skin: float = DEFAULT_SKIN, max_force: float = MAX_FORCE):
        self.state = MDState.from_structure(structure, masses=masses, momenta=momenta)
        if momenta is None and temperature:
            self.state.momenta = maxwell_boltzmann(self.state.masses, temperature, seed)
        self.integrator = integrator
        self.potential = ModelPotential(model, skin=skin, field=field, max_force=max_force)
        if self.potential.field is not None and isinstance(integrator, NPT):
            raise ValueError("NPT in an electric field is not supported (the field's stress is not modelled); "
                             "use nve, nvt-langevin or nvt-nh")
        self.potential.start_field(self.state)
        self.potential.compute(self.state)
        self.integrator.init(self.state)
        self.offset = 0.0  # energy added/removed by events, so that `conserved` stays continuous

    @property
    def conserved(self) -> float:
        """The ensemble's conserved quantity (eV), continuous across atom removals."""
        return self.integrator.conserved(self.state) + self.offset

    def step(self) -> MDState:
        self.state.step += 1
        self.integrator.step(self.state, self.potential)
        return self.state

    def run(self, steps: int, *, log=None, trajectory=None, interval: int = 10,
            hooks: Iterable[Hook] = (), trajectory_interval: int | None = None) -> MDState:
        """Advance ``steps`` steps. ``log``: CSV path or :class:`mtsim.trajectory.CSVLog`; ``trajectory``: extxyz
        path or :class:`mtsim.trajectory.TrajectoryWriter`; both written at the start and every ``interval`` steps
        (``trajectory_interval`` overrides for the trajectory). ``hooks`` are called after every step with the
        simulation (events, progress bars); a hook may remove atoms with :meth:`remove_atoms`."""
        from mtsim.trajectory import open_log, open_trajectory

        hooks = list(hooks)
        interval = max(1, int(interval))
        traj_interval = interval if trajectory_interval is None else max(1, int(trajectory_interval))
        with open_log(log) as logger, open_trajectory(trajectory) as writer:
            if logger is not None and self.state.step % interval == 0:
                logger.write(self)
            if writer is not None and self.state.step % traj_interval == 0:
                writer.write(self.state)
            for _ in range(int(steps)):
                self.step()
                for hook in hooks:
                    hook(self)
                if logger is not None and self.state.step % interval == 0:
                    logger.write(self)
                if writer is not None and self.state.step % traj_interval == 0:
                    writer.write(self.state)
        return self.state

    def remove_atoms(self, indices: Sequence[int]) -> None:
        """Remove atoms, keeping every array, the neighbour list, the polarization tracker, the thermostat
        degrees of freedom and the conserved quantity consistent. The total momentum is re-zeroed."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if indices.size == 0:
            return
        state = self.state
        if np.any(indices < 0) or np.any(indices >= state.n_atoms):
            raise IndexError(f"atom indices {indices.tolist()} out of range for {state.n_atoms} atoms")
        if indices.size >= state.n_atoms:
            raise ValueError("cannot remove every atom")
        before = self.conserved
        keep = np.ones(state.n_atoms, dtype=bool)
        keep[indices] = False
        for name in ("numbers", "positions", "momenta", "masses", "forces"):
            setattr(state, name, getattr(state, name)[keep])
        zero_momentum(state)
        self.potential.remove_atoms(keep)
        self.potential.compute(state)
        self.integrator.resize(state)
        self.offset += before - self.conserved


class RemoveAtoms:
    """Event hook: remove one atom of ``element`` every ``every`` fs (the paper's delithiation protocol).

    ``rule``: ``"random"`` (with ``seed``), ``"first"``/``"last"`` (lowest/highest index), ``"max-charge"``/
    ``"min-charge"`` (by the charge head), ``"max-z"`` (highest z: from the top of a slab), or a callable
    ``rule(state, candidates, rng) -> index``. ``start`` (fs): time of the first removal (default ``every``);
    ``limit``: at most this many removals (default: until none of ``element`` is left). ``removed`` lists
    (time_fs, symbol, index at removal).
    """

    RULES = ("random", "first", "last", "max-charge", "min-charge", "max-z")

    def __init__(self, element: str | int, every: float, rule="random", seed=None, start: float | None = None,
                 limit: int | None = None):
        from ase.data import atomic_numbers, chemical_symbols

        self.number = int(element) if not isinstance(element, str) else atomic_numbers[element]
        self.symbol = chemical_symbols[self.number]
        if not callable(rule) and rule not in self.RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {self.RULES} or pass a callable")
        if every <= 0:
            raise ValueError("every must be > 0 fs")
        self.every, self.rule, self.limit = float(every), rule, limit
        self.rng = np.random.default_rng(seed)
        self.next_time = float(every if start is None else start)
        self.removed: list[tuple[float, str, int]] = []

    def choose(self, state: MDState, candidates: np.ndarray) -> int:
        if callable(self.rule):
            return int(self.rule(state, candidates, self.rng))
        if self.rule == "random":
            return int(self.rng.choice(candidates))
        if self.rule == "first":
            return int(candidates[0])
        if self.rule == "last":
            return int(candidates[-1])
        if self.rule == "max-charge":
            return int(candidates[np.argmax(state.heads["charges"][candidates])])
        if self.rule == "min-charge":
            return int(candidates[np.argmin(state.heads["charges"][candidates])])
        return int(candidates[np.argmax(state.positions[candidates, 2])])  # max-z

    def __call__(self, sim: Simulation) -> None:
        state = sim.state
        if state.time + 1e-9 < self.next_time or (self.limit is not None and len(self.removed) >= self.limit):
            return
        self.next_time += self.every
        candidates = np.flatnonzero(state.numbers == self.number)
        if candidates.size == 0 or state.n_atoms == 1:
            return
        index = self.choose(state, candidates)
        if state.numbers[index] != self.number:
            raise ValueError(f"rule chose atom {index}, which is not {self.symbol}")
        sim.remove_atoms([index])
        self.removed.append((state.time, self.symbol, index))


def run(model, structure, ensemble: str = "nve", timestep: float = 1.0, steps: int = 1000,
        temperature: float = 300.0, pressure: float = 0.0, *, field=None, seed=None, momenta=None,
        initial_temperature: float | None = None, friction: float = 0.01, tdamp: float = 100.0,
        pdamp: float = 1000.0, barostat: str = "isotropic", log=None, trajectory=None, interval: int = 10,
        hooks: Iterable[Hook] = (), skin: float = DEFAULT_SKIN, max_force: float = MAX_FORCE) -> Simulation:
    """Run MD in one call and return the :class:`Simulation` (final state in ``.state``).

    ``ensemble``: one of :data:`ENSEMBLES`; ``timestep`` fs; ``temperature`` K (thermostat target, and the
    Maxwell–Boltzmann start unless ``initial_temperature`` or ``momenta`` say otherwise; pass
    ``initial_temperature=0`` to start at rest); ``pressure`` GPa (npt); ``field`` V/Å (constant vector, callable of
    time in fs, or :class:`mtsim.field.ElectricField`); ``seed`` for velocities and Langevin noise.
    """
    velocity_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    integrator = make_integrator(ensemble, timestep, temperature, pressure, seed=noise_seed, friction=friction,
                                 tdamp=tdamp, pdamp=pdamp, barostat=barostat)
    start_t = temperature if initial_temperature is None else initial_temperature
    sim = Simulation(model, structure, integrator, temperature=start_t, seed=velocity_seed, momenta=momenta,
                     field=field, skin=skin, max_force=max_force)
    sim.run(steps, log=log, trajectory=trajectory, interval=interval, hooks=hooks)
    return sim
