"""The GPAW labeller (mtsim.training.builders.dft): labels against GPAW's own energy, a resumable run, and
energies of two sources on one scale. Small settings (250 eV, coarse k) keep each calculation to seconds."""

import json
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # GPAW's BLAS, loaded with gpaw: threads beside pytest's thrash

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import covalent_radii

from mtsim.training.builders import dft, dft_structures

needs_gpaw = pytest.mark.skipif(
    not os.environ.get("MTSIM_REQUIRE_DFT") and dft._version("gpaw") == "not installed",
    reason="GPAW is not installed (the 'dft' extra; .ci/run installs it and sets MTSIM_REQUIRE_DFT)",
)
needs_baderkit = pytest.mark.skipif(
    not os.environ.get("MTSIM_REQUIRE_DFT") and dft._version("baderkit") == "not installed",
    reason="baderkit is not installed (the 'dft' extra)",
)
FAST = dft.DFTSettings(ecut=250.0, kpoint_density=1.2, energy_tol=1e-7, density_tol=1e-7)


def nacl(shift=(0.05, -0.03, 0.02), shear=0.0):
    atoms = bulk("NaCl", "rocksalt", a=5.6)
    atoms.set_cell(atoms.cell[:] @ [[1, 0, 0], [0, 1, shear], [0, shear, 1]], scale_atoms=True)
    atoms.positions[0] += shift
    return atoms


def gpaw_energy(atoms, settings=FAST):
    work = atoms.copy()
    work.calc = dft.make_calculator(work, settings)
    return work.get_potential_energy(force_consistent=True)


@needs_gpaw
def test_label_is_gpaw_energy_with_its_derivatives_and_bader_charges():
    atoms = nacl()
    frame = dft.label(atoms, FAST)
    results = frame.calc.results
    assert frame.info["label_source"] == dft.SOURCE and frame.info["dft_kpts"] == "4 4 4"
    assert set(results) >= {"energy", "forces", "stress", "magmoms", "charges"}
    # forces: a central difference of the same free energy
    h = 0.01
    for axis in (0, 2):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[0, axis] += h
        minus.positions[0, axis] -= h
        numeric = -(gpaw_energy(plus) - gpaw_energy(minus)) / (2 * h)
        assert abs(results["forces"][0, axis] - numeric) < 2e-3
    np.testing.assert_allclose(results["forces"].sum(axis=0), 0.0, atol=1e-3)
    # stress: ASE's sign, (1/V) dE/d(strain), checked on a shear (a plane-wave basis at fixed cut-off adds an
    # isotropic Pulay term to E(V), none to a shear); a compressed cell has negative (compressive) stress
    no_bader = dft.DFTSettings(**{**FAST.__dict__, "bader": False, "ecut": 400.0})  # 250 eV: 20 % off
    atoms = nacl(shear=0.04)
    stress = dft.label(atoms, no_bader).calc.results["stress"]
    eps = 0.005
    energies = []
    for sign in (1, -1):
        deformation = np.eye(3)
        deformation[1, 2] = deformation[2, 1] = sign * eps
        strained = atoms.copy()
        strained.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
        energies.append(gpaw_energy(strained, no_bader))
    numeric = (energies[0] - energies[1]) / (2 * eps) / atoms.get_volume() / 2
    assert abs(stress[3] - numeric) < 0.03 * abs(numeric) and abs(numeric) > 1e-3
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell[:] * 0.95, scale_atoms=True)
    assert dft.label(squeezed, no_bader).calc.results["stress"][:3].mean() < 0
    # Bader charges of the all-electron density: Na gives up close to one electron, the cell is neutral
    charges = results["charges"]
    assert 0.6 < charges[0] < 1.0 and charges[1] < 0
    assert abs(frame.info["charge_residual"]) < FAST.charge_tol
    np.testing.assert_allclose(results["magmoms"], 0.0)


