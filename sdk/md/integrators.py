"""MD integrators, one class per ensemble, each with ``step(state, potential)`` on an :class:`mtsim.md.MDState`
and a :class:`mtsim.potential.ModelPotential`; times in fs, temperatures in K, pressures in GPa.

- :class:`NVE` — velocity Verlet; conserved: K + U.
- :class:`Langevin` — BAOAB (Leimkuhler–Matthews); conserved: K + U minus the heat given to the bath.
- :class:`NoseHooverChain` — NVT with a Nosé–Hoover chain (Martyna, Klein, Tuckerman 1992), Suzuki–Yoshida
  4th-order thermostat sub-steps; conserved: K + U + chain energy.
- :class:`NPT` — Martyna–Tobias–Klein barostat with Nosé–Hoover chains on particles and cell
  (Tuckerman et al., J. Phys. A 39, 5629 (2006)); ``mode="isotropic"`` or ``"full"`` (symmetric cell
  momentum, no rotations); conserved: K + U + PV + cell kinetic energy + both chains.

In an electric field E(t) (:mod:`mtsim.field`) every conserved quantity also contains the electric enthalpy
term −E·D plus ∫ D·dE (zero at constant field, ``MDState.electric_enthalpy``), so it stays conserved for any E(t).
"""

from __future__ import annotations

import math

import numpy as np

from mtsim.md.state import MDState
from mtsim.potential import ModelPotential
from mtsim.units import FS, GPA, KB

ENSEMBLES = ("nve", "nvt-langevin", "nvt-nh", "npt")

# 4th-order Suzuki–Yoshida weights for the thermostat sub-steps
SUZUKI_YOSHIDA = (1 / (2 - 2 ** (1 / 3)), -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))


def exprel(x):
    """(exp(x) − 1)/x, 1 at x = 0 (accurate for small x)."""
    x = np.asarray(x, dtype=float)
    safe = np.where(x == 0, 1.0, x)
    return np.where(x == 0, 1.0, np.expm1(safe) / safe)


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

    def get_state(self) -> dict:
        """The integrator's own dynamic variables (thermostat, barostat, noise generator) as plain Python values
        (JSON-able, floats exact), for a restart file."""
        return {}

    def set_state(self, saved: dict) -> None:
        """Restore what :meth:`get_state` returned (after :meth:`init`)."""

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

    def get_state(self):
        return {"heat": self.heat, "rng": self.rng.bit_generator.state}

    def set_state(self, saved):
        self.heat = float(saved["heat"])
        self.rng.bit_generator.state = saved["rng"]

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

    def get_state(self) -> dict:
        return {"xi": self.xi.tolist(), "p_xi": self.p_xi.tolist()}

    def set_state(self, saved: dict) -> None:
        xi, p_xi = np.array(saved["xi"], dtype=float), np.array(saved["p_xi"], dtype=float)
        if xi.shape != self.xi.shape or p_xi.shape != self.p_xi.shape:
            raise ValueError(f"the saved thermostat chain has {xi.size} links, this one {self.length}")
        self.xi, self.p_xi = xi, p_xi

    def energy(self) -> float:
        return float(
            np.sum(0.5 * self.p_xi**2 / self.Q) + self.dof * self.kT * self.xi[0] + self.kT * np.sum(self.xi[1:])
        )

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

    def get_state(self):
        return {"chain": self.chain.get_state()}

    def set_state(self, saved):
        self.chain.set_state(saved["chain"])

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

    def __init__(
        self,
        timestep: float,
        temperature: float,
        pressure: float = 0.0,
        mode: str = "isotropic",
        tdamp: float = 100.0,
        pdamp: float = 1000.0,
        chain: int = 3,
        loops: int = 1,
    ):
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
        self.cell_chain = _Chain(
            1 if self.mode == "isotropic" else 6, self.temperature, self.pdamp, self.chain_length, self.loops
        )
        self.W = (state.dof + 3) / 3 * self.kT * (self.pdamp * FS) ** 2  # barostat mass, eV·t²
        self.p_g = np.zeros((3, 3))  # cell momentum (symmetric)

    def resize(self, state):
        self.chain.set_dof(state.dof)

    def get_state(self):
        return {
            "chain": self.chain.get_state(),
            "cell_chain": self.cell_chain.get_state(),
            "W": self.W,
            "p_g": self.p_g.tolist(),
        }

    def set_state(self, saved):
        self.chain.set_state(saved["chain"])
        self.cell_chain.set_state(saved["cell_chain"])
        self.W, self.p_g = float(saved["W"]), np.array(saved["p_g"], dtype=float).reshape(3, 3)

    def extra_energy(self, state):
        return (
            self.chain.energy()
            + self.cell_chain.energy()
            + float(np.sum(self.p_g**2)) / (2 * self.W)
            + self.p_ext * state.volume
        )

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


def make_integrator(
    ensemble: str,
    timestep: float,
    temperature: float = 300.0,
    pressure: float = 0.0,
    seed=None,
    friction: float = 0.01,
    tdamp: float = 100.0,
    pdamp: float = 1000.0,
    barostat: str = "isotropic",
):
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
