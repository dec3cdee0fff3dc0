"""The MD loop (:class:`Simulation`: a model, a state, an integrator, logging, trajectories, per-step hooks), its
atom-removal event (:class:`RemoveAtoms`, the paper's delithiation protocol) and the one-call front end :func:`run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from mtsim.md.integrators import NPT, make_integrator
from mtsim.md.state import MDState, maxwell_boltzmann, zero_momentum
from mtsim.potential import DEFAULT_SKIN, MAX_FORCE, MDError, ModelPotential

Hook = Callable[["Simulation"], None]


MAX_TEMPERATURE_FACTOR = 10.0
"""The default temperature bound is this factor times the largest of the start temperature, the thermostat target
and :data:`MIN_REFERENCE_TEMPERATURE`."""
MIN_REFERENCE_TEMPERATURE = 300.0
"""K, the smallest temperature the default bound is relative to (runs from rest or at 0 K may heat up)."""
MAX_DRIFT = 1.0
"""eV/atom. A change of the conserved quantity by more than this since the start stops the run: the integration
has broken down (a healthy run drifts by meV/atom)."""


class Simulation:
    """A model, a state, an integrator and the bookkeeping around them.

    ``temperature`` (K): draw Maxwell–Boltzmann momenta with ``seed`` unless ``momenta`` are given.
    ``field``: see :class:`ModelPotential`. After construction the forces of the initial state are known.
    ``restart``: a restart file (:mod:`mtsim.md.restart`) to continue from: state, integrator variables and
    conserved-energy reference come from it (``structure``, ``temperature``, ``seed``, ``momenta`` and ``masses``
    are ignored); the integrator must be of the same ensemble.

    Safety bounds, checked after every step (:class:`MDError` naming step, quantity and the fastest atom):
    ``max_temperature`` K (default :data:`MAX_TEMPERATURE_FACTOR` × max(start temperature, thermostat target,
    :data:`MIN_REFERENCE_TEMPERATURE`)) and ``max_drift`` eV/atom, the largest change of the conserved quantity
    since the start (default :data:`MAX_DRIFT`); ``math.inf`` switches a check off.
    """

    def __init__(
        self,
        model,
        structure,
        integrator,
        *,
        temperature: float | None = None,
        seed=None,
        momenta=None,
        masses=None,
        field=None,
        skin: float = DEFAULT_SKIN,
        max_force: float = MAX_FORCE,
        restart=None,
        max_temperature: float | None = None,
        max_drift: float = MAX_DRIFT,
    ):
        from mtsim.md.restart import RestartError, read_restart

        saved = None
        if restart is not None:
            self.state, saved = read_restart(restart)
            if saved["ensemble"] != integrator.name:
                raise RestartError(f"{restart} continues a {saved['ensemble']} run, not {integrator.name}")
        else:
            self.state = MDState.from_structure(structure, masses=masses, momenta=momenta)
            if momenta is None and temperature:
                self.state.momenta = maxwell_boltzmann(self.state.masses, temperature, seed)
        self.integrator = integrator
        self.potential = ModelPotential(model, skin=skin, field=field, max_force=max_force)
        if self.potential.field is not None and isinstance(integrator, NPT):
            raise ValueError(
                "NPT in an electric field is not supported (the field's stress is not modelled); "
                "use nve, nvt-langevin or nvt-nh"
            )
        self.potential.start_field(self.state)
        if saved is not None:
            self.potential.tracker.dipole = self.state.dipole.copy()
        self.potential.compute(self.state)
        self.integrator.init(self.state)
        self.offset = 0.0  # energy added/removed by events, so that `conserved` stays continuous
        self.start_temperature = self.state.temperature
        self.reference_conserved = self.conserved
        self._resume = None  # what the first run after a restart needs: output sizes, hook states
        if saved is not None:
            self.integrator.set_state(saved["integrator"])
            self.offset = float(saved["offset"])
            self.start_temperature = float(saved["start_temperature"])
            self.reference_conserved = float(saved["reference_conserved"])
            self._resume = saved
        if max_temperature is None:
            reference = max(self.start_temperature, getattr(integrator, "temperature", 0.0), MIN_REFERENCE_TEMPERATURE)
            max_temperature = MAX_TEMPERATURE_FACTOR * reference
        self.max_temperature, self.max_drift = float(max_temperature), float(max_drift)

    @property
    def conserved(self) -> float:
        """The ensemble's conserved quantity (eV), continuous across atom removals."""
        return self.integrator.conserved(self.state) + self.offset

    def step(self) -> MDState:
        self.state.step += 1
        self.integrator.step(self.state, self.potential)
        self.check()
        return self.state

    def check(self) -> None:
        """Raise :class:`MDError` if the temperature is above ``max_temperature`` or the conserved quantity has
        drifted by more than ``max_drift`` eV/atom since the start."""
        state = self.state
        temperature = state.temperature
        drift = (self.conserved - self.reference_conserved) / state.n_atoms
        if temperature <= self.max_temperature and abs(drift) <= self.max_drift:
            return
        speeds = np.linalg.norm(state.momenta, axis=1) / state.masses
        fastest = f"fastest {self.potential._label(state, int(np.argmax(speeds)))}"
        if not abs(drift) <= self.max_drift:
            raise MDError(
                f"step {state.step}: the conserved energy has drifted by {drift:.4g} eV/atom since the "
                f"start (max_drift {self.max_drift:g} eV/atom; T = {temperature:.4g} K, {fastest}); the "
                f"integration has broken down: use a smaller time step ({self.integrator.timestep:g} fs)"
            )
        raise MDError(
            f"step {state.step}: the temperature {temperature:.4g} K is above max_temperature "
            f"{self.max_temperature:.4g} K ({fastest}); the dynamics has exploded: use a smaller time "
            f"step ({self.integrator.timestep:g} fs) or raise max_temperature"
        )

    def save_restart(self, path, hooks: Iterable[Hook] = (), log=None, trajectory=None) -> None:
        """Write a restart file (:mod:`mtsim.md.restart`) with the state of the ``hooks`` that have one
        (``get_state``/``set_state``) and the current sizes of the open ``log`` and ``trajectory`` writers."""
        from mtsim.md.restart import write_restart

        def size(writer):
            handle = getattr(writer, "handle", None)
            return handle.tell() if handle is not None else None

        meta = {
            "ensemble": self.integrator.name,
            "integrator": self.integrator.get_state(),
            "offset": self.offset,
            "start_temperature": self.start_temperature,
            "reference_conserved": self.reference_conserved,
            "hooks": [hook.get_state() for hook in hooks if hasattr(hook, "get_state")],
            "log_bytes": size(log),
            "trajectory_bytes": size(trajectory),
        }
        write_restart(path, self.state, meta)

    def run(
        self,
        steps: int,
        *,
        log=None,
        trajectory=None,
        interval: int = 10,
        hooks: Iterable[Hook] = (),
        trajectory_interval: int | None = None,
        overwrite: bool = False,
        restart_file=None,
        restart_interval: int = 0,
    ) -> MDState:
        """Advance ``steps`` steps. ``log``: CSV path or :class:`mtsim.trajectory.CSVLog`; ``trajectory``: extxyz
        path or :class:`mtsim.trajectory.TrajectoryWriter`; both written at the start and every ``interval`` steps
        (``trajectory_interval`` overrides for the trajectory); existing files are replaced only with ``overwrite``
        (else ``FileExistsError``). ``hooks`` are called after every step with the simulation (events, progress
        bars); a hook may remove atoms with :meth:`remove_atoms`. ``restart_file``: written every
        ``restart_interval`` steps (0: only at the end) and at the end.

        The first run of a simulation created from a restart file continues it: log and trajectory paths are cut
        back to their sizes when the restart file was written and appended to, and hooks with ``set_state`` get
        their saved states (in order)."""
        from mtsim.md.restart import RestartError, cut_back
        from mtsim.trajectory import open_log, open_trajectory

        hooks = list(hooks)
        interval = max(1, int(interval))
        traj_interval = interval if trajectory_interval is None else max(1, int(trajectory_interval))
        resume, self._resume = self._resume, None
        if resume is not None:
            stateful = [hook for hook in hooks if hasattr(hook, "set_state")]
            if len(stateful) != len(resume["hooks"]):
                raise RestartError(
                    f"the restart file holds the state of {len(resume['hooks'])} event hook(s), "
                    f"this run has {len(stateful)}"
                )
            for hook, saved in zip(stateful, resume["hooks"]):
                hook.set_state(saved)
            cut_back(log, resume["log_bytes"])
            cut_back(trajectory, resume["trajectory_bytes"])
        append = resume is not None
        with open_log(log, overwrite, append) as logger, open_trajectory(trajectory, overwrite, append) as writer:
            if append:  # the rows and frames of this step were written before the restart file was
                if logger is not None and logger is not log and resume["log_bytes"]:
                    logger.last_step = self.state.step
                if writer is not None and writer is not trajectory and resume["trajectory_bytes"]:
                    writer.last_step = self.state.step
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
                if restart_file is not None and restart_interval and self.state.step % restart_interval == 0:
                    self.save_restart(restart_file, hooks, logger, writer)
            if restart_file is not None:
                self.save_restart(restart_file, hooks, logger, writer)
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

    def __init__(
        self,
        element: str | int,
        every: float,
        rule="random",
        seed=None,
        start: float | None = None,
        limit: int | None = None,
    ):
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

    def get_state(self) -> dict:
        """What a restart file keeps: the random generator, the next removal time (fs) and the removals so far."""
        return {
            "rng": self.rng.bit_generator.state,
            "next_time": self.next_time,
            "removed": [list(event) for event in self.removed],
        }

    def set_state(self, saved: dict) -> None:
        self.rng.bit_generator.state = saved["rng"]
        self.next_time = float(saved["next_time"])
        self.removed = [(float(t), str(symbol), int(index)) for t, symbol, index in saved["removed"]]

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


