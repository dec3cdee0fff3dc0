"""The MD loop (:class:`Simulation`: a model, a state, an integrator, logging, trajectories, per-step hooks), its
atom-removal event (:class:`RemoveAtoms`, the paper's delithiation protocol) and the one-call front end :func:`run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from mtsim.md.integrators import NPT, make_integrator
from mtsim.md.state import MDState, maxwell_boltzmann, zero_momentum
from mtsim.potential import DEFAULT_SKIN, MAX_FORCE, ModelPotential

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
    ``"min-charge"`` (by the charges output), ``"max-z"`` (highest z: from the top of a slab), or a callable
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
            return int(candidates[np.argmax(state.outputs["charges"][candidates])])
        if self.rule == "min-charge":
            return int(candidates[np.argmin(state.outputs["charges"][candidates])])
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
    from mtsim.checks import md_arguments, non_negative, parent_exists

    md_arguments(ensemble, timestep, steps, temperature, pressure, field)
    if initial_temperature is not None:
        non_negative("initial_temperature", initial_temperature)
    parent_exists("log", log)
    parent_exists("trajectory", trajectory)
    velocity_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    integrator = make_integrator(ensemble, timestep, temperature, pressure, seed=noise_seed, friction=friction,
                                 tdamp=tdamp, pdamp=pdamp, barostat=barostat)
    start_t = temperature if initial_temperature is None else initial_temperature
    sim = Simulation(model, structure, integrator, temperature=start_t, seed=velocity_seed, momenta=momenta,
                     field=field, skin=skin, max_force=max_force)
    sim.run(steps, log=log, trajectory=trajectory, interval=interval, hooks=hooks)
    return sim
