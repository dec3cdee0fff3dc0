"""First-principles labels from GPAW: PBE, plane waves; energy, forces, stress, magnetic moments and Bader charges.

Needs the ``dft`` extra (``pip install 'mtsim[dft]'``: GPAW and baderkit; GPAW compiles against libxc, FFTW,
OpenBLAS and MPI, see the README). ``gpaw`` and ``baderkit`` are imported only where a calculation runs.

Settings, one rule for every structure (:class:`DFTSettings`, recorded in every labelled frame as ``dft_*`` keys):

- PBE, plane waves with ``ecut`` (eV; 800 by default: GPAW's stress has no Pulay correction, which at 500 eV
  puts the pressure of oxides and nitrides 15-18 GPa off; at 800 eV it is within 0.5 GPa of 1,000 eV);
  Fermi–Dirac occupations of width ``smearing`` (eV) for every structure (metals need it; an insulator's gap is far
  wider, so its energy is unchanged);
- a Monkhorst–Pack k mesh with ``n_i = 2 ceil(kpoint_density * |b_i| / 2)`` points (even, at least 2) along each
  periodic reciprocal vector ``b_i`` (``|b_i|`` in Å⁻¹ with the 2π, ASE's ``kptdensity`` convention), 1 along a
  non-periodic one, in the cell of :func:`calculation_cell` (the given cell, or the Minkowski-reduced one when the
  given basis is skewed);
- SCF converged to ``energy_tol`` (eV per valence electron) and ``density_tol`` (electrons per valence electron)
  within ``max_scf`` iterations; a calculation that does not converge, or raises, is recorded as failed;
- spin-polarised when the structure holds an element of :data:`INITIAL_MAGMOMS` (3d V–Ni), started
  ferromagnetic with those moments (μB); every other structure is spin-paired with moments 0.

Labels (``SinglePointCalculator``, so that ``mtsim.training.data`` reads them):

- ``energy``: the free energy (force-consistent: forces and stress are its derivatives), eV; GPAW's energy
  extrapolated to zero smearing is kept as ``info["energy_zero_smearing"]``;
- ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE's sign: tensile positive);
- ``magmoms``: |m| of GPAW's local moments in the PAW spheres (μB), the magnitude as for the CHGNet labels;
- ``charges``: Bader charges ``Z - N_i`` (e), with ``N_i`` the electrons of atom ``i``'s basin of GPAW's
  all-electron density (``gridrefinement`` 2), partitioned by baderkit. The residual ``sum_i q_i`` is recorded as
  ``info["charge_residual"]``; a frame whose |residual| exceeds ``charge_tol``, whose charges break the bounds of
  :func:`implausible_charges` (a missed basin), or whose partition failed (``info["bader_error"]`` says which),
  keeps every label but the charges.

A run (:func:`run`) labels every structure of an input file in worker processes (one per core by default) and
appends each result as it completes to ``OUT/labelled.extxyz``; failures go to ``OUT/failed.jsonl`` with their
reason. A rerun skips every structure already there (by ``structure_id``), so an interrupted run resumes and nothing
is labelled twice (without ``OUT/labelled.extxyz``, a run starts from the committed ``OUT/labelled.extxyz.gz``);
``retry_failed`` tries the failed ones again. ``OUT/manifest.json`` records the package versions,
settings, counts, CPU time and the sha256 of input and outputs.

The structure set of the project's data set is :func:`structure_set` (command ``structures``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence

import ase
import ase.data
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mtsim.training.builders._io import Progress, structure_id, write_frames, write_manifest
from mtsim.training.builders.dft_structures import SPLITS
from mtsim.training.checkpoint import file_sha256
from mtsim.units import GPA

SOURCE = "GPAW PBE"
"""``info["label_source"]`` of every frame this builder writes."""
INITIAL_MAGMOMS = {"V": 3.0, "Cr": 4.0, "Mn": 5.0, "Fe": 4.0, "Co": 3.0, "Ni": 2.0}
"""μB. Elements that make a structure spin-polarised, with their ferromagnetic starting moments."""
LABELLED, FAILED, MANIFEST = "labelled.extxyz", "failed.jsonl", "manifest.json"


@dataclasses.dataclass(frozen=True)
class DFTSettings:
    """The calculation rule (units: eV, Å⁻¹, e)."""

    xc: str = "PBE"
    ecut: float = 800.0
    kpoint_density: float = 2.0
    smearing: float = 0.1
    energy_tol: float = 1e-5
    density_tol: float = 1e-5
    max_scf: int = 300
    bader: bool = True
    gridrefinement: int = 2
    charge_tol: float = 0.05

    def __post_init__(self):
        for name in ("ecut", "kpoint_density", "smearing", "energy_tol", "density_tol", "charge_tol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"DFTSettings.{name} must be a positive number, got {value!r}")
        if self.max_scf < 1 or self.gridrefinement not in (1, 2, 4):
            raise ValueError("DFTSettings: max_scf must be >= 1 and gridrefinement 1, 2 or 4")


def kpoint_mesh(atoms: ase.Atoms, density: float) -> tuple[int, int, int]:
    """Monkhorst–Pack mesh: ``2 ceil(density * |b_i| / 2)`` points along each periodic direction (|b_i| with the
    2π), 1 along a non-periodic one. Even meshes (no Γ) converge fastest: on Si at 2.0 Å the even 4×4×4 mesh is
    1.3 meV/atom from 8×8×8, the odd 5×5×5 (with Γ) 31 meV/atom."""
    reciprocal = 2 * np.pi * np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    return tuple(2 * int(math.ceil(density * b / 2)) if periodic else 1 for b, periodic in zip(reciprocal, atoms.pbc))


def initial_magmoms(atoms: ase.Atoms) -> np.ndarray | None:
    """Starting moments (μB) for a spin-polarised run, or None for a spin-paired one."""
    symbols = atoms.get_chemical_symbols()
    if not any(s in INITIAL_MAGMOMS for s in symbols):
        return None
    return np.array([INITIAL_MAGMOMS.get(s, 0.0) for s in symbols])


def make_calculator(atoms: ase.Atoms, settings: DFTSettings, txt=None, kpts: Sequence[int] | None = None):
    """A GPAW calculator for ``atoms`` under ``settings`` (``kpts``: a fixed mesh instead of the density rule, for
    energy differences between cells); sets the initial moments on ``atoms``."""
    from gpaw import GPAW, PW, FermiDirac

    magmoms = initial_magmoms(atoms)
    atoms.set_initial_magnetic_moments(magmoms)
    mesh = tuple(kpts) if kpts is not None else kpoint_mesh(atoms, settings.kpoint_density)
    return GPAW(
        mode=PW(settings.ecut),
        xc=settings.xc,
        kpts={"size": mesh},
        occupations=FermiDirac(settings.smearing),
        spinpol=magmoms is not None,
        maxiter=settings.max_scf,
        convergence={"energy": settings.energy_tol, "density": settings.density_tol},
        txt=txt,
    )


def bader_partition(atoms: ase.Atoms, density: np.ndarray) -> np.ndarray:
    """Bader charges Z - N_i (e) of ``density`` (e/Å³ on the periodic grid of ``atoms.cell``, point [0, 0, 0] at
    the origin), partitioned by baderkit.

    The grid goes to baderkit in memory: baderkit 0.10.2 reads a cube file's values in the wrong axis order when the
    three grid dimensions differ, which scrambles the density of every such cell."""
    import logging

    from baderkit import Bader
    from baderkit.toolkit.grid import Grid
    from baderkit.toolkit.structure import Structure

    logging.getLogger().setLevel(logging.WARNING)  # baderkit logs every step at INFO
    structure = Structure(lattice=atoms.cell.array, species=atoms.numbers, frac_coords=atoms.get_scaled_positions())
    grid = Grid(structure=structure, data={"total": density * atoms.get_volume()}, data_type="charge")  # VASP's ρ·V
    electrons = np.asarray(Bader(charge_grid=grid, reference_grid=grid, total_charge_grid=grid).atom_charges)
    return atoms.numbers - electrons.astype(float)


NOBLE_GASES = (0, 2, 10, 18, 36, 54, 86, 118)
"""Atomic numbers of the noble gases (0 for the shell below He)."""
CHARGE_SLACK = 0.1
"""e, tolerance of the bounds of ``implausible_charges``."""


def implausible_charges(numbers: Sequence[int], charges: Sequence[float]) -> str | None:
    """Why a Bader partition cannot be right, or None: an atom gave away more than its valence electrons
    (q > Z - Z_core, Z_core the noble gas below) or took more than fill its shell (q < -(Z_noble above - Z)), by
    more than ``CHARGE_SLACK``. A partition that misses an atom's basin (baderkit does on some cells) breaks
    these bounds while its sum stays zero."""
    problems = []
    for index, (z, q) in enumerate(zip(numbers, charges)):
        below = max(g for g in NOBLE_GASES if g < z)
        above = min(g for g in NOBLE_GASES if g >= z)
        if q > z - below + CHARGE_SLACK or q < -(above - z) - CHARGE_SLACK:
            problems.append(f"{ase.data.chemical_symbols[z]}{index} {q:+.2f} outside [{z - above}, {z - below}]")
    return "implausible Bader charges: " + ", ".join(problems) if problems else None


def check_charges(frame: ase.Atoms, charges: np.ndarray, tolerance: float) -> bool:
    """Whether ``charges`` pass the checks (|sum| within ``tolerance``, ``implausible_charges``); records the
    residual in ``frame.info`` and, for rejected charges, ``bader_charges_rejected`` and the reason."""
    residual = float(np.sum(charges))
    frame.info["charge_residual"] = residual
    problem = f"|sum of charges| {abs(residual):.3g} e above {tolerance:g} e" if abs(residual) > tolerance else None
    problem = problem or implausible_charges(frame.numbers, charges)
    if problem is not None:
        frame.info["bader_charges_rejected"] = " ".join(f"{q:.4f}" for q in charges)
        frame.info["bader_error"] = problem
    return problem is None


def calculation_cell(atoms: ase.Atoms) -> tuple[np.ndarray, bool]:
    """(cell, reduced): the cell GPAW runs ``atoms`` in (Å), the same lattice as given or Minkowski-reduced.

    Reduced when that shrinks the product of the cell vectors' lengths (GPAW's FFT grid) by more than 10 %: a
    skewed basis (phonopy's primitive cells can have angles near 20°) costs many times more, GPAW warns that its
    results may be wrong, and its k-mesh samples worse (data/gpaw/README.md)."""
    from ase.geometry import minkowski_reduce

    cell = atoms.cell[:]
    reduced, _ = minkowski_reduce(cell, pbc=atoms.pbc)
    if np.prod(np.linalg.norm(reduced, axis=1)) < 0.9 * np.prod(np.linalg.norm(cell, axis=1)):
        return reduced, True
    return cell, False


def relative_cost(atoms: ase.Atoms, settings: DFTSettings) -> float:
    """A calculation's cost in arbitrary units, for the ETA: k-points x atoms (bands) x the product of the
    calculation cell's lengths (FFT grid), twice for a spin-polarised run."""
    work, _ = _in_calculation_cell(atoms)
    spins = 2 if initial_magmoms(work) is not None else 1
    grid = np.prod(np.maximum(work.cell.lengths(), 1.0))
    return float(np.prod(kpoint_mesh(work, settings.kpoint_density)) * len(work) * grid * spins)


def coverage_order(todo: Sequence[ase.Atoms], labelled: Iterable[ase.Atoms], cost: dict[str, float]) -> list[ase.Atoms]:
    """``todo`` reordered so that a partly labelled set covers as many crystals as it can: first one structure of
    every ``info["base"]`` that ``labelled`` does not hold yet, then the rest, each part cheapest first (``cost`` by
    ``structure_id``). A structure without a base is a base of its own."""
    covered = {a.info.get("base") for a in labelled} - {None}
    first, rest = [], []
    for atoms in todo:
        base = atoms.info.get("base", atoms.info["structure_id"])
        (rest if base in covered else first).append(atoms)
        covered.add(base)

    def by_cost(atoms: ase.Atoms) -> float:
        return cost[atoms.info["structure_id"]]

    return sorted(first, key=by_cost) + sorted(rest, key=by_cost)


def _in_calculation_cell(atoms: ase.Atoms) -> tuple[ase.Atoms, bool]:
    """(the structure of ``atoms`` alone in its ``calculation_cell``, whether that cell is reduced)."""
    work = _bare(atoms)
    cell, reduced = calculation_cell(work)
    work.set_cell(cell)  # the same lattice: Cartesian positions, forces and stress stay as they are
    work.wrap()
    return work, reduced


def _bare(atoms: ase.Atoms) -> ase.Atoms:
    """The structure of ``atoms`` alone: no calculator, no info."""
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def density_grid(atoms: ase.Atoms, settings: DFTSettings = DFTSettings()) -> tuple[int, int, int]:
    """Grid points of the all-electron density that GPAW gives ``atoms`` under ``settings`` (no SCF is run)."""
    work = _bare(atoms)
    calc = make_calculator(work, settings)
    calc.initialize(work)
    return tuple(int(n) * settings.gridrefinement for n in calc.wfs.gd.N_c)


REDO = "charges_redo"
"""Under OUT: the structures whose charges ``recheck_charges`` found scrambled (``.extxyz``) and their new labels."""


def recheck_charges(
    out: str | os.PathLike,
    tolerance: float = DFTSettings.charge_tol,
    charges_from: str | os.PathLike | None = None,
    settings: DFTSettings = DFTSettings(),
) -> dict:
    """Bring the charges of ``OUT/labelled.extxyz`` to the current checks (atomic rewrite; run it while no
    labeller appends to the file). Returns counts.

    - A frame partitioned before ``bader_grid`` was recorded went through baderkit's cube reader, which scrambles
      a grid whose dimensions differ: its grid is recomputed (GPAW set-up, no SCF); if the dimensions differ, its
      charges are removed and the structure written to ``OUT/charges_redo.extxyz`` for relabelling.
    - ``charges_from``: labelled frames of those structures (``label --data OUT/charges_redo.extxyz --out
      OUT/charges_redo``); their charges replace the old ones once their energy agrees within 1 meV/atom.
    - Then every frame's charges are checked again (``check_charges``)."""
    path = os.path.join(os.fspath(out), LABELLED)
    repair_tail(path)
    frames = _read_all(path)
    redone = {structure_id(a): a for a in _read_all(os.fspath(charges_from))} if charges_from else {}
    counts = {"rejected": 0, "scrambled": 0, "replaced": 0}
    redo, progress = [], Progress("dft recheck", len(frames))
    for k, frame in enumerate(frames):
        progress.update(k)
        new = redone.get(structure_id(frame))
        if new is not None:
            gap = abs(new.get_potential_energy() - frame.get_potential_energy()) / len(frame)
            if gap > 1e-3:
                raise ValueError(f"{structure_id(frame)}: the relabelled energy differs by {gap * 1e3:.2f} meV/atom")
            for key in ("bader_grid", "charge_residual", "bader_error", "bader_charges_rejected"):
                frame.info.pop(key, None)
                if key in new.info:
                    frame.info[key] = new.info[key]
            _set_charges(frame, new.calc.results.get("charges"))
            counts["replaced"] += 1
        elif settings.bader and "bader_grid" not in frame.info:
            grid = density_grid(frame, settings)
            frame.info["bader_grid"] = " ".join(map(str, grid))
            if len(set(grid)) > 1:
                frame.info.pop("bader_charges_rejected", None)
                frame.info["bader_error"] = f"scrambled density: baderkit's cube reader on a {grid} grid"
                _set_charges(frame, None)
                bare = _bare(frame)
                bare.info = {k: frame.info[k] for k in ("structure_id", "category", "base", "split") if k in frame.info}
                redo.append(bare)
                counts["scrambled"] += 1
        charges = frame.calc.results.get("charges")
        if charges is not None and not check_charges(frame, charges, tolerance):
            _set_charges(frame, None)
            counts["rejected"] += 1
    write_frames(path, frames)
    if redo:
        redo_path = os.path.join(os.fspath(out), REDO + ".extxyz")
        write_frames(redo_path, {structure_id(a): a for a in _read_all(redo_path) + redo}.values())
    return counts


def _set_charges(frame: ase.Atoms, charges: np.ndarray | None) -> None:
    results = {k: v for k, v in frame.calc.results.items() if k != "charges"}
    if charges is not None:
        results["charges"] = charges
    frame.calc = SinglePointCalculator(frame, **results)


def label(atoms: ase.Atoms, settings: DFTSettings = DFTSettings(), txt=None) -> ase.Atoms:
    """``atoms`` labelled by GPAW under ``settings`` (a new Atoms with a SinglePointCalculator and ``dft_*`` info),
    computed in ``calculation_cell``.

    Raises whatever GPAW raises (e.g. ``KohnShamConvergenceError``)."""
    start = time.perf_counter()
    work, reduced = _in_calculation_cell(atoms)
    calc = make_calculator(work, settings, txt=txt)
    work.calc = calc
    energy = work.get_potential_energy(force_consistent=True)
    forces = work.get_forces()
    stress = work.get_stress(voigt=False) if work.pbc.all() else None
    results = {
        "energy": energy,
        "forces": forces,
        "magmoms": np.abs(calc.get_magnetic_moments()) if calc.get_number_of_spins() == 2 else np.zeros(len(work)),
    }
    if stress is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(stress)
    out = _bare(atoms)
    out.info.update({k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))})
    out.info["structure_id"] = structure_id(atoms)
    out.info["energy_zero_smearing"] = float(calc.get_potential_energy(work, force_consistent=False))
    if settings.bader:
        try:
            density = calc.get_all_electron_density(gridrefinement=settings.gridrefinement)  # e/Å³
            out.info["bader_grid"] = " ".join(map(str, density.shape))
            charges = bader_partition(work, density)
        except Exception as err:  # the partition failed, the DFT labels stand
            out.info["bader_error"] = f"{type(err).__name__}: {err}"
            charges = None
    if settings.bader and charges is not None and check_charges(out, charges, settings.charge_tol):
        results["charges"] = charges
    out.info.update(settings_info(work, settings))
    out.info.update(
        {
            "dft_cell_reduced": reduced,
            "label_source": SOURCE,
            "dft_scf_iterations": int(calc.get_number_of_iterations()),
            "dft_seconds": round(time.perf_counter() - start, 2),
        }
    )
    out.calc = SinglePointCalculator(out, **results)
    return out


