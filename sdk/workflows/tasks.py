"""The task registry of ``mtsim run``: what one structure's computation is, and the built-in tasks.

A task is one function ``compute(model, atoms, **options) -> Result`` (or, with ``batched=True``, a list of atoms in
and a list of results out, so that small structures share model calls) and one :func:`register` call. Functions
here run on the workers and know nothing of Dask or the database; :func:`compute_batch` turns exceptions into
failed outcomes.

Units: eV, Å, GPa, K, fs, THz (as the rest of mtsim).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtsim.units import GPA


@dataclass
class Result:
    """One structure's result: ``summary`` (scalars: str, int, float, bool; queryable columns of the database row),
    ``data`` (numpy arrays and numbers, stored in the row's data), ``structure`` (an output structure, e.g. the
    relaxed one, stored as the row's atoms; None keeps the input), ``files`` (an object the task's ``write_files``
    turns into files in the driver; not stored in the database)."""

    summary: dict
    data: dict
    structure: object = None
    files: object = None


@dataclass(frozen=True)
class Task:
    """A registered task: ``compute`` (see the module docstring), ``defaults`` (every option with its default; the
    options are JSON values), ``batched``, ``batch_atoms`` (structures are grouped into one Dask task until it holds
    this many atoms; at least one structure) and ``write_files(folder, files)`` (run by the driver, or None)."""

    name: str
    compute: Callable
    defaults: dict = field(default_factory=dict)
    batched: bool = False
    batch_atoms: int = 1
    write_files: Callable | None = None

    def options(self, given: dict | None) -> dict:
        """The defaults updated with ``given``; an unknown option is a ``ValueError`` naming it."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"task {self.name!r} has no option(s) {unknown}; its options are {sorted(self.defaults)}")
        return {**self.defaults, **given}


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (``mtsim run`` offers every registered name)."""
    TASKS[task.name] = task
    return task


@dataclass
class Outcome:
    """What a worker returns per structure: ``status`` ``"done"`` or ``"failed"``, the ``result`` or the ``error``
    message, and ``seconds`` of wall time (a batched call's time is shared equally)."""

    key: str
    status: str
    result: Result | None = None
    error: str | None = None
    seconds: float = 0.0


def compute_batch(task: Task, model, options: dict, items: list) -> list[Outcome]:
    """Run ``task`` on ``items`` [(key, ase.Atoms)]: a batched task in one call, and one structure at a time if
    that call raises, so that only the structures that raise are failed."""
    if task.batched and len(items) > 1:
        start = time.perf_counter()
        try:
            results = task.compute(model, [atoms for _, atoms in items], **options)
        except Exception:  # noqa: BLE001 - find the structure that raises below
            pass
        else:
            seconds = (time.perf_counter() - start) / len(items)
            return [Outcome(key, "done", result, seconds=seconds) for (key, _), result in zip(items, results)]
    outcomes = []
    for key, atoms in items:
        start = time.perf_counter()
        try:
            result = (
                task.compute(model, [atoms], **options)[0] if task.batched else task.compute(model, atoms, **options)
            )
        except Exception as err:  # noqa: BLE001 - any error of one structure is recorded, the run goes on
            outcomes.append(
                Outcome(key, "failed", error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - start)
            )
        else:
            outcomes.append(Outcome(key, "done", result, seconds=time.perf_counter() - start))
    return outcomes


# ============================================================================================ predict
def predict(model, structures, allow_overlap: bool = False) -> list[Result]:
    """Every head of each structure in one ``Model.predict`` call (batched by the model within its budgets)."""
    results = []
    for atoms, p in zip(structures, model.predict(list(structures), allow_overlap=allow_overlap)):
        summary = {"energy_per_atom": p.energy / len(atoms), "max_force": float(np.linalg.norm(p.forces, axis=1).max())}
        if atoms.cell.rank == 3 and atoms.pbc.all():
            summary["pressure"] = float(-np.trace(p.stress) / 3 / GPA)
        results.append(Result(summary, p.as_dict()))
    return results


register(Task("predict", predict, {"allow_overlap": False}, batched=True, batch_atoms=256))


# ============================================================================================== relax
def relax(model, atoms, fmax: float = 0.02, cell: bool = True, pressure: float = 0.0, max_steps: int = 500) -> Result:
    """FIRE relaxation (``mtsim.relax.relax``) of positions, and of the cell at ``pressure`` GPa when ``cell``."""
    from mtsim.relax import relax as fire

    r = fire(model, atoms, fmax=fmax, cell=cell, pressure=pressure, max_steps=max_steps)
    n = len(r.structure)
    summary = {
        "energy_per_atom": r.energy / n,
        "converged": r.converged,
        "steps": r.steps,
        "volume_per_atom": r.structure.volume / n,
        "final_fmax": r.fmax,
    }
    data = {**r.prediction.as_dict(), "enthalpy": r.enthalpy, "energies": np.array([h["energy"] for h in r.history])}
    return Result(summary, data, structure=r.structure)


register(Task("relax", relax, {"fmax": 0.02, "cell": True, "pressure": 0.0, "max_steps": 500}))


# ============================================================================================ phonon
@dataclass
class PhononFiles:
    """What the driver writes per structure: band structure, DOS, Z*/eps (None without the NAC)."""

    bands: object
    dos: object
    unitcell: object
    masses: np.ndarray
    born: np.ndarray | None
    dielectric: np.ndarray | None
    independent_atoms: np.ndarray


def phonon(
    model,
    atoms,
    supercell=None,
    mesh=(20, 20, 20),
    nac: bool | str = "auto",
    nac_method: str = "gonze",
    relax: bool = True,
    fmax: float = 0.02,
    pressure: float = 0.0,
    amplitude: float = 0.01,
    q_direction=(1.0, 0.0, 0.0),
    npoints: int = 51,
    tmax: float = 1000.0,
    tstep: float = 10.0,
    metallic: bool = False,
    allow_small_supercell: bool = False,
) -> Result:
    """Harmonic phonons as ``mtsim phonon``: relax (positions and cell at ``pressure`` GPa) unless told not to,
    force constants on ``supercell`` (None: every width >= 10 Å and 2 x cutoff; a smaller one is refused unless
    ``allow_small_supercell``), NAC from the model's own Z* and eps_inf as ``nac`` (True/False/"auto", with
    ``metallic``: ``mtsim.phonon.choose_nac``) says (TO/LO at Gamma along ``q_direction``), band structure, DOS
    and thermal properties on ``mesh``."""
    from mtsim.phonon import Phonons, default_supercell, imaginary_summary, relax_structure
    from mtsim.structure import as_structure

    if relax:
        unitcell, _ = relax_structure(model, atoms, fmax=fmax, cell=True, pressure=pressure)
    else:
        unitcell = as_structure(atoms)
    size = tuple(supercell) if supercell else default_supercell(unitcell.cell, model.cutoff)
    ph = Phonons(unitcell, size)
    ph.calculate_force_constants(model, amplitude, allow_small_supercell=allow_small_supercell)
    choice = ph.nac_from_model(model, nac_method, nac, metallic)
    born, dielectric = (ph.born, ph.dielectric) if choice.applied else (None, None)
    bands = ph.band_structure(npoints)
    sampled = ph.mesh(mesh)
    thermal = ph.thermal_properties(np.arange(0.0, tmax + tstep / 2, tstep), sampled)
    gamma = ph.gamma_report(q_direction)
    imaginary = imaginary_summary(bands, sampled)
    summary = {
        "space_group": f"{ph.symmetry.symbol} ({ph.symmetry.number})",
        "supercell": "x".join(str(n) for n in size),
        "lo_to_splitting": gamma["lo_to_splitting"],
        "lowest_frequency": imaginary["lowest_mesh_frequency"],
        "imaginary_modes": imaginary["mesh_count"],
        "zero_point_energy": float(thermal.zero_point),
        "nac": choice.applied,
        "nac_reason": choice.reason,
    }
    data = {
        "gamma_frequencies": gamma["frequencies"],
        "gamma_frequencies_nac": gamma["frequencies_nac"],
        "lo_to_shifts": gamma["lo_to_shifts"],
        "temperatures": thermal.temperatures,
        "free_energy": thermal.free_energy,
        "entropy": thermal.entropy,
        "heat_capacity": thermal.heat_capacity,
    }
    if choice.applied:
        data.update(born_charges=born, dielectric=dielectric)
    files = PhononFiles(
        bands, ph.density_of_states(sampled), unitcell, ph.masses, born, dielectric, ph.symmetry.independent_atoms
    )
    return Result(summary, data, structure=unitcell, files=files)


def write_phonon_files(folder, files: PhononFiles) -> None:
    """band.yaml (phonopy's layout), total_dos.dat (THz, states/THz per unit cell) and, with the NAC, BORN."""
    from mtsim.phonon.files import write_band_yaml, write_born

    write_band_yaml(folder / "band.yaml", files.bands, files.unitcell, files.masses)
    np.savetxt(
        folder / "total_dos.dat",
        np.column_stack([files.dos.frequencies, files.dos.dos]),
        header="frequency (THz)   DOS (states/THz per unit cell)",
    )
    if files.born is not None:
        write_born(folder / "BORN", files.born, files.dielectric, files.independent_atoms)


register(
    Task(
        "phonon",
        phonon,
        {
            "supercell": None,
            "mesh": [20, 20, 20],
            "nac": "auto",
            "nac_method": "gonze",
            "relax": True,
            "fmax": 0.02,
            "pressure": 0.0,
            "amplitude": 0.01,
            "q_direction": [1.0, 0.0, 0.0],
            "npoints": 51,
            "tmax": 1000.0,
            "tstep": 10.0,
            "metallic": False,
            "allow_small_supercell": False,
        },
        write_files=write_phonon_files,
    )
)


# ================================================================================================ md
def md(
    model,
    atoms,
    ensemble: str = "nvt-langevin",
    temperature: float = 300.0,
    pressure: float = 0.0,
    timestep: float = 1.0,
    steps: int = 200,
    seed: int = 0,
    interval: int = 10,
) -> Result:
    """A short ``mtsim.md.run`` (``timestep`` fs, ``temperature`` K, ``pressure`` GPa for npt; velocities and noise
    from ``seed``, so reruns repeat bitwise) and its observables every ``interval`` steps."""
    from mtsim.md import run

    if not 0 < interval <= steps:
        raise ValueError(f"md needs 0 < interval <= steps, got interval={interval}, steps={steps}")
    series = {name: [] for name in ("time", "temperature", "potential_energy", "conserved", "pressure", "volume")}
    start = np.array(atoms.positions, dtype=float)

    def record(sim):
        if sim.state.step % interval == 0:
            for name, value in (
                ("time", sim.state.time),
                ("temperature", sim.state.temperature),
                ("potential_energy", sim.state.energy),
                ("conserved", sim.conserved),
                ("pressure", sim.state.pressure),
                ("volume", sim.state.volume),
            ):
                series[name].append(value)

    sim = run(
        model,
        atoms,
        ensemble,
        timestep=timestep,
        steps=steps,
        temperature=temperature,
        pressure=pressure,
        seed=seed,
        hooks=[record],
    )
    data = {name: np.array(values) for name, values in series.items()}
    n = len(atoms)
    summary = {
        "mean_temperature": float(data["temperature"].mean()),
        "mean_potential_energy_per_atom": float(data["potential_energy"].mean() / n),
        "conserved_drift_per_atom": float((data["conserved"][-1] - data["conserved"][0]) / n),
        "msd": float(np.mean(np.sum((sim.state.positions - start) ** 2, axis=1))),
    }
    if sim.state.volume > 0:
        summary["mean_pressure"] = float(np.mean(data["pressure"]))
    return Result(summary, data, structure=sim.state.to_structure())


register(
    Task(
        "md",
        md,
        {
            "ensemble": "nvt-langevin",
            "temperature": 300.0,
            "pressure": 0.0,
            "timestep": 1.0,
            "steps": 200,
            "seed": 0,
            "interval": 10,
        },
    )
)


# ============================================================================================= label
def label(model, atoms, settings: dict | None = None) -> Result:
    """First-principles labels of one structure: GPAW PBE energy, forces, stress, magnetic moments and Bader
    charges (``mtsim.training.builders.dft.label``; needs the ``train`` and ``dft`` extras on the workers).
    ``settings``: fields of ``DFTSettings`` to change (e.g. ``{"ecut": 400}``). The model is not used."""
    from mtsim.training.builders.dft import DFTSettings
    from mtsim.training.builders.dft import label as gpaw_label

    frame = gpaw_label(atoms, DFTSettings(**(settings or {})))
    results = frame.calc.results
    summary = {
        "energy_per_atom": float(results["energy"] / len(frame)),
        "max_force": float(np.linalg.norm(results["forces"], axis=1).max()),
        "scf_iterations": int(frame.info["dft_scf_iterations"]),
        "dft_seconds": float(frame.info["dft_seconds"]),
        "kpts": frame.info["dft_kpts"],
    }
    if "charge_residual" in frame.info:
        summary["charge_residual"] = float(frame.info["charge_residual"])
    return Result(summary, {name: np.asarray(value) for name, value in results.items()})


register(Task("label", label, {"settings": {}}))