@needs_gpaw
@needs_baderkit
def test_a_skewed_cell_is_labelled_in_its_reduced_form():
    atoms = nacl(shear=0.02)
    skewed = atoms.copy()
    skewed.set_cell([[1, 0, 0], [1, 1, 0], [2, 1, 1]] @ atoms.cell[:])  # the same lattice, angles of 10-30°
    cell, reduced = dft.calculation_cell(skewed)
    to_reduced = np.linalg.solve(skewed.cell[:].T, cell.T).T  # cell = to_reduced @ skewed.cell
    assert reduced and np.allclose(to_reduced, np.round(to_reduced)) and abs(np.linalg.det(to_reduced)) == 1
    assert np.prod(np.linalg.norm(cell, axis=1)) < 0.5 * np.prod(skewed.cell.lengths())
    assert not dft.calculation_cell(nacl())[1]  # an fcc primitive cell is kept as it is
    labelled = dft.label(skewed, FAST)
    assert labelled.info["dft_cell_reduced"] and np.allclose(labelled.cell[:], skewed.cell[:])
    assert np.allclose(labelled.positions, skewed.positions)
    direct = skewed.copy()
    direct.set_cell(cell)
    assert labelled.info["dft_kpts"] == " ".join(map(str, dft.kpoint_mesh(direct, FAST.kpoint_density)))
    assert labelled.get_potential_energy() == pytest.approx(gpaw_energy(direct), abs=1e-6)
    assert dft.relative_cost(skewed, FAST) == pytest.approx(dft.relative_cost(direct, FAST))  # the run's ETA
    # forces, stress and charges stay with their atoms and axes: as in the given cell, to k-sampling precision
    plain = dft.label(atoms, FAST)
    assert labelled.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=2e-3)
    assert np.allclose(labelled.get_forces(), plain.get_forces(), atol=0.01)
    assert np.allclose(labelled.get_stress(), plain.get_stress(), atol=5e-4)  # 0.08 GPa; σ_yz is 3e-3
    assert np.allclose(labelled.get_charges(), plain.get_charges(), atol=0.02)


@needs_gpaw
def test_pressure_at_the_default_cutoff_is_minus_de_dv():
    """GPAW's analytic stress has no Pulay correction: at the data set's cut-off the pressure of MgO (O needs a high
    one) equals -dE/dV of the same settings within 1 GPa; at 500 eV it is ~20 GPa apart."""
    settings = dft.DFTSettings(kpoint_density=1.2, bader=False)  # the default cut-off
    volumes, energies = [], []
    for a in (4.21, 4.25, 4.29):
        atoms = bulk("MgO", "rocksalt", a=a)
        atoms.calc = dft.make_calculator(atoms, settings)
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy(force_consistent=True))
        if a == 4.25:
            pressure = -atoms.get_stress()[:3].mean()
    minus_de_dv = -(energies[2] - energies[0]) / (volumes[2] - volumes[0])
    assert abs(pressure - minus_de_dv) / units.GPa < 1.0


@pytest.mark.skipif(not os.environ.get("MTSIM_REQUIRE_DFT"), reason="checks CI's install (the README's commands)")
def test_gpaw_is_built_with_fftw():
    from gpaw.fftw import have_fftw

    assert have_fftw(), "GPAW was built without FFTW: see data/gpaw/siteconfig.py"


