"""MD engines (mtsim.md, mtsim.trajectory, ``mtsim md``) against the analytic PairModel."""

import math

import ase.io
import numpy as np
import pytest
from analytic import PairModel
from ase.build import bulk
from click.testing import CliRunner

from mtsim import md
from mtsim.trajectory import LOG_COLUMNS, read_log
from mtsim.units import GPA, KB

A_EQ = 3.27563
"""Zero-pressure fcc lattice constant of the default PairModel (test_relax checks it against scipy)."""


def crystal(repeat=(2, 2, 4), a=A_EQ, symbols=None):
    atoms = bulk("Cu", "fcc", a=a, cubic=True) * repeat
    if symbols is not None:
        atoms.symbols = symbols
    return atoms


def block_mean(x, blocks=10):
    """Mean and its standard error from block averages."""
    means = np.array([chunk.mean() for chunk in np.array_split(np.asarray(x), blocks)])
    return means.mean(), means.std(ddof=1) / np.sqrt(blocks)


class Recorder:
    """A hook that records observables after every step."""

    def __init__(self):
        self.rows = []

    def __call__(self, sim):
        s = sim.state
        self.rows.append((s.time, s.temperature, s.pressure, sim.conserved, s.volume))

    def column(self, k, skip=0.0):
        data = np.array(self.rows)[:, k]
        return data[int(skip * len(data)) :]


@pytest.fixture(scope="module")
def model():
    return PairModel()


# ============================================================================================ basics
def test_maxwell_boltzmann_zero_momentum_and_seed():
    masses = np.linspace(1.0, 200.0, 50)
    p1 = md.maxwell_boltzmann(masses, 500.0, seed=7)
    p2 = md.maxwell_boltzmann(masses, 500.0, seed=7)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(p1.sum(axis=0), 0.0, atol=1e-12)
    exact = md.maxwell_boltzmann(masses, 500.0, seed=8, exact=True)
    kinetic = 0.5 * np.sum(exact**2 / masses[:, None])
    assert 2 * kinetic / ((3 * 50 - 3) * KB) == pytest.approx(500.0, rel=1e-12)


def test_state_matches_predict_after_rebuilds(model):
    """Heads from the skin neighbour list equal a fresh model.predict, in NVE and with a changing NPT cell."""
    from mtsim.kernels import neighbor_list

    def same_edges_as_fresh_list(sim):
        s = sim.state
        i, j, shifts, _, _ = sim.potential.edges(s)
        fi, fj, fs = neighbor_list(s.positions, s.cell, s.pbc, model.cutoff, self_interaction=True)
        assert sorted(zip(i, j, map(tuple, shifts.astype(int)))) == sorted(zip(fi, fj, map(tuple, fs)))

    for integrator in (md.NVE(2.0), md.NPT(2.0, 800.0, 5.0, mode="full", pdamp=100.0)):
        sim = md.Simulation(model, crystal(), integrator, temperature=1600.0, seed=1, skin=0.1)
        sim.run(100, hooks=[same_edges_as_fresh_list])
        assert 1 < sim.potential.neighbors.n_builds < 100
        fresh = model.predict(sim.state.to_structure())
        assert sim.state.energy == pytest.approx(fresh.energy, abs=1e-10)
        np.testing.assert_allclose(sim.state.forces, fresh.forces, atol=1e-10)
        np.testing.assert_allclose(sim.state.stress, fresh.stress, atol=1e-12)
        wrapped = model.predict(sim.state.to_structure(wrap=True))
        assert wrapped.energy == pytest.approx(fresh.energy, abs=1e-10)


# ============================================================================================ NVE
def test_nve_energy_drift(model):
    """64-atom float64 crystal, 2 ps at 1 fs: conserved-energy drift < 1e-5 eV/atom/ps (with list rebuilds)."""
    atoms = crystal()
    sim = md.Simulation(model, atoms, md.NVE(1.0), temperature=600.0, seed=1, skin=0.15)
    rec = Recorder()
    sim.run(2000, hooks=[rec])
    t_ps = rec.column(0) / 1000
    energy = rec.column(3) / len(atoms)
    drift = np.polyfit(t_ps, energy, 1)[0]
    assert abs(drift) < 1e-5, drift
    assert np.ptp(energy) < 1e-4
    assert sim.potential.neighbors.n_builds > 1
    assert 150 < rec.column(1).mean() < 450  # equipartition: about half the starting temperature


