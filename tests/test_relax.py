"""FIRE relaxation (mtsim.relax, ``mtsim relax``) against scipy minimisations of the analytic PairModel."""

import ase.io
import numpy as np
import pytest
from analytic import PairModel
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner
from scipy.optimize import minimize, minimize_scalar

from mtsim import Structure
from mtsim.relax import RelaxResult, relax
from mtsim.units import GPA


@pytest.fixture(scope="module")
def model():
    return PairModel()


def scipy_positions(model, atoms):
    """L-BFGS minimum of the energy over positions (cell fixed): (energy, positions)."""
    atoms = atoms.copy()

    def fun(x):
        atoms.positions = x.reshape(-1, 3)
        p = model.predict(atoms)
        return p.energy, -p.forces.ravel()

    res = minimize(
        fun,
        atoms.positions.ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000},
    )
    return res.fun, res.x.reshape(-1, 3)


def cubic_enthalpy_minimum(model, pressure_gpa):
    """Lattice constant of the fcc crystal minimising E + pV (cubic symmetry: one parameter)."""

    def enthalpy(a):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        return model.predict(atoms).energy + pressure_gpa * GPA * atoms.get_volume()

    return minimize_scalar(enthalpy, bounds=(2.8, 3.8), method="bounded", options={"xatol": 1e-10}).x


def test_positions_reach_scipy_minimum_crystal(model):
    atoms = bulk("Cu", "fcc", a=3.3, cubic=True) * (2, 2, 2)
    atoms.rattle(0.15, seed=3)
    expected_energy, expected_positions = scipy_positions(model, atoms)
    result = relax(model, atoms, fmax=1e-5, max_steps=2000)
    assert isinstance(result, RelaxResult) and isinstance(result.structure, Structure)
    assert result.converged and 0 < result.steps == len(result.history) - 1
    assert result.energy == pytest.approx(expected_energy, abs=1e-8)
    # same minimum up to a rigid translation
    shift = (result.structure.positions - expected_positions).mean(axis=0)
    np.testing.assert_allclose(result.structure.positions - shift, expected_positions, atol=1e-4)
    assert np.linalg.norm(model.predict(result.structure).forces, axis=1).max() < 1e-5
    np.testing.assert_array_equal(result.structure.cell, atoms.cell)


def test_positions_reach_scipy_minimum_cluster(model):
    """A non-periodic 6-atom cluster (no cell) relaxes to the same local minimum as L-BFGS."""
    octahedron = 2.4 * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) / np.sqrt(2)
    atoms = Atoms("Ar6", positions=octahedron)
    atoms.rattle(0.1, seed=1)
    expected_energy, _ = scipy_positions(model, atoms)
    result = relax(model, atoms, fmax=1e-5, max_steps=2000)
    assert result.converged
    assert result.energy == pytest.approx(expected_energy, abs=1e-8)
    assert result.structure.volume == 0.0


@pytest.mark.parametrize("pressure", [0.0, 5.0])
def test_cell_relaxation_reaches_target_pressure(model, pressure):
    a = cubic_enthalpy_minimum(model, pressure)
    start = bulk("Cu", "fcc", a=3.2, cubic=True) * (1, 1, 2)
    start.set_cell(start.cell @ np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.0], [0.0, 0.0, 1.01]]), scale_atoms=True)
    start.rattle(0.05, seed=2)
    result = relax(model, start, fmax=1e-5, cell=True, pressure=pressure, max_steps=3000)
    assert result.converged
    # cubic cell of the enthalpy minimum (up to a rotation): compare the metric tensor
    cell = result.structure.cell
    np.testing.assert_allclose(cell @ cell.T, np.diag([a, a, 2 * a]) ** 2, atol=1e-4)
    assert result.structure.volume == pytest.approx(2 * a**3, rel=1e-5)
    # the stress honours the target pressure (ASE sign: sigma = -p I)
    np.testing.assert_allclose(result.stress / GPA, -pressure * np.eye(3), atol=2e-3)
    assert result.enthalpy == pytest.approx(result.energy + pressure * GPA * result.structure.volume)
    assert result.history[-1]["stress_GPa"] < 2e-3