@needs_gpaw
def test_a_run_records_failures_goes_on_and_resumes(tmp_path):
    good = [nacl(), nacl((0.0, 0.04, 0.0))]
    bad = bulk("Si", "diamond", a=5.43)
    bad.numbers[0] = 118  # oganesson: no PAW setup, GPAW raises
    good[0].info["structure_id"] = "1234567"  # an all-digit id reads back as a number: ids are recomputed
    structures = tmp_path / "in.extxyz"
    ase.io.write(structures, [good[0], bad, good[1]])
    settings = dft.DFTSettings(**{**FAST.__dict__, "bader": False})
    out = tmp_path / "out"
    manifest = dft.run(structures, out, settings, workers=2, quiet=True)
    assert manifest["counts"]["labelled"] == 2 and manifest["counts"]["failed"] == 1
    failures = [json.loads(line) for line in open(out / dft.FAILED)]
    assert len(failures) == 1 and failures[0]["formula"] == "OgSi" and failures[0]["reason"]
    assert manifest["outputs"][dft.LABELLED] and manifest["versions"]["gpaw"] != "not installed"
    first = (out / dft.LABELLED).read_bytes()
    # a rerun labels nothing again; the failure is retried only when asked
    again = dft.run(structures, out, settings, workers=1, quiet=True)
    assert (out / dft.LABELLED).read_bytes() == first and again["counts"] == manifest["counts"]
    # a run killed while writing leaves a partial last frame: the next run cuts it and labels that structure again
    with open(out / dft.LABELLED, "ab") as handle:
        handle.write(first[: len(first) // 3])
    snapshot = dft.snapshot(out, structures, settings)  # while a run appends: only complete frames
    assert snapshot["counts"]["labelled"] == 2 and len(ase.io.read(out / "labelled.extxyz.gz", ":")) == 2
    assert dft.repair_tail(str(out / dft.LABELLED)) == 2
    assert (out / dft.LABELLED).read_bytes() == first
    # a fresh clone holds only the committed snapshot: a run continues from it instead of starting again
    (out / dft.LABELLED).unlink()
    dft.run(structures, out, settings, workers=1, quiet=True)
    assert (out / dft.LABELLED).read_bytes() == first
    # one file, one set of settings: a run with another cut-off is refused before it labels anything
    with pytest.raises(ValueError, match="dft_ecut=250.0, this run has 300.0"):
        dft.run(structures, out, dft.DFTSettings(**{**settings.__dict__, "ecut": 300.0}), quiet=True)


def _workers(pid: int) -> list[int]:
    """The labeller's worker processes among the children of ``pid`` (Linux /proc)."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except FileNotFoundError:
        return []
    return [int(c) for c in children if b"multiprocessing-fork" in open(f"/proc/{c}/cmdline", "rb").read()]


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@needs_gpaw
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_takes_its_workers_with_it(tmp_path, sig):
    """SIGTERM stops a run like Ctrl-C (exit 130, workers terminated at once); after SIGKILL the workers get
    SIGTERM from the kernel (parent-death signal) instead of finishing calculations nobody will write, including a
    worker still starting when the run died (killed here once one calculation has begun)."""
    structures = tmp_path / "in.extxyz"
    ase.io.write(structures, [nacl((0.01 * k, 0.0, 0.0)) for k in range(6)])
    command = [sys.executable, "-m", "mtsim.training.builders.dft", "label", "--data", str(structures)]
    # calculations longer than the deadline below: a worker that missed the run's death would outlive it
    command += ["--out", str(tmp_path / "out"), "--workers", "2", "--ecut", "250", "--kpoint-density", "4.0"]
    process = subprocess.Popen(command + ["--no-bader", "--quiet"])
    deadline = time.monotonic() + 120
    while len(_workers(process.pid)) < 2 or not any((tmp_path / "out" / "logs").glob("*.txt")):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start two calculations"
        time.sleep(0.2)
    workers = _workers(process.pid)
    process.send_signal(sig)
    code = process.wait(timeout=30)
    assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived the run"
        time.sleep(0.2)


def test_kpoint_mesh_follows_the_density_and_skips_open_directions():
    atoms = bulk("Si", "diamond", a=5.43)
    b = 2 * np.pi * np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    assert dft.kpoint_mesh(atoms, 2.0) == tuple(2 * int(np.ceil(x)) for x in b)  # even: 2 ceil(2.0 |b| / 2)
    atoms.pbc = (True, True, False)
    assert dft.kpoint_mesh(atoms, 2.0)[2] == 1
    with pytest.raises(ValueError, match="ecut"):
        dft.DFTSettings(ecut=-1)


def test_coverage_order_takes_one_structure_of_each_new_crystal_first_cheapest_first():
    def frame(key, base=None):
        atoms = bulk("Si")
        atoms.info["structure_id"] = key
        if base is not None:
            atoms.info["base"] = base
        return atoms

    labelled = [frame("done", "A")]
    todo = [frame("a1", "A"), frame("b1", "B"), frame("b2", "B"), frame("c1", "C"), frame("lone")]
    cost = {"a1": 1.0, "b1": 5.0, "b2": 2.0, "c1": 3.0, "lone": 4.0}
    order = [a.info["structure_id"] for a in dft.coverage_order(todo, labelled, cost)]
    # B, C and the structure without a base are new: one each first, by cost; then A's and B's second, by cost
    assert order == ["c1", "lone", "b1", "a1", "b2"]
    with pytest.raises(ValueError, match="order must be"):
        dft.run("unused.extxyz", "unused", order="cheapest")


def test_spin_polarised_only_with_magnetic_elements():
    assert dft.initial_magmoms(bulk("Si")) is None
    moments = dft.initial_magmoms(bulk("FeO", "rocksalt", a=4.3))
    np.testing.assert_array_equal(moments, [dft.INITIAL_MAGMOMS["Fe"], 0.0])


def _labelled(frames, offsets):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy = atoms.get_potential_energy() + sum(offsets[s] for s in atoms.get_chemical_symbols())
        forces = atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def _structures(rng, symbols=("Cu", "Ni", "Al"), count=30):
    frames = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.symbols = [symbols[i] for i in rng.integers(0, len(symbols), len(atoms))]
        atoms.rattle(0.05, seed=k)
        atoms.info["structure_id"] = f"s{k}"
        frames.append(atoms)
    return frames


def test_energy_offsets_put_a_second_source_on_the_first_scale():
    rng = np.random.default_rng(0)
    frames = _structures(rng)
    target = _labelled(frames, {"Cu": -3.1, "Ni": -4.2, "Al": -2.5})
    source = _labelled(frames, {"Cu": 1.0, "Ni": 0.4, "Al": -0.7})
    # the same structures in both: the offsets are exact
    offsets = dft.energy_offsets(source, target)
    assert offsets == pytest.approx({"Cu": 4.1, "Ni": 4.6, "Al": 1.8}, abs=1e-9)
    aligned = dft.align_energies(source, offsets)
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in aligned], [a.get_potential_energy() for a in target], atol=1e-9
    )
    np.testing.assert_array_equal(aligned[3].get_forces(), source[3].get_forces())
    # other structures in each source: separate fits, the offsets within the spread of the EMT energies
    other = _labelled(_structures(np.random.default_rng(1)), {"Cu": 1.0, "Ni": 0.4, "Al": -0.7})
    for atoms in other:
        atoms.info["structure_id"] += "-other"
    unpaired = dft.energy_offsets(other, target)
    assert unpaired == pytest.approx({"Cu": 4.1, "Ni": 4.6, "Al": 1.8}, abs=0.1)
    # an element without an offset: forces stay, the energy label goes
    gold = _labelled(_structures(rng, ("Cu", "Au"), 2), {"Cu": 1.0, "Au": 0.0})
    kept = dft.align_energies(gold, offsets)
    assert all(a.info["energy_unaligned"] and "energy" not in a.calc.results for a in kept)
    assert all("forces" in a.calc.results for a in kept)


def test_offsets_are_fitted_on_the_pairs_near_equilibrium():
    """A teacher that is off under high pressure biases the fit unless those pairs are left out."""
    frames = _structures(np.random.default_rng(0))
    gpaw_scale, other_scale = {"Cu": -3.1, "Ni": -4.2, "Al": -2.5}, {"Cu": 1.0, "Ni": 0.4, "Al": -0.7}
    target, source = _labelled(frames, gpaw_scale), _labelled(frames, other_scale)
    for k, (a, b) in enumerate(zip(target, source)):
        pressure = 300.0 if k % 3 == 0 else 5.0  # GPa; every third structure is compressed
        stress = np.array([-pressure, -pressure, -pressure, 0, 0, 0]) * units.GPa
        a.calc = SinglePointCalculator(a, **a.calc.results, stress=stress)
        if pressure > 50:
            b.calc = SinglePointCalculator(b, **{**b.calc.results, "energy": b.get_potential_energy() + 0.3 * len(b)})
    assert dft.pressure_gpa(target[0]) == pytest.approx(300.0)
    exact = {s: other_scale[s] - gpaw_scale[s] for s in gpaw_scale}
    assert dft.energy_offsets(source, target, max_pressure=50.0) == pytest.approx(exact, abs=1e-9)
    biased = dft.energy_offsets(source, target)
    assert max(abs(biased[s] - exact[s]) for s in exact) > 0.05
    # an element only a compressed pair holds keeps that pair (and takes its error); the others stay exact
    gold = frames[0].copy()
    gold.symbols[0] = "Au"
    gold.info["structure_id"] = "gold"
    scales = {**gpaw_scale, "Au": -3.8}, {**other_scale, "Au": 0.2}
    (a,), (b,) = _labelled([gold], scales[0]), _labelled([gold], scales[1])
    a.calc = SinglePointCalculator(a, **a.calc.results, stress=-300.0 * units.GPa * np.array([1, 1, 1, 0, 0, 0]))
    offsets = dft.energy_offsets(source + [b], target + [a], max_pressure=50.0)
    assert {s: offsets[s] for s in exact} == pytest.approx(exact, abs=1e-9)
    assert offsets["Au"] == pytest.approx(0.2 + 3.8, abs=1e-9)


def test_frames_of_covered_compositions_are_left_out():
    covered = [bulk("NaCl", "rocksalt", a=5.6), bulk("Si", "diamond", a=5.43)]
    frames = [
        bulk("NaCl", "rocksalt", a=5.9, cubic=True),  # Na4Cl4: covered
        bulk("Si", "fcc", a=3.9) * (2, 1, 1),  # Si2 in another lattice: covered
        bulk("NaCl", "zincblende", a=5.9) + bulk("Na", "bcc", a=4.2),  # Na2Cl: not covered
        bulk("Ge", "diamond", a=5.65),
    ]
    assert [dft.reduced_formula(a) for a in dft.uncovered(frames, covered)] == ["ClNa2", "Ge"]


def test_align_command_takes_the_offsets_from_paired_structures(tmp_path):
    """``align --pairs``: offsets from the other source's labels of the GPAW structures, applied to other frames."""
    gpaw_scale, other_scale = {"Cu": -3.1, "Ni": -4.2, "Al": -2.5}, {"Cu": 1.0, "Ni": 0.4, "Al": -0.7}
    structures = _structures(np.random.default_rng(0))
    others = _structures(np.random.default_rng(5))
    for atoms in others:
        atoms.info["structure_id"] += "-other"
    files = {
        "gpaw": _labelled(structures, gpaw_scale),
        "pairs": _labelled(structures, other_scale),
        "other": _labelled(others, other_scale),
    }
    for name, frames in files.items():
        ase.io.write(tmp_path / f"{name}.extxyz", frames)
    arguments = ["align", "--out", str(tmp_path / "aligned.extxyz")]
    for name in files:
        arguments += [f"--{name}", str(tmp_path / f"{name}.extxyz")]
    assert dft.main(arguments) == 0
    aligned = ase.io.read(tmp_path / "aligned.extxyz", ":")
    expected = _labelled(others, gpaw_scale)
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in aligned], [a.get_potential_energy() for a in expected], atol=1e-6
    )
    offsets = json.loads((tmp_path / "aligned.extxyz.offsets.json").read_text())["offsets_eV_per_atom"]
    assert offsets == pytest.approx({s: other_scale[s] - gpaw_scale[s] for s in gpaw_scale}, abs=1e-9)
    # --covered: the other frames of a composition in that file are left out, the offsets stay
    ase.io.write(tmp_path / "covered.extxyz", others[:1])
    left = [a for a in others if dft.reduced_formula(a) != dft.reduced_formula(others[0])]
    assert dft.main(arguments + ["--covered", str(tmp_path / "covered.extxyz")]) == 0
    assert len(ase.io.read(tmp_path / "aligned.extxyz", ":")) == len(left) < len(others)
    record = json.loads((tmp_path / "aligned.extxyz.offsets.json").read_text())
    assert record["covered_frames_left_out"] == len(others) - len(left)
    assert record["offsets_eV_per_atom"] == pytest.approx(offsets, abs=1e-12)