def test_nve_time_reversible(model):
    sim = md.Simulation(model, crystal(), md.NVE(2.0), temperature=600.0, seed=2, skin=0.3)
    start_positions, start_momenta = sim.state.positions.copy(), sim.state.momenta.copy()
    sim.run(300)
    assert np.abs(sim.state.positions - start_positions).max() > 0.05
    sim.state.momenta *= -1
    sim.run(300)
    np.testing.assert_allclose(sim.state.positions, start_positions, atol=1e-8)
    np.testing.assert_allclose(-sim.state.momenta, start_momenta, atol=1e-8)


# ============================================================================================ thermostats
def check_thermostat(model, ensemble, steps, seed, std_band):
    target = 300.0
    integrator = (
        md.Langevin(2.0, target, friction=0.02, seed=seed)
        if ensemble == "nvt-langevin"
        else md.NoseHooverChain(2.0, target, tdamp=50.0)
    )
    sim = md.Simulation(model, crystal(), integrator, temperature=target, seed=seed)
    rec = Recorder()
    sim.run(steps, hooks=[rec])
    temperature = rec.column(1, skip=0.2)
    mean, error = block_mean(temperature)
    assert abs(mean - target) < max(4 * error, 0.005 * target), (mean, error)
    # canonical fluctuations of the kinetic temperature: std = T sqrt(2 / N_f)
    ratio = temperature.std() / (target * np.sqrt(2 / sim.state.dof))
    assert std_band[0] < ratio < std_band[1], ratio
    return sim, rec


@pytest.mark.parametrize("ensemble", ["nvt-langevin", "nvt-nh"])
def test_thermostat_mean_temperature(model, ensemble):
    # over 4 ps a Nose-Hoover chain still shows its slow temperature oscillation: wider band for the spread
    band = (0.75, 1.25) if ensemble == "nvt-langevin" else (0.7, 1.4)
    sim, rec = check_thermostat(model, ensemble, 2000, seed=5, std_band=band)
    conserved = rec.column(3) / sim.state.n_atoms
    assert abs(np.polyfit(rec.column(0) / 1000, conserved, 1)[0]) < 1e-4
    np.testing.assert_allclose(sim.state.momenta.sum(axis=0), 0.0, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["nvt-langevin", "nvt-nh"])
def test_thermostat_canonical_long(model, ensemble):
    """20 ps: the temperature spread converges to the canonical one for both thermostats."""
    check_thermostat(model, ensemble, 10000, seed=1, std_band=(0.88, 1.12))


@pytest.mark.slow
def test_nve_energy_drift_long(model):
    """10 ps at 2 fs."""
    sim = md.Simulation(model, crystal(), md.NVE(2.0), temperature=600.0, seed=3, skin=0.15)
    rec = Recorder()
    sim.run(5000, hooks=[rec])
    drift = np.polyfit(rec.column(0) / 1000, rec.column(3) / sim.state.n_atoms, 1)[0]
    assert abs(drift) < 1e-6, drift