def test_stress_tolerance_and_step_cap(model):
    start = bulk("Cu", "fcc", a=3.1, cubic=True)
    tight = relax(model, start, fmax=1e-4, cell=True, pressure=2.0, stress_tol=1e-4, max_steps=3000)
    assert tight.converged
    assert np.abs(tight.stress / GPA + 2.0 * np.eye(3)).max() < 1e-4
    capped = relax(model, start, fmax=1e-6, cell=True, max_steps=5)
    assert not capped.converged and capped.steps == 5 and len(capped.history) == 6
    with pytest.raises(ValueError, match="periodic"):
        relax(model, Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 2.5]]), cell=True)


def test_prediction_of_result_has_every_head():
    charged = PairModel(charges={11: 1.0, 17: -1.0})
    atoms = bulk("NaCl", "rocksalt", a=5.0)
    result = relax(charged, atoms, fmax=1e-3)
    p = result.prediction
    assert p.energy == pytest.approx(result.energy)
    np.testing.assert_allclose(p.born_charges[0], np.eye(3))
    assert p.dielectric.shape == (3, 3)


def test_cli_relax(monkeypatch, tmp_path):
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    monkeypatch.setattr(cli_md, "load_model", lambda path, device, precision: PairModel())
    structure = tmp_path / "start.cif"
    atoms = bulk("Cu", "fcc", a=3.1, cubic=True)
    atoms.rattle(0.05, seed=0)
    ase.io.write(structure, atoms)
    out = tmp_path / "relaxed.extxyz"
    result = CliRunner().invoke(
        main,
        ["relax", str(structure), "--cell", "--pressure", "1.5", "--fmax", "1e-4", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "converged" in result.output and "GPa" in result.output
    relaxed = ase.io.read(out)
    assert np.abs(relaxed.get_stress(voigt=False) / GPA + 1.5 * np.eye(3)).max() < 0.05
    assert "born_charges" in relaxed.arrays
    monkeypatch.chdir(tmp_path)
    default = CliRunner().invoke(main, ["relax", str(structure), "--max-steps", "3"], catch_exceptions=False)
    # not converged: exit 1 after writing (exit 0 before), the file marked converged=False
    assert default.exit_code == 1 and "NOT converged after 3 steps" in default.output
    assert (tmp_path / "start_relaxed.extxyz").is_file()
    assert "did not converge" in default.output and "after 3 steps (--max-steps 3)" in default.output
    marked = ase.io.read(tmp_path / "start_relaxed.extxyz")
    assert marked.info["converged"] is False and marked.info["steps"] == 3 and marked.info["fmax_reached"] > 0.01
    assert ase.io.read(out).info["converged"] is True


def test_relax_arguments_are_checked_first(monkeypatch, tmp_path):
    """Bad fmax, max_steps or pressure, or an output in a missing folder: a usage error naming the argument, before
    the model loads (the API raises before touching the model)."""
    from mtsim.cli import main
    from mtsim.cli import md as cli_md

    def never(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_md, "load_model", never)
    structure = tmp_path / "start.cif"
    ase.io.write(structure, bulk("Cu", "fcc", a=3.6))
    for args, name in (
        (["--fmax", "0"], "fmax"),
        (["--fmax", "nan"], "fmax"),
        (["--max-steps", "-1"], "max_steps"),
        (["--pressure", "inf"], "pressure"),
        (["-o", str(tmp_path / "no" / "x.extxyz")], "--output"),
    ):
        result = CliRunner().invoke(main, ["relax", str(structure), *args])
        assert result.exit_code == 2 and name in result.output, (args, result.output)
    with pytest.raises(ValueError, match="fmax"):
        relax(None, bulk("Cu"), fmax=-0.1)