def test_implausible_bader_charges_are_rejected_and_rechecked(tmp_path):
    """Charges outside [-(shell to fill), valence] (baderkit's missed basins: C +6.00 in SiC, Ba -63.75 in
    BaTiO3, seen in the data set) are rejected; realistic ones pass; ``recheck`` applies this to a labelled file."""
    assert dft.implausible_charges([11, 17], [0.86, -0.86]) is None
    assert dft.implausible_charges([12, 8], [1.70, -2.05]) is None  # O may take 2 (+ the slack)
    assert "C1 +6.00 outside [-4, 4]" in dft.implausible_charges([14, 6], [-6.0, 6.0])
    assert "Ba0 -63.75" in dft.implausible_charges([56, 22, 8], [-63.75, 22.0, 41.75])
    assert "O1 -2.30" in dft.implausible_charges([12, 8], [2.30, -2.30])
    frames = []
    for charges in ([0.86, -0.86], [-6.0, 6.0]):
        atoms = nacl() if charges[0] > 0 else bulk("SiC", "zincblende", a=4.36)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)), charges=np.array(charges))
        atoms.info["bader_grid"] = "40 40 40"  # partitioned in memory: no grid to recompute
        frames.append(atoms)
    ase.io.write(tmp_path / dft.LABELLED, frames, format="extxyz")
    assert dft.main(["recheck", "--out", str(tmp_path)]) == 0
    good, bad = ase.io.read(tmp_path / dft.LABELLED, ":")
    np.testing.assert_allclose(good.get_charges(), [0.86, -0.86])
    assert "charges" not in bad.calc.results and bad.get_potential_energy() == -1.0
    assert "implausible" in bad.info["bader_error"]
    np.testing.assert_allclose(bad.info["bader_charges_rejected"], [-6.0, 6.0])
    assert dft.recheck_charges(tmp_path) == {"rejected": 0, "scrambled": 0, "replaced": 0}  # idempotent