def _settings_keys(settings: DFTSettings) -> dict:
    return {f"dft_{k}": v for k, v in dataclasses.asdict(settings).items()}


def settings_info(atoms: ase.Atoms, settings: DFTSettings) -> dict:
    """The ``dft_*`` keys recorded in a labelled frame."""
    info = _settings_keys(settings)
    info["dft_kpts"] = " ".join(map(str, kpoint_mesh(atoms, settings.kpoint_density)))
    info["dft_spin_polarised"] = initial_magmoms(atoms) is not None
    info["dft_code"] = f"GPAW {_version('gpaw')}"
    return info


# ---------------------------------------------------------------------------------------------------------------
# A resumable run over a file of structures


def _init_worker(run_pid: int) -> None:
    """One thread per worker; the worker's standard output (baderkit prints from compiled code) to /dev/null; on
    Linux the worker gets SIGTERM when the run's process ``run_pid`` dies, even by SIGKILL (``PR_SET_PDEATHSIG``),
    and exits at once if it died while this worker was starting."""
    os.environ["OMP_NUM_THREADS"] = "1"
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != run_pid:  # orphaned before the line above: no signal will come
            os._exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Terminate the workers at once: the results of their calculations would be discarded anyway."""
    for process in list((pool._processes or {}).values()):
        process.terminate()


def _task(atoms: ase.Atoms, settings: DFTSettings, log_path: str) -> tuple[str, str]:
    """Worker: ("done", extxyz text of the labelled frame) or ("failed", reason). The GPAW log of a failure stays."""
    try:
        frame = label(atoms, settings, txt=log_path)
    except Exception as err:  # a failed calculation is a result, not a crash of the run
        return "failed", f"{type(err).__name__}: {err}".strip()
    buffer = io.StringIO()
    ase.io.write(buffer, frame, format="extxyz")
    os.remove(log_path)
    return "done", buffer.getvalue()


def complete_frames(path: str) -> tuple[int, int]:
    """(frames, bytes) of the complete extxyz frames at the start of ``path`` (a run may be writing the next)."""
    if not os.path.exists(path):
        return 0, 0
    with open(path, "rb") as handle:
        lines = handle.readlines()
    frames, position, size = 0, 0, 0
    while position < len(lines):
        try:
            count = int(lines[position])
        except ValueError:
            break
        end = position + 2 + count
        if end > len(lines) or not lines[end - 1].endswith(b"\n"):
            break
        frames, size, position = frames + 1, size + sum(len(x) for x in lines[position:end]), end
    return frames, size


def repair_tail(path: str) -> int:
    """Cut a partly written last frame off an extxyz file (a run killed mid-write); return the frames kept."""
    frames, size = complete_frames(path)
    if os.path.exists(path) and os.path.getsize(path) > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)
        print(f"[dft] {path}: cut a partly written frame after frame {frames}", file=sys.stderr, flush=True)
    return frames


def snapshot(out: str | os.PathLike, structures: str | os.PathLike, settings: DFTSettings = DFTSettings()) -> dict:
    """Write ``OUT/labelled.extxyz.gz`` (the complete frames so far, deterministic gzip: no name, no time) and the
    manifest, while a run may still be appending; return the manifest."""
    import gzip

    path = os.path.join(os.fspath(out), LABELLED)
    _, size = complete_frames(path)
    with open(path, "rb") as handle:
        data = handle.read(size)
    with open(path + ".gz", "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped:
        zipped.write(data)
    return write_run_manifest(structures, os.fspath(out), settings, labelled=path + ".gz")


def read_failures(path: str) -> dict[str, str]:
    """``structure_id`` -> reason of every failed calculation recorded in ``path`` (the last record wins)."""
    failures = {}
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    failures[record["structure_id"]] = record["reason"]
    return failures


def _append(path: str, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def run(
    structures: str | os.PathLike,
    out: str | os.PathLike,
    settings: DFTSettings = DFTSettings(),
    workers: int | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    quiet: bool = False,
    order: str = "file",
) -> dict:
    """Label every structure of ``structures`` (extxyz) into ``out``; resumable. ``order``: ``"file"`` (as given)
    or ``"coverage"`` (:func:`coverage_order`). Returns the manifest."""
    if order not in ("file", "coverage"):
        raise ValueError(f"order must be 'file' or 'coverage', not {order!r}")
    out = os.fspath(out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    frames = ase.io.read(structures, index=":")
    for atoms in frames:  # the content hash again: extxyz reads an all-digit id back as a number
        atoms.info["structure_id"] = structure_id(atoms)
    labelled_path, failed_path = os.path.join(out, LABELLED), os.path.join(out, FAILED)
    if not os.path.exists(labelled_path) and os.path.exists(labelled_path + ".gz"):
        _say(quiet, f"[dft] continuing from the snapshot {labelled_path}.gz")
        _unzip(labelled_path + ".gz", labelled_path)
    repair_tail(labelled_path)
    previous_frames = _read_all(labelled_path)
    _check_settings(previous_frames, settings, labelled_path)
    done = {structure_id(a) for a in previous_frames}
    failed = read_failures(failed_path)
    skip = done if retry_failed else done | set(failed)
    todo = [a for a in frames if a.info["structure_id"] not in skip]
    todo = list({a.info["structure_id"]: a for a in todo}.values())
    cost = {a.info["structure_id"]: relative_cost(a, settings) for a in todo}
    if order == "coverage":
        todo = coverage_order(todo, previous_frames, cost)
    todo = todo[:limit]
    cost = {a.info["structure_id"]: cost[a.info["structure_id"]] for a in todo}
    workers = workers or os.cpu_count() or 1
    counts = {"done": 0, "failed": 0}
    start, seconds = time.perf_counter(), []
    cost_left = sum(cost.values())
    _say(
        quiet,
        f"[dft] {len(frames)} structures: {len(done)} labelled, {len(failed)} failed before; "
        f"{len(todo)} to run on {workers} worker(s)",
    )
    from gpaw.fftw import have_fftw

    if not have_fftw():
        _say(quiet, "[dft] this GPAW was built without FFTW: about 1.5x slower (rebuild: data/gpaw/siteconfig.py)")
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # SIGTERM as Ctrl-C
    try:
        futures = {
            pool.submit(_task, atoms, settings, os.path.join(out, "logs", atoms.info["structure_id"] + ".txt")): atoms
            for atoms in todo
        }
        for future in concurrent.futures.as_completed(futures):
            atoms = futures[future]
            key = atoms.info["structure_id"]
            status, payload = future.result()
            if status == "done":
                _append(labelled_path, payload)
                seconds.append(float(ase.io.read(io.StringIO(payload), format="extxyz").info["dft_seconds"]))
            else:
                _append(
                    failed_path,
                    json.dumps({"structure_id": key, "formula": atoms.get_chemical_formula(), "reason": payload})
                    + "\n",
                )
            counts[status] += 1
            finished = counts["done"] + counts["failed"]
            cost_left -= cost[key]
            elapsed = time.perf_counter() - start
            eta = elapsed * cost_left / (sum(cost.values()) - cost_left)  # the cost of what is left, at today's rate
            _say(
                quiet,
                f"[dft] {status} {atoms.get_chemical_formula():<14} done {counts['done']} failed "
                f"{counts['failed']} left {len(todo) - finished}  "
                f"{np.mean(seconds) if seconds else float('nan'):.0f} s/structure  "
                f"elapsed {elapsed / 60:.1f} min  ETA {eta / 60:.0f} min",
            )
    except KeyboardInterrupt:
        _say(quiet, "[dft] interrupted: what finished is written; a rerun resumes")
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return write_run_manifest(structures, out, settings)


def _unzip(source: str, target: str) -> None:
    import gzip

    with gzip.open(source, "rb") as zipped, open(target + ".tmp", "wb") as handle:
        shutil.copyfileobj(zipped, handle)
    os.replace(target + ".tmp", target)


def _check_settings(frames: Sequence[ase.Atoms], settings: DFTSettings, path: str) -> None:
    """Refuse to add frames with other settings to a labels file (one file, one set of settings)."""
    wanted = _settings_keys(settings)
    for frame in frames:
        for key, value in wanted.items():
            if frame.info.get(key) != value:
                raise ValueError(
                    f"{path} holds frames labelled with {key}={frame.info.get(key)}, this run has {value}: "
                    "label into another folder, or run with the file's settings"
                )


def _read_all(path: str) -> list[ase.Atoms]:
    return ase.io.read(path, index=":") if os.path.exists(path) and os.path.getsize(path) else []


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def write_run_manifest(structures, out: str, settings: DFTSettings, labelled: str | None = None) -> dict:
    """Write and return ``OUT/manifest.json``: versions, settings, counts, CPU time, sha256 of input and outputs
    (``labelled``: the labels file described, default ``OUT/labelled.extxyz``)."""
    labelled_path = labelled or os.path.join(out, LABELLED)
    labelled = _read_all(labelled_path)
    failures = read_failures(os.path.join(out, FAILED))
    failures = {k: v for k, v in failures.items() if k not in {structure_id(a) for a in labelled}}
    residuals = [abs(a.info["charge_residual"]) for a in labelled if "charge_residual" in a.info]
    manifest = {
        "builder": "mtsim.training.builders.dft",
        "label_source": SOURCE,
        "versions": {p: _version(p) for p in ("gpaw", "gpaw-data", "baderkit", "ase", "numpy", "mtsim")}
        | {"python": platform.python_version()},
        "settings": dataclasses.asdict(settings),
        "input": {"file": os.path.basename(os.fspath(structures)), "sha256": file_sha256(structures)},
        "counts": {
            "labelled": len(labelled),
            "failed": len(failures),
            "atoms": int(sum(len(a) for a in labelled)),
            "with_charges": sum("charges" in (a.calc.results if a.calc else {}) for a in labelled),
            "spin_polarised": sum(bool(a.info.get("dft_spin_polarised")) for a in labelled),
            "cell_reduced": sum(bool(a.info.get("dft_cell_reduced")) for a in labelled),
        },
        "cpu_hours": round(sum(float(a.info.get("dft_seconds", 0.0)) for a in labelled) / 3600, 3),
        "charge_residual_abs": {
            "max": max(residuals, default=None),
            "mean": float(np.mean(residuals)) if residuals else None,
        },
        "failures": failures,
        "outputs": {
            os.path.basename(p): file_sha256(p) for p in (labelled_path, os.path.join(out, FAILED)) if os.path.exists(p)
        },
    }
    write_manifest(os.path.join(out, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Energies of two label sources on one scale


def _elements(frames: Iterable[ase.Atoms]) -> set[str]:
    return {s for a in frames for s in a.get_chemical_symbols()}


def composition_matrix(frames: Sequence[ase.Atoms], elements: Sequence[str]) -> np.ndarray:
    """[frames, elements] atom counts."""
    index = {s: k for k, s in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)))
    for row, atoms in enumerate(frames):
        for symbol in atoms.get_chemical_symbols():
            counts[row, index[symbol]] += 1
    return counts


def fit_element_energies(frames: Sequence[ase.Atoms], energies: Sequence[float]) -> dict[str, float]:
    """Per-element energies μ (eV/atom) minimising sum (E - sum_el n_el μ_el)² (least squares, minimum norm)."""
    elements = sorted(_elements(frames))
    counts = composition_matrix(frames, elements)
    mu, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)
    return dict(zip(elements, mu.tolist()))


def pressure_gpa(atoms: ase.Atoms) -> float | None:
    """Pressure -tr(σ)/3 of a labelled frame (GPa, ASE sign: compression positive); None without a stress label."""
    stress = atoms.calc.results.get("stress") if atoms.calc is not None else None
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=float)
    diagonal = np.diag(stress) if stress.shape == (3, 3) else stress[:3]
    return float(-np.mean(diagonal) / GPA)


def energy_offsets(
    source: Sequence[ase.Atoms], target: Sequence[ase.Atoms], max_pressure: float | None = None
) -> dict[str, float]:
    """Per-element offsets δ (eV/atom) that put ``source`` energies on ``target``'s scale: E_t ≈ E_s - sum n δ.

    Fitted on the structures present in both (same ``structure_id``: δ from the energy differences) when they hold
    every element of ``source``; otherwise δ = μ_source - μ_target of separate least-squares fits (elements absent
    from ``target`` get no offset and are left out of the result). With ``max_pressure`` (GPa) only frames whose
    |pressure| (the target's, for a pair) is at most that enter the fit, except the pairs of an element that no
    other pair holds: a potential far from its training data (CHGNet at hundreds of GPa) differs from DFT by more
    than a scale, and those frames would bias every δ."""

    def near_equilibrium(atoms: ase.Atoms) -> bool:
        pressure = pressure_gpa(atoms)
        return max_pressure is None or pressure is None or abs(pressure) <= max_pressure

    by_id = {a.info["structure_id"]: a for a in target if "structure_id" in a.info}
    pairs = [(a, by_id[a.info["structure_id"]]) for a in source if a.info.get("structure_id") in by_id]
    near = [(a, b) for a, b in pairs if near_equilibrium(b)]
    far = [(a, b) for a, b in pairs if not near_equilibrium(b)]
    missing = _elements(a for a, _ in far) - _elements(a for a, _ in near)
    pairs = near + [(a, b) for a, b in far if missing & set(a.get_chemical_symbols())]
    if pairs and _elements(a for a, _ in pairs) >= _elements(source):
        return fit_element_energies(
            [a for a, _ in pairs], [a.get_potential_energy() - b.get_potential_energy() for a, b in pairs]
        )
    source, target = [a for a in source if near_equilibrium(a)], [a for a in target if near_equilibrium(a)]
    mu_source = fit_element_energies(source, [a.get_potential_energy() for a in source])
    mu_target = fit_element_energies(target, [a.get_potential_energy() for a in target])
    return {s: mu_source[s] - mu_target[s] for s in mu_source if s in mu_target}


def reduced_formula(atoms: ase.Atoms) -> str:
    """Hill formula of the composition divided by its greatest common divisor (Si8 -> Si, Na4Cl4 -> ClNa)."""
    return atoms.symbols.formula.reduce()[0].format("hill")


def uncovered(frames: Iterable[ase.Atoms], covered: Iterable[ase.Atoms]) -> list[ase.Atoms]:
    """The frames whose reduced composition occurs in none of ``covered``: where first-principles labels exist for
    a composition, a second source's labels of it would pull the model back to that source (measured: CHGNet
    replay of Si and NaCl kept their Γ TO 14-15 % below GPAW's; left out, 8-10 %)."""
    compositions = {reduced_formula(a) for a in covered}
    return [a for a in frames if reduced_formula(a) not in compositions]


def align_energies(frames: Iterable[ase.Atoms], offsets: dict[str, float]) -> list[ase.Atoms]:
    """Copies of ``frames`` with E - sum_el n_el δ_el. A frame holding an element without an offset keeps its
    forces, stress and other labels but loses its energy (``info["energy_unaligned"] = True``)."""
    aligned = []
    for atoms in frames:
        results = dict(atoms.calc.results)
        copy = atoms.copy()
        symbols = atoms.get_chemical_symbols()
        if "energy" in results and all(s in offsets for s in symbols):
            results["energy"] = results["energy"] - sum(offsets[s] for s in symbols)
            results.pop("free_energy", None)
        else:
            results.pop("energy", None)
            results.pop("free_energy", None)
            copy.info["energy_unaligned"] = True
        copy.calc = SinglePointCalculator(copy, **results)
        aligned.append(copy)
    return aligned


def training_splits(frames: Iterable[ase.Atoms]) -> dict[str, list[ase.Atoms]]:
    """Labelled frames by their ``info["split"]``, ready for ``mtsim train``: magnetic moments as absolute values
    (the magmoms head predicts |m|, as the CHGNet-labelled data carry it); every other label as labelled."""
    splits = {name: [] for name in SPLITS}
    for atoms in frames:
        name = atoms.info.get("split")
        if name not in splits:
            raise ValueError(f"structure {atoms.info.get('structure_id')} has split {name!r}, not one of {SPLITS}")
        results = dict(atoms.calc.results)
        if "magmoms" in results:
            results["magmoms"] = np.abs(results["magmoms"])
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, **results)
        splits[name].append(copy)
    return splits


