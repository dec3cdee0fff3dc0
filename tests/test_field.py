"""Electric-field MD, polarization and hysteresis (mtsim.field, ``mtsim hysteresis``) on analytic models."""

import csv

import numpy as np
import pytest
from analytic import PairModel
from ase.build import bulk
from click.testing import CliRunner

from mtsim import field, field_md, md
from mtsim.units import E_PER_A2_IN_UC_PER_CM2, MV_PER_CM

A_EQ = 3.27563  # zero-pressure fcc lattice constant of the default PairModel
CHARGES = {11: 1.3, 17: -1.3}
ASYMMETRIC = np.array([[1.0, 0.3, 0.0], [-0.1, 0.9, 0.2], [0.05, 0.0, 1.1]])


def ionic(repeat=(2, 2, 2)):
    """fcc crystal with alternating Na / Cl (001) planes — rigid ions of the PairModel with CHARGES."""
    atoms = bulk("Cu", "fcc", a=A_EQ, cubic=True) * repeat
    atoms.symbols = ["Na" if round(z / (A_EQ / 2)) % 2 == 0 else "Cl" for z in atoms.positions[:, 2]]
    return atoms


class VaryingZ(PairModel):
    """PairModel whose Born charges depend on position and are not symmetric:
    Z_i = q_i (1 + 0.3 sin(2π s_i,x)) · ASYMMETRIC, s the fractional coordinates."""

    def evaluate(self, inputs):
        out = super().evaluate(inputs)
        q = out["charges"]
        s = inputs["positions"] @ np.linalg.inv(inputs["cell"][0])
        factor = q * (1 + 0.3 * np.sin(2 * np.pi * s[:, 0]))
        out["born_charges"] = factor[:, None, None] * ASYMMETRIC
        return out


def evaluate(model, atoms, e=None, positions=None):
    """A state evaluated once by a ModelPotential in field ``e`` (V/Å)."""
    state = md.MDState.from_structure(atoms)
    if positions is not None:
        state.positions = positions
    potential = md.ModelPotential(model, field=e)
    potential.start_field(state)
    potential.compute(state)
    return state, potential