@needs_baderkit
def test_bader_partition_of_a_known_density_on_an_uneven_grid():
    """Two Gaussian clouds of 10.2 and 17.8 electrons in an orthorhombic cell on a 40 x 44 x 60 grid: each atom's
    basin holds its own cloud (a partition that reads the grid in the wrong axis order, as baderkit's cube reader
    does for such grids, does not)."""
    atoms = ase.Atoms("NaCl", scaled_positions=[(0.1, 0.2, 0.15), (0.6, 0.65, 0.7)], cell=[4.0, 4.4, 5.2], pbc=True)
    shape = (40, 44, 60)
    fractional = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), axis=-1)
    density = np.zeros(shape)
    for position, electrons in zip(atoms.get_scaled_positions(), (10.2, 17.8)):
        delta = (fractional - position + 0.5) % 1.0 - 0.5  # nearest image
        r2 = np.sum((delta @ atoms.cell.array) ** 2, axis=-1)
        density += electrons * np.exp(-r2 / (2 * 0.45**2)) / (2 * np.pi * 0.45**2) ** 1.5  # e/Å³
    charges = dft.bader_partition(atoms, density)
    np.testing.assert_allclose(charges, [11 - 10.2, 17 - 17.8], atol=0.02)


@needs_gpaw
def test_recheck_sends_charges_from_scrambled_grids_to_be_redone(tmp_path):
    """Frames partitioned before ``bader_grid`` was recorded: on an uneven grid their charges go and the structure
    is listed for relabelling; on an even one they stay. Relabelled charges come back once the energy agrees."""
    cubic, tetragonal = nacl(), nacl()
    tetragonal.set_cell(tetragonal.cell[:] @ np.diag([1.0, 1.0, 1.3]), scale_atoms=True)
    assert len(set(dft.density_grid(cubic, FAST))) == 1 and len(set(dft.density_grid(tetragonal, FAST))) > 1
    for atoms in (cubic, tetragonal):
        atoms.info["structure_id"] = dft.structure_id(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=-7.0, forces=np.zeros((2, 3)), charges=np.array([0.8, -0.8]))
    ase.io.write(tmp_path / dft.LABELLED, [cubic, tetragonal], format="extxyz")
    assert dft.recheck_charges(tmp_path, settings=FAST) == {"rejected": 0, "scrambled": 1, "replaced": 0}
    kept, scrambled = ase.io.read(tmp_path / dft.LABELLED, ":")
    np.testing.assert_allclose(kept.get_charges(), [0.8, -0.8])
    assert "charges" not in scrambled.calc.results and "scrambled" in scrambled.info["bader_error"]
    (redo,) = ase.io.read(tmp_path / f"{dft.REDO}.extxyz", ":")
    assert dft.structure_id(redo) == tetragonal.info["structure_id"] and redo.calc is None

    relabelled = tetragonal.copy()
    relabelled.info = {"bader_grid": "30 30 40", "charge_residual": 0.0}
    relabelled.calc = SinglePointCalculator(relabelled, energy=-7.0005, charges=np.array([0.85, -0.85]))
    ase.io.write(tmp_path / "redone.extxyz", [relabelled], format="extxyz")
    counts = dft.recheck_charges(tmp_path, charges_from=tmp_path / "redone.extxyz", settings=FAST)
    assert counts == {"rejected": 0, "scrambled": 0, "replaced": 1}
    _, fixed = ase.io.read(tmp_path / dft.LABELLED, ":")
    np.testing.assert_allclose(fixed.get_charges(), [0.85, -0.85])
    assert "bader_error" not in fixed.info and fixed.get_potential_energy() == -7.0
    relabelled.calc.results["energy"] = -6.0
    ase.io.write(tmp_path / "redone.extxyz", [relabelled], format="extxyz")
    with pytest.raises(ValueError, match="differs by 500.00 meV/atom"):
        dft.recheck_charges(tmp_path, charges_from=tmp_path / "redone.extxyz", settings=FAST)