def run(
    model,
    structure=None,
    ensemble: str = "nve",
    timestep: float = 1.0,
    steps: int = 1000,
    temperature: float = 300.0,
    pressure: float = 0.0,
    *,
    field=None,
    seed=None,
    momenta=None,
    initial_temperature: float | None = None,
    friction: float = 0.01,
    tdamp: float = 100.0,
    pdamp: float = 1000.0,
    barostat: str = "isotropic",
    log=None,
    trajectory=None,
    interval: int = 10,
    hooks: Iterable[Hook] = (),
    skin: float = DEFAULT_SKIN,
    max_force: float = MAX_FORCE,
    overwrite: bool = False,
    restart=None,
    restart_file=None,
    restart_interval: int = 0,
    max_temperature: float | None = None,
    max_drift: float = MAX_DRIFT,
) -> Simulation:
    """Run MD in one call and return the :class:`Simulation` (final state in ``.state``).

    ``ensemble``: one of :data:`ENSEMBLES`; ``timestep`` fs; ``temperature`` K (thermostat target, and the
    Maxwell–Boltzmann start unless ``initial_temperature`` or ``momenta`` say otherwise; pass
    ``initial_temperature=0`` to start at rest); ``pressure`` GPa (npt); ``field`` V/Å (constant vector, callable of
    time in fs, or :class:`mtsim.field.ElectricField`); ``seed`` for velocities and Langevin noise.
    ``log``/``trajectory`` paths are replaced only with ``overwrite``. ``restart_file`` is written every
    ``restart_interval`` steps and at the end; ``restart``: a restart file to continue from (``structure`` is then
    not needed; log and trajectory are appended to). ``max_temperature`` K and ``max_drift`` eV/atom: see
    :class:`Simulation`.
    """
    from mtsim.checks import md_arguments, non_negative, output_file, positive

    md_arguments(ensemble, timestep, steps, temperature, pressure, field)
    if initial_temperature is not None:
        non_negative("initial_temperature", initial_temperature)
    if max_temperature is not None:
        positive("max_temperature", max_temperature)
    if max_drift != math.inf:
        positive("max_drift", max_drift)
    if structure is None and restart is None:
        raise ValueError("structure is needed unless the run continues from a restart file (restart=)")
    output_file("log", log, overwrite or restart is not None)
    output_file("trajectory", trajectory, overwrite or restart is not None)
    output_file("restart_file", restart_file, True)
    velocity_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    integrator = make_integrator(
        ensemble,
        timestep,
        temperature,
        pressure,
        seed=noise_seed,
        friction=friction,
        tdamp=tdamp,
        pdamp=pdamp,
        barostat=barostat,
    )
    start_t = temperature if initial_temperature is None else initial_temperature
    sim = Simulation(
        model,
        structure,
        integrator,
        temperature=start_t,
        seed=velocity_seed,
        momenta=momenta,
        field=field,
        skin=skin,
        max_force=max_force,
        restart=restart,
        max_temperature=max_temperature,
        max_drift=max_drift,
    )
    sim.run(
        steps,
        log=log,
        trajectory=trajectory,
        interval=interval,
        hooks=hooks,
        overwrite=overwrite,
        restart_file=restart_file,
        restart_interval=restart_interval,
    )
    return sim