# ============================================================================================ forces
def test_force_shift_equals_q_times_field():
    model = PairModel(charges=CHARGES)
    atoms = ionic()
    atoms.rattle(0.05, seed=1)
    e = np.array([0.01, -0.02, 0.035])
    with_field, _ = evaluate(model, atoms, e)
    without, _ = evaluate(model, atoms)
    q = np.array([CHARGES[z] for z in atoms.numbers])
    np.testing.assert_allclose(with_field.forces - without.forces, q[:, None] * e[None, :], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(with_field.heads["forces"], without.forces)  # the head stays the model's


def test_field_force_index_convention():
    """F_i,b += sum_a Z[i,a,b] E_a: a field along x pulls along the first *row* of Z."""
    model = VaryingZ(charges=CHARGES)
    atoms = ionic((1, 1, 1))
    state, _ = evaluate(model, atoms, [0.02, 0.0, 0.0])
    reference, _ = evaluate(model, atoms)
    z = reference.heads["born_charges"]
    np.testing.assert_allclose(state.forces - reference.forces, 0.02 * z[:, 0, :], atol=1e-15)
    np.testing.assert_allclose(field.field_forces(z, [0, 0.02, 0]), 0.02 * z[:, 1, :])


# ============================================================================================ polarization
def test_uniform_displacement_gives_exact_polarization():
    """P = (1/Ω) Σ Z*_i u for a rigid translation u (charged rigid ions: Σ Z* ≠ 0) and for a sublattice shift."""
    atoms = ionic()
    u = np.array([0.013, -0.021, 0.008])
    for charges in ({11: 1.0, 17: 0.5}, CHARGES):
        model = PairModel(charges=charges)
        state, potential = evaluate(model, atoms)
        moved = atoms.numbers == 11 if charges is CHARGES else np.ones(len(atoms), bool)
        state.positions = state.positions + moved[:, None] * u
        potential.compute(state)
        z = state.heads["born_charges"]
        expected = np.einsum("iab,ib->a", z, moved[:, None] * u) / atoms.get_volume() * E_PER_A2_IN_UC_PER_CM2
        np.testing.assert_allclose(state.polarization, expected, rtol=1e-14, atol=1e-14)
        assert np.abs(expected).max() > 0.1


def test_polarization_is_a_trapezoid_path_integral():
    model = VaryingZ(charges=CHARGES)
    atoms = ionic((1, 1, 1))
    state, potential = evaluate(model, atoms)
    z0 = state.heads["born_charges"]
    u = np.random.default_rng(0).normal(scale=0.05, size=(len(atoms), 3))
    state.positions = state.positions + u
    potential.compute(state)
    z1 = state.heads["born_charges"]
    assert np.abs(z1 - z0).max() > 1e-3
    expected = np.einsum("iab,ib->a", 0.5 * (z0 + z1), u) / atoms.get_volume() * E_PER_A2_IN_UC_PER_CM2
    np.testing.assert_allclose(state.polarization, expected, rtol=1e-13)


# ============================================================================================ dynamics
@pytest.mark.parametrize("model", [PairModel(charges=CHARGES), VaryingZ(charges=CHARGES)], ids=["rigid", "varying"])
def test_electric_enthalpy_conserved_in_nve(model):
    """At constant E, U + K − Ω E·P is conserved, although the field does work on K + U."""
    atoms = ionic()
    e = np.array([0.0, 0.04, 0.1])  # 4 and 10 MV/cm
    sim = md.Simulation(model, atoms, md.NVE(1.0), temperature=300.0, seed=1, field=e)
    n = len(atoms)
    times, enthalpy, plain = [], [], []

    def record(s):
        times.append(s.state.time / 1000)
        enthalpy.append(s.conserved / n)
        plain.append((s.state.energy + s.state.kinetic_energy) / n)

    sim.run(1000, hooks=[record])
    enthalpy = np.array(enthalpy)
    assert abs(np.polyfit(times, enthalpy, 1)[0]) < 1e-6
    assert np.ptp(enthalpy) < 5e-5  # the velocity-Verlet fluctuation of this crystal at 1 fs, field or not
    assert np.ptp(plain) > 20 * np.ptp(enthalpy)  # the field term matters
    s = sim.state
    assert sim.conserved == pytest.approx(s.kinetic_energy + s.energy - e @ s.dipole, abs=1e-12)
    assert s.dipole == pytest.approx(s.polarization * s.volume / E_PER_A2_IN_UC_PER_CM2)


def test_time_dependent_field_conserved_quantity():
    """For E(t) the electric enthalpy plus ∫ D·dE stays conserved (NVE)."""
    atoms = ionic()
    drive = field.cosine([0.0, 0.0, 0.05], period=200.0)
    sim = md.Simulation(PairModel(charges=CHARGES), atoms, md.NVE(1.0), temperature=300.0, seed=2, field=drive)
    values = []
    sim.run(400, hooks=[lambda s: values.append(s.conserved / len(atoms))])
    assert np.ptp(values) < 5e-5
    assert sim.state.field_work != 0.0


def test_cosine_field_gives_polarization_with_the_period():
    period, cycles, dt = 400.0, 3, 2.0
    atoms = ionic()
    drive = field.cosine([0.0, 0.0, 4 * MV_PER_CM], period=period)
    # damped dynamics (Langevin at 0 K) so that the switch-on transient dies out
    sim = md.run(
        PairModel(charges=CHARGES),
        atoms,
        "nvt-langevin",
        timestep=dt,
        steps=0,
        temperature=0.0,
        friction=0.05,
        field=drive,
    )
    t, p, e = [], [], []
    sim.run(
        int(cycles * period / dt),
        hooks=[lambda s: (t.append(s.state.time), p.append(s.state.polarization[2]), e.append(s.state.field[2]))],
    )
    t, p, e = map(np.array, (t, p, e))
    np.testing.assert_allclose(e, 4 * MV_PER_CM * np.cos(2 * np.pi * t / period), atol=1e-15)
    spectrum = np.abs(np.fft.rfft(p - p.mean()))
    assert np.argmax(spectrum) == cycles  # dominant frequency: 1/period
    # after the switch-on transient (first cycle) P follows the slow drive: P ≈ a + b cos(ωt), b > 0, small lag
    w = 2 * np.pi / period
    late = t > period
    basis = np.stack([np.ones_like(t), np.cos(w * t), np.sin(w * t)], axis=1)[late]
    (a, b, c), *_ = np.linalg.lstsq(basis, p[late], rcond=None)
    assert b > 0.2 and abs(c) < 0.2 * b
    assert np.sqrt(np.mean((basis @ [a, b, c] - p[late]) ** 2)) < 0.05 * b
    assert np.mean(p[np.isclose(np.cos(w * t), 1)]) > np.mean(p[np.isclose(np.cos(w * t), -1)])


def test_field_api():
    assert field.as_field(None) is None
    np.testing.assert_array_equal(field.as_field([0, 0, 1])(12.0), [0, 0, 1])
    np.testing.assert_array_equal(field.as_field(lambda t: [t, 0, 0])(3.0), [3, 0, 0])
    wave = field.cosine([0, 2.0, 0], period=100.0, start=50.0)
    np.testing.assert_array_equal(wave(10.0), 0.0)
    np.testing.assert_allclose(wave(50.0), [0, 2, 0])
    np.testing.assert_allclose(wave(100.0), [0, -2, 0], atol=1e-15)
    with pytest.raises(ValueError, match="3-vector"):
        field.as_field(lambda t: [1.0, 2.0])(0.0)
    with pytest.raises(ValueError, match="NPT"):
        md.Simulation(PairModel(), ionic((1, 1, 1)), md.NPT(1.0, 300.0), field=[0, 0, 0.01])


# ============================================================================================ hysteresis
def test_loop_metrics_of_known_loops():
    phase = 2 * np.pi * np.arange(400) / 400
    e = np.cos(phase)  # from +E_max down, then back up
    # square-ish ferroelectric loop: P = tanh(k (E ± Ec)) on the two branches
    ec, ps = 0.4, 30.0
    descending = phase <= np.pi
    p = np.where(descending, ps * np.tanh(8 * (e + ec)), ps * np.tanh(8 * (e - ec)))
    remanent, coercive = field_md.loop_metrics(e, p)
    assert coercive == pytest.approx(ec, abs=2e-3)
    assert remanent == pytest.approx(ps * np.tanh(8 * ec), rel=1e-3)
    # ellipse P = sin(phase + δ)… a linear lossy dielectric: P = cos(phase − δ)
    delta = 0.3
    remanent, coercive = field_md.loop_metrics(e, np.cos(phase - delta))
    assert remanent == pytest.approx(np.sin(delta), rel=1e-3)
    assert coercive == pytest.approx(np.sin(delta), rel=1e-3)
    assert np.isnan(field_md.loop_metrics(e, np.ones_like(e) + 0.1 * e)[1])  # P never changes sign


def test_hysteresis_protocol(tmp_path):
    result = field_md.hysteresis(
        PairModel(charges=CHARGES),
        ionic((1, 1, 2)),
        field_max=0.04,
        period=41.0,
        cycles=2,
        temperature=50.0,
        axis="z",
        timestep=2.0,
        seed=1,
        points=10,
        log=tmp_path / "log.csv",
        interval=5,
    )
    assert result.period == 40.0 and len(result.field) == 10 and len(result.polarization) == 10
    assert len(result.times) == 2 * 20 + 1 and result.times[-1] == pytest.approx(80.0)
    np.testing.assert_allclose(result.field_trace, 0.04 * np.cos(2 * np.pi * result.times / 40.0), atol=1e-15)
    assert result.field[0] == pytest.approx(0.04 * np.mean(np.cos(2 * np.pi * np.arange(2) / 20)))
    assert abs(result.polarization.mean()) < 1e-12
    assert np.isfinite(result.remanent)
    csv_path, png_path = field_md.write_pe_loop(result, tmp_path / "out")
    with open(csv_path) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["field_MV_cm", "polarization_uC_cm2"] and len(rows) == 12
    assert float(rows[1][0]) == pytest.approx(result.field_MV_cm[0]) and rows[1] == rows[-1]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [int(r[0]) for r in list(csv.reader(open(tmp_path / "log.csv")))[1:]]
    assert steps == list(range(0, 41, 5))


def test_cli_hysteresis(monkeypatch, tmp_path):
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    monkeypatch.setattr(cli_md, "load_model", lambda path, device, precision: PairModel(charges=CHARGES))
    structure = tmp_path / "bto.extxyz"
    ionic((1, 1, 2)).write(structure)
    out = tmp_path / "loop"
    result = CliRunner().invoke(
        main,
        [
            "hysteresis",
            str(structure),
            "--field-max",
            "4",
            "--period",
            "0.04",
            "--cycles",
            "2",
            "--temperature",
            "100",
            "--axis",
            "z",
            "--output",
            str(out),
            "--seed",
            "3",
            "--interval",
            "4",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "remanent polarization" in result.output and "coercive field" in result.output
    with open(out / "pe_loop.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["field_MV_cm", "polarization_uC_cm2"]
    fields = np.array([float(r[0]) for r in rows[1:]])
    assert fields.max() == pytest.approx(4.0) and fields.min() == pytest.approx(-4.0)
    assert (out / "pe_loop.png").stat().st_size > 1000
    assert (out / "md_log.csv").is_file()
    # the same output folder again: refused before the model loads (the files were overwritten before), unless
    # --overwrite
    args = [
        "hysteresis",
        str(structure),
        "--field-max",
        "4",
        "--period",
        "0.04",
        "--cycles",
        "1",
        "--output",
        str(out),
        "--seed",
        "3",
    ]
    before = (out / "pe_loop.csv").read_bytes()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "md_log.csv exists" in again.output and "--overwrite" in again.output
    assert (out / "pe_loop.csv").read_bytes() == before
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert (out / "pe_loop.csv").read_bytes() != before


def test_hysteresis_arguments_are_checked_first(monkeypatch, tmp_path):
    """--field-max 0 (P_r = nan before), a zero period, no cycles: a usage error naming the argument before the model
    loads; the API raises before touching the model."""
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    def never(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_md, "load_model", never)
    structure = tmp_path / "bto.extxyz"
    ionic((1, 1, 1)).write(structure)
    for args, name in (
        (["--field-max", "0", "--period", "1"], "field_max"),
        (["--field-max", "4", "--period", "0"], "period"),
        (["--field-max", "4", "--period", "1", "--cycles", "0"], "cycles"),
        (["--field-max", "4", "--period", "1", "--temperature", "0"], "temperature"),
    ):
        result = CliRunner().invoke(main, ["hysteresis", str(structure), *args, "--output", str(tmp_path / "o")])
        assert result.exit_code == 2 and name in result.output, (args, result.output)
    with pytest.raises(ValueError, match="field_max"):
        field_md.hysteresis(None, ionic((1, 1, 1)), field_max=0.0, period=100.0)