def test_split_writes_train_val_test_files_with_absolute_moments(tmp_path):
    frames = _labelled(_structures(np.random.default_rng(2)), {"Cu": -3.1, "Ni": -4.2, "Al": -2.5})
    for k, atoms in enumerate(frames):
        atoms.info["split"] = dft_structures.SPLITS[k % 3]
        atoms.calc.results["magmoms"] = np.linspace(-1.0, 1.0, len(atoms))
    path = tmp_path / "labelled.extxyz.gz"
    ase.io.write(path, frames, format="extxyz")
    assert dft.main(["split", "--labelled", str(path), "--out", str(tmp_path / "splits")]) == 0
    for name in dft_structures.SPLITS:
        written = ase.io.read(tmp_path / "splits" / f"gpaw_{name}.extxyz", ":")
        expected = [a for a in frames if a.info["split"] == name]
        assert [a.info["structure_id"] for a in written] == [a.info["structure_id"] for a in expected]
        for got, want in zip(written, expected):
            np.testing.assert_allclose(got.get_magnetic_moments(), np.abs(want.calc.results["magmoms"]))
            np.testing.assert_allclose(got.get_forces(), want.get_forces(), atol=1e-7)  # extxyz: 8 decimals
            assert got.get_potential_energy() == pytest.approx(want.get_potential_energy(), abs=1e-12)
    frames[0].info["split"] = "holdout"
    with pytest.raises(ValueError, match="'holdout'"):
        dft.training_splits(frames)