@pytest.mark.parametrize("mode", ["isotropic", "full"])
def test_npt_mean_pressure(model, mode):
    target_p, target_t = 1.0, 300.0
    atoms = crystal()
    if mode == "full":  # start from an anisotropic strain that the barostat has to remove
        atoms.set_cell(atoms.cell * [1.0, 1.0, 1.01], scale_atoms=True)
    integrator = md.NPT(2.0, target_t, target_p, mode=mode, tdamp=50.0, pdamp=200.0)
    sim = md.Simulation(model, atoms, integrator, temperature=target_t, seed=3)
    rec = Recorder()
    tensors = []
    sim.run(2000, hooks=[rec, lambda s: tensors.append(np.diag(s.state.pressure_tensor) / GPA)])
    mean, error = block_mean(rec.column(2, skip=0.2))
    assert abs(mean - target_p) < max(4 * error, 0.02), (mean, error)
    mean_t, error_t = block_mean(rec.column(1, skip=0.2))
    assert abs(mean_t - target_t) < max(4 * error_t, 0.01 * target_t)
    conserved = rec.column(3) / sim.state.n_atoms
    assert abs(np.polyfit(rec.column(0) / 1000, conserved, 1)[0]) < 1e-4
    assert np.ptp(rec.column(4)) > 0  # the volume moves
    if mode == "full":
        diagonal = np.array(tensors)[len(tensors) // 5 :]
        for k in range(3):
            m, e = block_mean(diagonal[:, k])
            assert abs(m - target_p) < max(4 * e, 0.05), (k, m, e)
    else:  # isotropic keeps the cell shape
        cell = sim.state.cell
        np.testing.assert_allclose(cell / cell[0, 0], atoms.cell / atoms.cell[0, 0], atol=1e-12)


def test_npt_needs_periodic_cell(model):
    atoms = crystal((1, 1, 1))
    atoms.pbc = (True, True, False)
    with pytest.raises(ValueError, match="periodic"):
        md.Simulation(model, atoms, md.NPT(1.0, 300.0))


# ============================================================================================ errors
class ExplodingModel(PairModel):
    """The PairModel, but with a NaN (or huge) force on one atom from the ``after``-th evaluation on."""

    def __init__(self, atom, after, value, **kwargs):
        super().__init__(**kwargs)
        self.atom, self.after, self.value = atom, after, value

    def evaluate(self, inputs):
        out = super().evaluate(inputs)
        if self.calls > self.after:
            out["forces"][self.atom] = self.value
        return out


@pytest.mark.parametrize("value, message", [(np.nan, "NaN"), (1e4, "exploding")])
def test_bad_forces_stop_with_step_and_atom(value, message):
    atoms = crystal((1, 1, 1), symbols="CuCuAgCu")
    sim = md.Simulation(ExplodingModel(atom=2, after=6, value=value), atoms, md.NVE(1.0), temperature=100, seed=0)
    with pytest.raises(md.MDError, match=rf"step 6: {message}.*atom 2 \(Ag\)"):
        sim.run(20)


def test_overlapping_atoms_stop_the_run(model):
    atoms = crystal((1, 1, 1))
    momenta = np.zeros((4, 3))
    momenta[1] = -(atoms.positions[1] - atoms.positions[0]) * 2000.0  # fly atom 1 onto atom 0
    sim = md.Simulation(PairModel(depth=0.0), atoms, md.NVE(1.0), momenta=momenta)
    with pytest.raises(md.MDError, match=r"step \d+: atom 0 \(Cu\) and atom 1 \(Cu\) are .* apart"):
        sim.run(200)


# ============================================================================================ events
def test_remove_atoms_keeps_everything_consistent(model):
    atoms = crystal(symbols=["Li", "Cu"] * 32)
    sim = md.Simulation(model, atoms, md.NVE(1.0), temperature=300.0, seed=4, skin=0.5)
    event = md.RemoveAtoms("Li", every=10.0, rule="random", seed=11)
    rec = Recorder()
    sim.run(55, hooks=[event, rec])
    assert [round(t) for t, _, _ in event.removed] == [10, 20, 30, 40, 50]
    assert all(symbol == "Li" for _, symbol, _ in event.removed)
    s = sim.state
    n = 64 - 5
    assert s.n_atoms == n and (s.numbers == 3).sum() == 32 - 5
    for name in ("numbers", "positions", "momenta", "masses", "forces"):
        assert len(getattr(s, name)) == n, name
    for name in ("forces", "magmoms", "charges", "born_charges"):
        assert len(s.heads[name]) == n, name
    from ase.data import atomic_masses

    np.testing.assert_allclose(s.masses, atomic_masses[s.numbers])
    np.testing.assert_allclose(s.momenta.sum(axis=0), 0.0, atol=1e-10)
    assert s.dof == 3 * n - 3
    # the reused neighbour list equals a fresh one, and the heads equal a fresh prediction
    from mtsim.kernels import neighbor_list

    i, j, shifts, _, _ = sim.potential.edges(s)
    fi, fj, fs = neighbor_list(s.positions, s.cell, s.pbc, model.cutoff, self_interaction=True)
    assert sorted(zip(i, j, map(tuple, shifts.astype(int)))) == sorted(zip(fi, fj, map(tuple, fs)))
    prediction = model.predict(s.to_structure())
    np.testing.assert_allclose(s.forces, prediction.forces, atol=1e-10)
    # the conserved quantity stays continuous across removals
    conserved = rec.column(3) / n
    assert np.ptp(conserved) < 1e-4
    # reproducible with the seed; a rule picks deterministically
    again = md.Simulation(model, atoms, md.NVE(1.0), temperature=300.0, seed=4, skin=0.5)
    event2 = md.RemoveAtoms("Li", every=10.0, rule="random", seed=11)
    again.run(55, hooks=[event2])
    assert event2.removed == event.removed
    np.testing.assert_array_equal(again.state.numbers, s.numbers)


def test_remove_atoms_rules(model):
    atoms = crystal((1, 1, 2), symbols=["Li", "O"] * 4)
    charged = PairModel(charges={3: 1.0, 8: -1.0})
    sim = md.Simulation(charged, atoms, md.NoseHooverChain(1.0, 300.0), temperature=300.0, seed=1)
    top = int(np.flatnonzero(atoms.numbers == 3)[np.argmax(atoms.positions[atoms.numbers == 3, 2])])
    event = md.RemoveAtoms("Li", every=1.0, rule="max-z", limit=1)
    sim.run(3, hooks=[event])
    assert [index for _, _, index in event.removed] == [top]
    assert sim.state.n_atoms == 7
    custom = md.RemoveAtoms("O", every=1.0, rule=lambda state, candidates, rng: candidates[-1], limit=2)
    sim.run(5, hooks=[custom])
    assert len(custom.removed) == 2 and sim.state.n_atoms == 5
    assert sim.integrator.chain.dof == 3 * 5 - 3
    with pytest.raises(ValueError, match="rule"):
        md.RemoveAtoms("Li", every=1.0, rule="nonsense")


# ============================================================================================ output
def test_trajectory_and_log_round_trip(model, tmp_path):
    charged = PairModel(charges={29: 1.0, 47: -1.0})
    atoms = crystal((1, 1, 2), symbols=["Cu", "Ag"] * 4)
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.csv"
    sim = md.run(
        charged,
        atoms,
        "nvt-langevin",
        timestep=1.0,
        steps=20,
        temperature=300,
        seed=2,
        field=[0.0, 0.0, 0.02],
        log=log,
        trajectory=traj,
        interval=5,
    )
    frames = ase.io.read(traj, index=":")
    assert len(frames) == 5
    last = frames[-1]
    s = sim.state
    assert last.info["step"] == 20 and last.info["time_fs"] == pytest.approx(20.0)
    np.testing.assert_allclose(last.positions, s.positions, atol=1e-6)
    assert last.get_potential_energy() == pytest.approx(s.heads["energy"])
    np.testing.assert_allclose(last.get_forces(), s.heads["forces"], atol=1e-6)
    np.testing.assert_allclose(last.get_stress(voigt=False), s.heads["stress"], atol=1e-9)
    np.testing.assert_allclose(last.get_magnetic_moments(), s.heads["magmoms"])
    np.testing.assert_allclose(last.get_charges(), s.heads["charges"])
    np.testing.assert_allclose(last.arrays["born_charges"].reshape(-1, 3, 3), s.heads["born_charges"])
    np.testing.assert_allclose(np.reshape(last.info["dielectric"], (3, 3)), s.heads["dielectric"])
    # ASE knows "polarization" as a calculator property, so it lands on the calculator (μC/cm² here)
    np.testing.assert_allclose(last.calc.results["polarization"], s.polarization, rtol=1e-6, atol=1e-9)
    assert abs(s.polarization[2]) > 0
    np.testing.assert_allclose(last.get_momenta(), s.momenta, atol=1e-6)
    data = read_log(log)
    assert tuple(data) == LOG_COLUMNS
    np.testing.assert_array_equal(data["step"], [0, 5, 10, 15, 20])
    assert data["conserved_eV"][-1] == pytest.approx(sim.conserved)
    assert data["pressure_GPa"][-1] == pytest.approx(s.pressure)
    assert data["polarization_z_uC_cm2"][-1] == pytest.approx(s.polarization[2])


# ============================================================================================ CLI
@pytest.fixture
def cli(monkeypatch):
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    monkeypatch.setattr(cli_md, "load_model", lambda path, device, precision: PairModel(charges={11: 1.0, 17: -1.0}))
    return lambda *args: CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("ensemble", ["nve", "nvt-langevin", "nvt-nh", "npt"])
def test_cli_md(cli, tmp_path, ensemble):
    structure = tmp_path / "in.extxyz"
    crystal((1, 1, 2), symbols=["Na", "Cl"] * 4).write(structure)
    log, traj, out = tmp_path / "log.csv", tmp_path / "traj.extxyz", tmp_path / "out.extxyz"
    args = [
        "md",
        structure,
        "--ensemble",
        ensemble,
        "--temperature",
        200,
        "--timestep",
        1,
        "--steps",
        20,
        "--seed",
        3,
        "--log",
        log,
        "--trajectory",
        traj,
        "--interval",
        4,
        "-o",
        out,
    ]
    if ensemble == "npt":
        args += ["--pressure", 2.0, "--pdamp", 100]
    else:
        args += ["--field", 0, 0, 1.0]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "conserved drift" in result.output
    with open(log) as handle:
        assert handle.readline().strip() == ",".join(LOG_COLUMNS)
    data = read_log(log)
    np.testing.assert_array_equal(data["step"], [0, 4, 8, 12, 16, 20])
    assert len(ase.io.read(traj, index=":")) == 6
    final = ase.io.read(out)
    assert len(final) == 8 and "born_charges" in final.arrays
    if ensemble != "npt":
        assert abs(data["polarization_z_uC_cm2"][-1]) > 0


def test_cli_md_delithiation_and_errors(cli, tmp_path):
    structure = tmp_path / "in.extxyz"
    crystal((1, 1, 2), symbols=["Li", "Cl"] * 4).write(structure)
    result = cli(
        "md",
        structure,
        "--ensemble",
        "nvt-nh",
        "--timestep",
        1,
        "--steps",
        25,
        "--seed",
        1,
        "--log",
        tmp_path / "log.csv",
        "--remove-element",
        "Li",
        "--remove-every",
        0.01,
    )
    assert result.exit_code == 0, result.output
    assert "removed 2 Li atom(s); 6 atoms left" in result.output
    bad = CliRunner().invoke(
        __import__("mtsim.cli", fromlist=["main"]).main,
        [
            "md",
            str(structure),
            "--ensemble",
            "npt",
            "--timestep",
            "1",
            "--steps",
            "2",
            "--field",
            "0",
            "0",
            "1",
            "--log",
            str(tmp_path / "x.csv"),
        ],
    )
    assert bad.exit_code != 0 and "not supported" in bad.output


def test_md_arguments_are_checked_before_the_model_loads(monkeypatch, tmp_path):
    """Time step <= 0, negative steps or temperature, a thermostat at 0 K, a non-finite pressure or field, a log in
    a missing folder: a usage error naming the argument, and the model is never loaded; md.run raises before it
    touches the model."""
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    def never(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_md, "load_model", never)
    structure = tmp_path / "in.extxyz"
    crystal((1, 1, 1), symbols=["Na", "Cl"] * 2).write(structure)
    base = ["md", str(structure), "--log", str(tmp_path / "log.csv")]
    cases = [
        (["--ensemble", "nve", "--timestep", "0", "--steps", "5"], "timestep"),
        (["--ensemble", "nve", "--timestep", "-1", "--steps", "5"], "timestep"),
        (["--ensemble", "nve", "--timestep", "1", "--steps", "-5"], "steps"),
        (["--ensemble", "nve", "--timestep", "1", "--steps", "5", "--temperature", "-10"], "temperature"),
        (["--ensemble", "nvt-nh", "--timestep", "1", "--steps", "5", "--temperature", "0"], "temperature"),
        (["--ensemble", "npt", "--timestep", "1", "--steps", "5", "--pressure", "nan"], "pressure"),
        (["--ensemble", "nve", "--timestep", "1", "--steps", "5", "--field", "nan", "0", "0"], "field"),
        (["--ensemble", "nve", "--timestep", "1", "--steps", "5", "--interval", "0"], "--interval"),
        (
            [
                "--ensemble",
                "nve",
                "--timestep",
                "1",
                "--steps",
                "5",
                "--trajectory",
                str(tmp_path / "missing" / "t.extxyz"),
            ],
            "--trajectory",
        ),
    ]
    for args, name in cases:
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == 2 and name in result.output, (args, result.output)
    result = CliRunner().invoke(
        main,
        [
            "md",
            str(structure),
            "--ensemble",
            "nve",
            "--timestep",
            "1",
            "--steps",
            "5",
            "--log",
            str(tmp_path / "missing" / "log.csv"),
        ],
    )
    assert result.exit_code == 2 and "--log" in result.output and "does not exist" in result.output
    atoms = crystal((1, 1, 1), symbols=["Na", "Cl"] * 2)
    for kwargs, name in (
        ({"timestep": 0.0}, "timestep"),
        ({"steps": -1}, "steps"),
        ({"ensemble": "npt", "temperature": 0.0}, "temperature"),
        ({"log": tmp_path / "missing" / "log.csv"}, "log"),
    ):
        with pytest.raises(ValueError, match=name):
            md.run(None, atoms, **kwargs)


# ============================================================================================ restart and safety
RESTART_CASES = {
    "nve": {},
    "nvt-langevin": {"field": [0.0, 0.0, 0.02]},
    "nvt-nh": {"field": [0.01, 0.0, 0.0]},
    "npt": {"pressure": 1.0, "pdamp": 100.0, "barostat": "full"},
}


@pytest.mark.parametrize("ensemble", list(RESTART_CASES))
def test_restart_continues_bitwise(tmp_path, ensemble):
    """2N steps straight = N steps, a restart file, N more steps from it: positions, momenta, cell, conserved
    quantity and the log array-equal; the log of the continued run is appended to (the rows written after the
    restart file are cut back, not repeated)."""
    charged = PairModel(charges={29: 1.0, 47: -1.0})
    atoms = crystal((1, 1, 2), symbols=["Cu", "Ag"] * 4)
    kwargs = dict(
        ensemble=ensemble, timestep=2.0, temperature=400.0, seed=5, interval=3, skin=0.3, **RESTART_CASES[ensemble]
    )
    straight = md.run(charged, atoms, steps=30, log=tmp_path / "straight.csv", **kwargs)
    restart = tmp_path / "md.restart.npz"
    log = tmp_path / "md.csv"

    def interrupt(sim):
        if sim.state.step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed at step 20, after the restart file of step 15
        md.run(
            charged, atoms, steps=30, log=log, restart_file=restart, restart_interval=15, hooks=[interrupt], **kwargs
        )
    assert read_log(log)["step"][-1] == 18
    second = md.run(charged, None, steps=15, log=log, restart=restart, **kwargs)
    assert second.state.step == 30 and second.state.time == straight.state.time
    for name in ("positions", "momenta", "cell", "forces", "dipole"):
        np.testing.assert_array_equal(getattr(second.state, name), getattr(straight.state, name), err_msg=name)
    assert second.conserved == straight.conserved
    expected, got = read_log(tmp_path / "straight.csv"), read_log(log)
    np.testing.assert_array_equal(got["step"], expected["step"])
    for column in LOG_COLUMNS:
        np.testing.assert_array_equal(got[column], expected[column], err_msg=column)


def test_restart_keeps_atom_removal_events(model, tmp_path):
    atoms = crystal(symbols=["Li", "Cu"] * 32)

    def simulation(restart=None):
        sim = md.Simulation(model, atoms, md.Langevin(1.0, 300.0, seed=3), temperature=300.0, seed=4, restart=restart)
        return sim, md.RemoveAtoms("Li", every=7.0, rule="random", seed=11)

    straight, straight_event = simulation()
    straight.run(40, hooks=[straight_event])
    first, event = simulation()
    first.run(20, hooks=[event], restart_file=tmp_path / "r.npz")
    second, second_event = simulation(tmp_path / "r.npz")
    second.run(20, hooks=[second_event])
    assert len(straight_event.removed) == 5 and second_event.removed == straight_event.removed
    np.testing.assert_array_equal(second.state.numbers, straight.state.numbers)
    np.testing.assert_array_equal(second.state.positions, straight.state.positions)
    assert second.conserved == straight.conserved
    with pytest.raises(md.RestartError, match="nvt-langevin run, not nve"):
        md.Simulation(model, atoms, md.NVE(1.0), restart=tmp_path / "r.npz")


def test_outputs_are_not_overwritten(model, tmp_path):
    atoms = crystal((1, 1, 1))
    log, traj = tmp_path / "md.csv", tmp_path / "md.extxyz"
    md.run(model, atoms, steps=2, log=log, trajectory=traj)
    before = log.read_bytes(), traj.read_bytes()
    for kwargs, name in (({"log": log}, "md.csv"), ({"trajectory": traj}, "md.extxyz")):
        with pytest.raises(FileExistsError, match=name):
            md.run(model, atoms, steps=2, **kwargs)
    with pytest.raises(FileExistsError, match="md.csv"):
        md.Simulation(model, atoms, md.NVE(1.0)).run(2, log=log)
    assert (log.read_bytes(), traj.read_bytes()) == before
    md.run(model, atoms, steps=4, log=log, trajectory=traj, overwrite=True, interval=1)
    np.testing.assert_array_equal(read_log(log)["step"], [0, 1, 2, 3, 4])


def test_exploding_time_step_stops_early(model):
    """A 35 fs time step heats the crystal without bound; the run stops within a few steps naming the step, the
    quantity and an atom, with the force check out of the way (as for the model in the issue, whose forces stayed
    below it while the run went to 10^7 K)."""
    atoms = crystal((1, 1, 2))
    sim = md.Simulation(model, atoms, md.NVE(35.0), temperature=300.0, seed=1, max_force=1e12)
    drifted = r"step \d+: the conserved energy has drifted by .* eV/atom .*atom \d+ \(Cu\)"
    with pytest.raises(md.MDError, match=drifted):
        sim.run(10_000)
    assert sim.state.step < 10
    healthy = md.Simulation(model, atoms, md.NVE(1.0), temperature=300.0, seed=1)
    healthy.run(300)
    hot = md.Simulation(model, atoms, md.NVE(1.0), temperature=300.0, seed=1, max_temperature=50.0)
    with pytest.raises(md.MDError, match=r"step 1: the temperature .* K is above max_temperature 50 K"):
        hot.run(5)
    drift = md.Simulation(
        model, atoms, md.NVE(6.0), temperature=300.0, seed=1, max_drift=1e-6, max_temperature=math.inf
    )
    with pytest.raises(md.MDError, match=r"conserved energy has drifted by .* \(max_drift 1e-06 eV/atom"):
        drift.run(50)


def test_cli_md_restart_and_overwrite(cli, tmp_path):
    """``mtsim md --restart`` continues bitwise (without STRUCTURE) and appends to the log; an existing log is an
    error (before the model loads) unless --overwrite."""
    structure = tmp_path / "in.extxyz"
    crystal((1, 1, 2), symbols=["Na", "Cl"] * 4).write(structure)
    base = [
        "md",
        structure,
        "--ensemble",
        "nvt-nh",
        "--temperature",
        300,
        "--timestep",
        2,
        "--seed",
        4,
        "--interval",
        5,
    ]
    assert cli(*base, "--steps", 20, "--log", tmp_path / "straight.csv").exit_code == 0
    log = tmp_path / "run.csv"
    first = cli(*base, "--steps", 10, "--log", log)
    assert first.exit_code == 0 and f"restart file: {tmp_path / 'run.restart.npz'}" in first.output
    again = CliRunner().invoke(
        __import__("mtsim.cli", fromlist=["main"]).main, [str(a) for a in [*base, "--steps", 10, "--log", log]]
    )
    assert again.exit_code == 2 and "run.csv exists" in again.output and "--overwrite" in again.output
    missing = CliRunner().invoke(
        __import__("mtsim.cli", fromlist=["main"]).main, [str(a) for a in ["md", *base[2:], "--steps", 10]]
    )
    assert missing.exit_code == 2 and "STRUCTURE is needed unless --restart" in missing.output
    without_structure = [a for a in base if a != structure]  # the restart file holds the state
    second = cli(*without_structure, "--steps", 10, "--log", log, "--restart", tmp_path / "run.restart.npz")
    assert second.exit_code == 0, second.output
    expected, got = read_log(tmp_path / "straight.csv"), read_log(log)
    np.testing.assert_array_equal(got["step"], [0, 5, 10, 15, 20])
    for column in LOG_COLUMNS:
        np.testing.assert_array_equal(got[column], expected[column], err_msg=column)
    assert cli(*base, "--steps", 5, "--log", log, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(read_log(log)["step"], [0, 5])