# ---------------------------------------------------------------------------------------------------------------
# The project's structure set


def structure_set(
    phonondb: str | os.PathLike,
    dfpt_manifest: str | os.PathLike | None = None,
    seed: int = 0,
    samples_per_crystal: int = 2,
    max_primitive_atoms: int = 10,
    max_atoms: int = 16,
) -> list[ase.Atoms]:
    """The structures of the GPAW data set (see ``data/gpaw/README.md``), case studies first, then the phonondb
    crystals; each with ``info["category"]``, ``["base"]`` and ``["structure_id"]``. Deterministic in ``seed``."""
    from mtsim.training.builders import dft_structures

    return dft_structures.build(phonondb, dfpt_manifest, seed, samples_per_crystal, max_primitive_atoms, max_atoms)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtsim.training.builders.dft", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lab = commands.add_parser("label", help="label an extxyz of structures with GPAW (resumable)")
    lab.add_argument("--data", required=True, help="extxyz of structures")
    lab.add_argument("--out", required=True, help="output folder (labelled.extxyz, failed.jsonl, manifest.json)")
    lab.add_argument("--workers", type=int, default=None, help="parallel calculations (default: one per core)")
    lab.add_argument("--retry-failed", action="store_true", help="run the failed structures again")
    lab.add_argument("--limit", type=int, default=None, help="label at most this many structures in this run")
    lab.add_argument(
        "--order",
        choices=("file", "coverage"),
        default="file",
        help="file: as given; coverage: one structure of every crystal (info base) not yet labelled first, then the "
        "rest, each cheapest first",
    )
    for field in dataclasses.fields(DFTSettings):
        if field.type in ("float", "int"):
            lab.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=float if field.type == "float" else int,
                default=field.default,
                help=f"default {field.default}",
            )
    lab.add_argument("--no-bader", action="store_true", help="skip the Bader charges")
    lab.add_argument("--quiet", action="store_true")
    st = commands.add_parser("structures", help="write the structure set of the project's GPAW data set")
    st.add_argument("--phonondb", required=True, help="the phonondb_bec_eps data (file or folder)")
    st.add_argument("--dfpt-manifest", default=None, help="manifest of the DFPT split: only its train crystals")
    st.add_argument("--out", required=True, help="output extxyz")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--samples-per-crystal", type=int, default=2)
    sn = commands.add_parser("snapshot", help="write labelled.extxyz.gz and manifest.json (while a run goes on)")
    sn.add_argument("--data", required=True, help="the structures the run labels")
    sn.add_argument("--out", required=True, help="the run's output folder")
    rc = commands.add_parser("recheck", help="apply the current Bader charge checks to labelled frames (in place)")
    rc.add_argument("--out", required=True, help="the run's output folder (no labeller may be appending)")
    rc.add_argument("--charges-from", default=None, help=f"labelled frames of OUT/{REDO}.extxyz: take their charges")
    sp = commands.add_parser("split", help="write the labelled frames as train/val/test extxyz files for mtsim train")
    sp.add_argument("--labelled", required=True, help="labelled.extxyz(.gz) of this builder")
    sp.add_argument("--out", required=True, help="folder for gpaw_train.extxyz, gpaw_val.extxyz, gpaw_test.extxyz")
    al = commands.add_parser("align", help="put another source's energies on the GPAW scale")
    al.add_argument("--gpaw", required=True, help="labelled.extxyz of this builder")
    al.add_argument("--other", required=True, help="extxyz labelled by another source (e.g. the CHGNet teacher)")
    al.add_argument(
        "--pairs",
        default=None,
        help="the other source's labels of structures of --gpaw (same structure_id): the offsets come from these",
    )
    al.add_argument(
        "--max-pressure",
        type=float,
        default=50.0,
        help="GPa: fit the offsets on frames with |pressure| up to this only (default 50; the teacher is far off "
        "beyond, e.g. MgO at 100-600 GPa)",
    )
    al.add_argument(
        "--covered",
        default=None,
        help="structures (e.g. data/gpaw/structures.extxyz.gz): leave out the frames of --other whose reduced "
        "composition occurs there",
    )
    al.add_argument("--out", required=True, help="aligned extxyz; the offsets go to OUT.offsets.json")
    args = parser.parse_args(argv)
    if args.command == "label":
        names = [f.name for f in dataclasses.fields(DFTSettings) if f.type in ("float", "int")]
        settings = DFTSettings(bader=not args.no_bader, **{name: getattr(args, name) for name in names})
        try:
            manifest = run(
                args.data, args.out, settings, args.workers, args.retry_failed, args.limit, args.quiet, args.order
            )
        except KeyboardInterrupt:
            return 130
        print(json.dumps(manifest["counts"]))
    elif args.command == "snapshot":
        print(json.dumps(snapshot(args.out, args.data)["counts"]))
    elif args.command == "structures":
        frames = structure_set(args.phonondb, args.dfpt_manifest, args.seed, args.samples_per_crystal)
        write_frames(args.out, frames)
        categories = {}
        for atoms in frames:
            categories[atoms.info["category"]] = categories.get(atoms.info["category"], 0) + 1
        print(json.dumps({"structures": len(frames), "categories": categories}))
    elif args.command == "recheck":
        print(json.dumps(recheck_charges(args.out, charges_from=args.charges_from)))
    elif args.command == "split":
        splits = training_splits(_read_all(args.labelled))
        for name, frames in splits.items():
            write_frames(os.path.join(args.out, f"gpaw_{name}.extxyz"), frames)
        print(json.dumps({name: len(frames) for name, frames in splits.items()}))
    else:
        gpaw, other = _read_all(args.gpaw), _read_all(args.other)
        offsets = energy_offsets(other if args.pairs is None else _read_all(args.pairs), gpaw, args.max_pressure)
        kept = other if args.covered is None else uncovered(other, _read_all(args.covered))
        aligned = align_energies(kept, offsets)
        ase.io.write(args.out, aligned, format="extxyz")
        with open(args.out + ".offsets.json", "w") as handle:
            json.dump(
                {
                    "offsets_eV_per_atom": offsets,
                    "target": SOURCE,
                    "fit_max_pressure_GPa": args.max_pressure,
                    "unaligned_frames": sum(bool(a.info.get("energy_unaligned")) for a in aligned),
                    "covered_frames_left_out": len(other) - len(kept),
                },
                handle,
                indent=1,
            )
        print(
            f"[dft] aligned {len(aligned)} frames onto {SOURCE} ({len(other) - len(kept)} of covered compositions "
            f"left out): {len(offsets)} element offsets",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