def test_structure_set_is_small_split_and_deterministic(tmp_path):
    frames = dft_structures.build(None, seed=3)
    again = dft_structures.build(None, seed=3)
    assert [a.info["structure_id"] for a in frames] == [a.info["structure_id"] for a in again]
    assert max(len(a) for a in frames) <= 16
    assert {a.info["split"] for a in frames} == {"train", "val", "test"}
    categories = {a.info["category"] for a in frames}
    assert categories == {"reference", "sic", "mgo", "batio3", "lah", "limno"}
    reference = [a.info["base"] for a in frames if a.info["category"] == "reference"]
    assert {base: reference.count(base) for base in reference} == dict.fromkeys(dft_structures.LATTICE, 40)
    assert len({a.info["structure_id"] for a in frames}) == len(frames)
    lah10 = next(a for a in frames if a.info["base"] == "LaH10:fcc")
    assert lah10.get_chemical_formula() == "H10La"
    for atoms in frames:  # no two atoms closer than 0.6 of their covalent radii (real cells, compressed or rattled)
        distances = atoms.get_all_distances(mic=True) + np.diag(np.full(len(atoms), np.inf))
        radii = covalent_radii[atoms.numbers]
        assert (distances / (radii[:, None] + radii[None, :])).min() > 0.6, atoms.info["base"]


def test_split_of_is_per_group_stable_and_near_80_10_10():
    groups = [f"crystal-{k}" for k in range(20000)]
    splits = [dft_structures.split_of(g, seed=0) for g in groups]
    fractions = {name: splits.count(name) / len(splits) for name in dft_structures.SPLITS}
    assert fractions == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.015)
    assert splits[:100] == [dft_structures.split_of(g, seed=0) for g in groups[:100]]  # alone, as in the set
    assert splits[:100] != [dft_structures.split_of(g, seed=1) for g in groups[:100]]
    frames = dft_structures.build(None, seed=3)
    assert all(a.info["split"] == dft_structures.split_of(a.info["structure_id"], seed=3) for a in frames)


def test_lah10_has_the_clathrate_distances():
    atoms = dft_structures.lah10(5.1)
    distances = atoms.get_all_distances(mic=True) + np.diag(np.full(len(atoms), np.inf))
    hydrogen = atoms.numbers == 1
    assert len(atoms) == 11 and abs(atoms.get_volume() - 5.1**3 / 4) < 1e-9
    assert 2.05 < distances[~hydrogen][:, hydrogen].min() < 2.2  # La–H
    assert 1.05 < distances[hydrogen][:, hydrogen].min() < 1.2  # H–H, the H32f–H8c bond


@needs_gpaw
def test_mtsim_run_label_task_gives_the_labeller_result():
    from mtsim.workflows.tasks import TASKS, compute_batch

    task = TASKS["label"]
    settings = {"ecut": 250.0, "kpoint_density": 1.2, "bader": False}
    done, failed = compute_batch(task, None, task.options({"settings": settings}), [("a", nacl())]) + compute_batch(
        task, None, task.options({"settings": {"cutoff": 1}}), [("b", nacl())]
    )
    expected = dft.label(nacl(), dft.DFTSettings(**settings)).calc.results
    assert done.status == "done" and done.result.data["energy"] == expected["energy"]
    np.testing.assert_array_equal(done.result.data["forces"], expected["forces"])
    assert failed.status == "failed" and "cutoff" in failed.error
