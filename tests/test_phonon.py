"""mtsim.phonon against phonopy (same force constants, Z*, eps), analytic LO-TO, Einstein/lattice sums, QHA, CLI.

phonopy is a test-only dependency: the SDK never imports it.
"""

import json
import warnings

import numpy as np
import pytest
from analytic import PairModel
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from click.testing import CliRunner

from mtsim.phonon import QHA, Phonons, fit_eos, symmetrize_born, thermal_properties
from mtsim.phonon.bands import band_path
from mtsim.phonon.cells import Supercell, shortest_vectors
from mtsim.phonon.qha import eos_energy
from mtsim.structure import Structure, as_structure
from mtsim.units import COULOMB_EV_A, GPA, KB, THZ_IN_MEV, THZ_PER_SQRT_EV_A2_AMU

phonopy = pytest.importorskip("phonopy")
from phonopy.structure.atoms import PhonopyAtoms  # noqa: E402

TOLERANCE_THZ = 1e-3

# Inputs copied from phonopy's examples (phonopy/example/NaCl and SnO2: POSCAR-unitcell and BORN). The NaCl Z* are
# those of its primitive cell; the SnO2 BORN lists the independent atoms 1 (Sn) and 3 (O). They are inputs only.
NACL_A = 5.6903014761756712
NACL_BORN = """14.400
2.43533967 0 0 0 2.43533967 0 0 0 2.43533967
1.08703 0 0 0 1.08703 0 0 0 1.08703
-1.08672 0 0 0 -1.08672 0 0 0 -1.08672
"""
SNO2_CELL = np.diag([4.77258125, 4.77258125, 3.21637939])
SNO2_FRAC = [
    [0, 0, 0],
    [0.5, 0.5, 0.5],
    [0.1937307, 0.8062693, 0.5],
    [0.8062693, 0.1937307, 0.5],
    [0.3062693, 0.3062693, 0.0],
    [0.6937307, 0.6937307, 0.0],
]
SNO2_BORN = """# epsilon and Z* of atoms 1 3
4.42038879 0.00000000 0.00000000 0.00000000 4.42038879 0.00000000 0.00000000 0.00000000 4.77663396
4.09429092 0.47310041 0.00000000 0.47310041 4.09429092 0.00000000 0.00000000 0.00000000 4.48212636
-2.04714546 0.71774951 0.00000000 0.71774951 -2.04714546 0.00000000 0.00000000 0.00000000 -2.24106318
"""


def nacl() -> Structure:
    a = NACL_A
    return Structure(
        [11, 17], [[0, 0, 0], [a / 2, a / 2, a / 2]], [[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]], True
    )


def sno2() -> Structure:
    return Structure([50, 50, 8, 8, 8, 8], np.array(SNO2_FRAC) @ SNO2_CELL, SNO2_CELL, True)


def batio3() -> Atoms:
    return Atoms(
        "BaTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, -0.02], [0.5, 0, 0.48], [0, 0.5, 0.48]],
        cell=np.diag([4.0, 4.0, 4.1]),
        pbc=True,
    )


def spring_force_constants(structure: Structure, stiffness, cutoff: float) -> np.ndarray:
    """Full force constants (eV/Å^2) of central springs k(d, Z_i, Z_j) between all atoms closer than ``cutoff``:
    symmetric, translationally invariant and as symmetric as the crystal."""
    atoms = structure.to_atoms()
    i, j, vectors = neighbor_list("ijD", atoms, cutoff)
    d = np.linalg.norm(vectors, axis=1)
    k = stiffness(d, atoms.numbers[i], atoms.numbers[j])
    block = k[:, None, None] * vectors[:, :, None] * vectors[:, None, :] / d[:, None, None] ** 2
    fc = np.zeros((len(atoms), len(atoms), 3, 3))
    np.add.at(fc, (i, j), -block)
    np.add.at(fc, (i, i), block)
    return fc


def species_springs(d, zi, zj):
    return 2.0 * np.exp(-(d - 2.0)) * np.where(zi == zj, 0.7, 1.3)


def phonopy_atoms(structure: Structure, masses) -> PhonopyAtoms:
    return PhonopyAtoms(numbers=structure.numbers, cell=structure.cell, positions=structure.positions, masses=masses)


def phonopy_for(structure: Structure, size, masses, full_fc=None, born_text=None, method="gonze"):
    """A phonopy object on the same cell and masses, with our force constants and the BORN values (symmetrised by
    phonopy's parser) if given; returns (phonopy object, nac params or None)."""
    from phonopy.file_IO import parse_BORN_from_strings

    ph = phonopy.Phonopy(phonopy_atoms(structure, masses), supercell_matrix=np.diag(size), primitive_matrix="P")
    if full_fc is not None:
        ph.force_constants = full_fc
    params = None
    if born_text is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = parse_BORN_from_strings(born_text, ph.primitive)
        params["factor"] = COULOMB_EV_A
        params["method"] = method
        ph.nac_params = params
    return ph, params


def phonopy_frequencies(ph, qpoints, q_direction=None):
    ph.run_qpoints(np.atleast_2d(qpoints), nac_q_direction=q_direction)
    return ph.qpoints.frequencies


# ============================================================================== against phonopy
CASES = {"NaCl": (nacl, (3, 3, 3), NACL_BORN, 4.5), "SnO2": (sno2, (2, 2, 3), SNO2_BORN, 4.0)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shortest_vectors_match_phonopy(name):
    make, size, _, _ = CASES[name]
    unitcell = make()
    ph = phonopy.Phonopy(phonopy_atoms(unitcell, None), supercell_matrix=np.diag(size), primitive_matrix="P")
    np.testing.assert_allclose(ph.supercell.positions, Supercell(unitcell, size).structure.positions, atol=1e-12)
    _, multiplicity = ph.primitive.get_smallest_vectors()
    np.testing.assert_array_equal(shortest_vectors(Supercell(unitcell, size)).multiplicity, multiplicity[:, :, 0].T)


@pytest.mark.parametrize("method", [None, "gonze", "wang"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_frequencies_match_phonopy(name, method):
    """Same force constants, Z* and eps: frequencies on the band path, at random q and approaching Gamma; group
    velocities at random q."""
    make, size, born_text, cutoff = CASES[name]
    unitcell = make()
    ours = Phonons(unitcell, size)
    full_fc = spring_force_constants(ours.supercell.structure, species_springs, cutoff)
    ours.set_force_constants(full_fc)
    ph, params = phonopy_for(unitcell, size, ours.masses, full_fc, born_text if method else None, method or "gonze")
    if method:
        ours.set_nac(params["born"], params["dielectric"], method)
    segments, _ = band_path(unitcell, npoints=11)
    qpoints = np.concatenate(segments + [np.random.default_rng(3).random((10, 3)) - 0.5])
    np.testing.assert_allclose(ours.frequencies(qpoints), phonopy_frequencies(ph, qpoints), atol=TOLERANCE_THZ)
    for direction in ([1, 0, 0], [0, 0, 1], [1, 1, 0], [1, 1, 1], [0.3, -0.2, 0.7]):
        near = 1e-4 * np.array(direction, dtype=float)
        np.testing.assert_allclose(ours.frequencies(near), phonopy_frequencies(ph, near), atol=TOLERANCE_THZ)
        np.testing.assert_allclose(
            ours.frequencies([0, 0, 0], q_direction=direction),
            phonopy_frequencies(ph, [0, 0, 0], q_direction=direction),
            atol=TOLERANCE_THZ,
        )
    ph.run_qpoints(qpoints[-5:], with_group_velocities=True)
    np.testing.assert_allclose(ours.group_velocities(qpoints[-5:]), ph.qpoints.group_velocities, atol=1e-3)  # THz·Å
    if method:  # the NAC is really on: Gamma splits along some direction
        split = ours.frequencies([0, 0, 0], q_direction=[1, 0, 0]) - ours.frequencies([0, 0, 0])
        assert split.max() > 0.1


def test_born_symmetrization_matches_phonopy():
    from phonopy.structure.symmetry import symmetrize_borns_and_epsilon

    unitcell = sno2()
    ours = Phonons(unitcell, (1, 1, 1))
    _, params = phonopy_for(unitcell, (1, 1, 1), ours.masses, born_text=SNO2_BORN)
    rng = np.random.default_rng(0)
    noisy = params["born"] + rng.normal(scale=0.02, size=params["born"].shape)
    eps = params["dielectric"] + rng.normal(scale=0.02, size=(3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        born, dielectric = symmetrize_born(noisy, eps, ours.symmetry)
    ref_born, ref_eps = symmetrize_borns_and_epsilon(noisy, eps, phonopy_atoms(unitcell, None))
    np.testing.assert_allclose(born, ref_born, atol=1e-10)
    np.testing.assert_allclose(dielectric, ref_eps, atol=1e-10)
    np.testing.assert_allclose(born.sum(axis=0), 0.0, atol=1e-12)
    with pytest.warns(UserWarning, match="largely broken"):
        symmetrize_born(noisy + np.eye(3) * 0.3 * np.array([1, 0, 0, 0, 0, 0])[:, None, None], eps, ours.symmetry)


@pytest.mark.parametrize("make, size", [(sno2, (2, 2, 3)), (batio3, (2, 2, 2))])
def test_displacements_and_force_constants_match_phonopy(make, size):
    """Same displacements as phonopy, and, from the same forces, the same force constants."""
    model = PairModel(charges={50: 2.0, 8: -1.0, 56: 2.0, 22: 4.0}, r0=2.3)
    unitcell = as_structure(make())
    ours = Phonons(unitcell, size)
    ours.calculate_force_constants(model, allow_small_supercell=True)  # small, to compare with phonopy quickly
    ph, _ = phonopy_for(unitcell, size, ours.masses)
    ph.generate_displacements(distance=0.01)
    expected = np.array([[d[0] // Supercell(unitcell, size).n_cells, *d[1:]] for d in ph.displacements])
    actual = np.array([[d.atom, *d.vector] for d in ours.displacements])
    np.testing.assert_allclose(actual, expected, atol=1e-12)
    supercells = [Structure(s.numbers, s.positions, s.cell, True) for s in ph.supercells_with_displacements]
    ph.forces = [p.forces for p in model.predict(supercells)]
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    np.testing.assert_allclose(ours.full_force_constants(), ph.force_constants, atol=1e-6)


# ============================================================================== analytic checks
def test_lo_to_splitting_of_rigid_ion_diatomic_crystal():
    """CsCl structure, nearest-neighbour central springs k, Z* = +-Z: w_TO^2 = (8/3) k / mu and
    w_LO^2 - w_TO^2 = 4 pi Z^2 e^2 / (4 pi eps0 Omega mu eps)."""
    a, k, z, eps = 3.2, 1.7, 1.3, 3.1
    unitcell = Structure([55, 17], [[0, 0, 0], [a / 2, a / 2, a / 2]], np.eye(3) * a, True)
    masses = np.array([132.9, 35.45])
    mu = masses.prod() / masses.sum()
    ph = Phonons(unitcell, (3, 3, 3), masses=masses)
    nn = np.sqrt(3) * a / 2
    ph.set_force_constants(
        spring_force_constants(ph.supercell.structure, lambda d, zi, zj: np.full_like(d, k), (nn + a) / 2)
    )
    to = np.sqrt(8 / 3 * k / mu) * THZ_PER_SQRT_EV_A2_AMU
    lo = np.sqrt((8 / 3 * k + 4 * np.pi * COULOMB_EV_A * z**2 / (a**3 * eps)) / mu) * THZ_PER_SQRT_EV_A2_AMU
    np.testing.assert_allclose(ph.frequencies([0, 0, 0])[0], [0, 0, 0, to, to, to], atol=1e-6)
    for method in ("gonze", "wang"):
        ph.set_nac(np.array([z * np.eye(3), -z * np.eye(3)]), eps * np.eye(3), method)
        for direction in ([1, 0, 0], [1, 1, 0], [1, 1, 1], [0.2, -0.5, 0.9]):
            report = ph.gamma_report(direction)
            np.testing.assert_allclose(report["frequencies_nac"], [0, 0, 0, to, to, lo], atol=1e-6)
            assert report["lo_to_splitting"] == pytest.approx(lo - to, abs=1e-6)


def test_translational_sum_rule_three_zero_acoustic_modes():
    model = PairModel(charges={11: 1.0, 17: -1.0}, r0=2.9)
    for unitcell, size in ((bulk("NaCl", "rocksalt", a=5.6), (2, 2, 2)), (sno2(), (2, 2, 2)), (batio3(), (2, 2, 2))):
        ph = Phonons(unitcell, size)
        ph.calculate_force_constants(model, allow_small_supercell=True)
        np.testing.assert_allclose(ph.force_constants.sum(axis=1), 0.0, atol=1e-12)
        acoustic = np.sort(np.abs(ph.frequencies([0, 0, 0])[0]))[:4]  # optical modes may be imaginary here
        assert acoustic[2] < TOLERANCE_THZ < acoustic[3]
        ph.nac_from_model(model)
        acoustic = np.sort(np.abs(ph.frequencies([0, 0, 0], q_direction=[0, 0, 1])[0]))[:4]
        assert acoustic[2] < TOLERANCE_THZ < acoustic[3]


def test_thermal_properties_of_an_einstein_solid():
    """On-site springs only: every mode at f_E, so F, S, U, C_v are the Einstein functions (x 3 n_atoms)."""
    k, mass = 2.3, 40.0
    unitcell = Structure([18], [[0, 0, 0]], np.eye(3) * 3.0, True)
    ph = Phonons(unitcell, (2, 2, 2), masses=[mass])
    fc = np.zeros((8, 8, 3, 3))
    fc[np.arange(8), np.arange(8)] = k * np.eye(3)
    ph.set_force_constants(fc)
    mesh = ph.mesh((4, 4, 4))
    f_e = np.sqrt(k / mass) * THZ_PER_SQRT_EV_A2_AMU
    np.testing.assert_allclose(mesh.frequencies, f_e, rtol=1e-12)
    temperatures = np.array([1.0, 50.0, 300.0, 1000.0, 5000.0])
    tp = ph.thermal_properties(temperatures, mesh)
    e = f_e * THZ_IN_MEV * 1e-3
    x = e / (KB * temperatures)
    np.testing.assert_allclose(tp.free_energy, 3 * (e / 2 + KB * temperatures * np.log(1 - np.exp(-x))), rtol=1e-10)
    np.testing.assert_allclose(tp.entropy, 3 * KB * (x / np.expm1(x) - np.log(1 - np.exp(-x))), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(tp.internal_energy, 3 * e * (0.5 + 1 / np.expm1(x)), rtol=1e-10)
    np.testing.assert_allclose(tp.heat_capacity, 3 * KB * x**2 * np.exp(x) / np.expm1(x) ** 2, rtol=1e-8, atol=1e-15)
    assert tp.heat_capacity[-1] == pytest.approx(3 * KB, rel=1e-3)  # Dulong-Petit


def test_thermal_properties_match_the_lattice_sum_of_a_dispersive_crystal():
    """Simple cubic, central nearest-neighbour springs: f_a(q) = 2 sqrt(k/m) |sin(pi q_a)| for each axis a, so the
    thermal sums over the mesh are known in closed form (a Debye-like acoustic crystal)."""
    k, mass, a, n = 1.5, 27.0, 2.7, 8
    unitcell = Structure([13], [[0, 0, 0]], np.eye(3) * a, True)
    ph = Phonons(unitcell, (4, 4, 4), masses=[mass])
    ph.set_force_constants(
        spring_force_constants(ph.supercell.structure, lambda d, zi, zj: np.full_like(d, k), 1.2 * a)
    )
    grid = np.stack(np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    exact = np.sort(2 * np.sqrt(k / mass) * THZ_PER_SQRT_EV_A2_AMU * np.abs(np.sin(np.pi * grid)), axis=1)
    temperatures = [10.0, 100.0, 300.0, 2000.0]
    expected = thermal_properties(exact, np.full(len(grid), 1 / len(grid)), temperatures)
    mesh = ph.mesh((n, n, n))
    assert mesh.weights.sum() == pytest.approx(1.0)
    got = ph.thermal_properties(temperatures, mesh)
    for name in ("free_energy", "entropy", "heat_capacity", "internal_energy"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9, atol=1e-12)
    # group velocity of the x branch: df/dq_x = 2 sqrt(k/m) pi a cos(pi a q_x) (THz·Å; q Cartesian, no 2 pi)
    q = np.array([[0.13, 0.31, 0.41]])
    v = ph.group_velocities(q)[0]
    branch = np.argmin(
        np.abs(ph.frequencies(q)[0] - 2 * np.sqrt(k / mass) * THZ_PER_SQRT_EV_A2_AMU * np.sin(np.pi * 0.13))
    )
    expected_v = 2 * np.sqrt(k / mass) * THZ_PER_SQRT_EV_A2_AMU * np.pi * a * np.cos(np.pi * 0.13)
    np.testing.assert_allclose(v[branch], [expected_v, 0, 0], rtol=1e-5, atol=1e-5)


# ============================================================================== QHA
def test_qha_recovers_the_minimum_of_a_synthetic_free_energy():
    """E(V) Vinet plus 6 Einstein modes whose frequency scales as (V/V0)^-gamma: V(T), G(T), B(T) and alpha(T)
    against a direct minimisation of the exact function."""
    from scipy.optimize import minimize_scalar

    e0, v0, b0, bp, f0, gamma = -10.0, 40.0, 0.6, 4.5, 6.0, 1.6
    temperatures = np.arange(0.0, 801.0, 10.0)

    def f_vib(v, t):
        f = f0 * (v / v0) ** -gamma
        return thermal_properties(np.array([[f] * 6]), [1.0], t).free_energy

    def exact(t, pressure):
        p = pressure * GPA
        best = minimize_scalar(
            lambda v: eos_energy("vinet", v, e0, v0, b0, bp) + f_vib(v, t)[0] + p * v,
            bounds=(0.9 * v0, 1.1 * v0),
            method="bounded",
            options={"xatol": 1e-10},
        )
        return best.x, best.fun

    volumes = v0 * np.linspace(0.95, 1.05, 11)
    free = np.array([f_vib(v, temperatures) for v in volumes]).T
    qha = QHA(volumes, eos_energy("vinet", volumes, e0, v0, b0, bp), temperatures, free)
    assert qha.static.v0 == pytest.approx(v0, rel=1e-8) and qha.static.b0 == pytest.approx(b0, rel=1e-6)
    for pressure in (0.0, 5.0):
        result = qha.at_pressure(pressure)
        assert result.within_range.all()
        reference = np.array([exact(t, pressure) for t in temperatures])
        np.testing.assert_allclose(result.volume, reference[:, 0], rtol=2e-5)
        np.testing.assert_allclose(result.gibbs, reference[:, 1], atol=2e-5)
        alpha = np.gradient(reference[:, 0], temperatures) / reference[:, 0]
        np.testing.assert_allclose(result.thermal_expansion[5:], alpha[5:], rtol=0.02, atol=1e-7)
        assert result.volume[-1] > result.volume[0]
    static = fit_eos(volumes, eos_energy("birch_murnaghan", volumes, e0, v0, b0, bp), "birch_murnaghan")
    assert static.b0_gpa == pytest.approx(b0 / GPA, rel=1e-6)


# ============================================================================== guards: supercell size and NAC
@pytest.fixture(scope="module")
def bundled():
    import mtsim

    return mtsim.load()


def test_supercell_smaller_than_the_cutoff_sphere_is_refused(bundled):
    """Si with the bundled model (cutoff 5 Å): 1x1x1 (shortest vector 3.84 Å) is refused; with the override its
    six-fold degenerate X point is an artefact of the images that 4x4x4 (shortest vector 15.4 Å > 2 x cutoff)
    resolves into several distinct frequencies."""
    from mtsim.phonon import SupercellTooSmall, check_supercell, default_supercell

    si = bulk("Si")
    x_point = [0.5, 0.0, 0.5]
    with pytest.raises(SupercellTooSmall, match="2 x cutoff"):
        Phonons(si, (1, 1, 1)).calculate_force_constants(bundled)
    small = Phonons(si, (1, 1, 1))
    small.calculate_force_constants(bundled, allow_small_supercell=True)
    assert default_supercell(si.cell, bundled.cutoff) == (4, 4, 4)
    large = Phonons(si, (4, 4, 4))
    large.calculate_force_constants(bundled)
    assert check_supercell(large.supercell, bundled.cutoff) > 2 * bundled.cutoff
    f_small = small.frequencies([x_point])[0]
    f_large = large.frequencies([x_point])[0]
    assert np.ptp(f_small) < 1e-6  # every mode the same: the images wipe out the dispersion
    assert np.ptp(f_large) > 1.0
    assert np.abs(f_small - f_large).max() > 1.0


def test_nac_decided_from_the_physics(bundled):
    """NiAl (two metals): no NAC and the reason says so; NaCl (Cl is a nonmetal): NAC and an LO-TO splitting; the
    user's `metallic` and an eps_inf above the bound switch it off; nac=True contradicts metallic=True."""
    from mtsim.phonon import EPS_INF_METALLIC, choose_nac

    nial = Phonons.from_model(bundled, bulk("NiAl", "cesiumchloride", a=2.88), (4, 4, 4))
    assert not nial.nac_choice.applied and "only metals" in nial.nac_choice.reason
    assert nial.nac is None and nial.gamma_report()["lo_to_splitting"] == 0.0
    assert np.abs(nial.born).max() > 1.0  # the model does predict Z* for NiAl: only the rule keeps them out
    nacl = Phonons.from_model(bundled, bulk("NaCl", "rocksalt", a=5.64), (3, 3, 3))
    assert nacl.nac_choice.applied and "insulator" in nacl.nac_choice.reason
    assert nacl.gamma_report([1, 0, 0])["lo_to_splitting"] > 0.5
    numbers = [11, 17]
    assert not choose_nac(numbers, np.eye(3) * 2.4, metallic=True).applied
    assert not choose_nac(numbers, np.eye(3) * (EPS_INF_METALLIC + 1)).applied
    assert choose_nac(numbers, np.eye(3) * 2.4, nac=True).applied
    with pytest.raises(ValueError, match="contradicts"):
        choose_nac(numbers, np.eye(3) * 2.4, nac=True, metallic=True)


# ============================================================================== CLI
@pytest.fixture
def cli(monkeypatch):
    import mtsim.cli.phonon as command

    model = PairModel(charges={11: 1.1, 17: -1.1}, r0=2.85, dielectric=np.eye(3) * 2.4)
    monkeypatch.setattr(command, "load_model", lambda path, device, precision: model)
    return command


def test_cli_phonon_writes_phonopy_readable_files(cli, tmp_path):
    import yaml
    from phonopy.file_IO import parse_BORN, parse_FORCE_CONSTANTS

    poscar = tmp_path / "NaCl.vasp"
    bulk("NaCl", "rocksalt", a=5.69).write(poscar, format="vasp")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli.phonon,
        [
            str(poscar),
            "--no-relax",
            "--supercell",
            "2",
            "2",
            "2",
            "--allow-small-supercell",
            "--mesh",
            "6",
            "6",
            "6",
            "--npoints",
            "9",
            "--tmax",
            "300",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "LO-TO splitting" in result.output
    assert "NAC applied: insulator" in result.output
    for name in ("POSCAR-unitcell", "FORCE_CONSTANTS", "BORN", "band.yaml", "phonon.json", "band.png", "dos.png"):
        assert (out / name).is_file(), name
    for name in ("band.png", "dos.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from phonopy.interface.calculator import read_crystal_structure

    unitcell, _ = read_crystal_structure(str(out / "POSCAR-unitcell"), interface_mode="vasp")
    ph = phonopy.Phonopy(unitcell, supercell_matrix=np.diag([2, 2, 2]), primitive_matrix="P")
    fc = parse_FORCE_CONSTANTS(str(out / "FORCE_CONSTANTS"), p2s_map=ph.primitive.p2s_map)
    assert fc.shape == (16, 16, 3, 3)
    np.testing.assert_allclose(fc.sum(axis=1), 0.0, atol=1e-10)
    params = parse_BORN(ph.primitive, filename=str(out / "BORN"))
    np.testing.assert_allclose(params["born"][0], 1.1 * np.eye(3), atol=1e-8)
    np.testing.assert_allclose(params["born"][1], -1.1 * np.eye(3), atol=1e-8)
    np.testing.assert_allclose(params["dielectric"], 2.4 * np.eye(3), atol=1e-8)
    assert params["factor"] == pytest.approx(COULOMB_EV_A)

    report = json.loads((out / "phonon.json").read_text())
    assert report["supercell_matrix"] == np.diag([2, 2, 2]).tolist()
    assert report["nac"]["applied"] and report["nac"]["reason"].startswith("insulator")
    assert report["supercell_check"]["contains_cutoff_sphere"] is False
    gamma = report["gamma"]
    for key in ("q_direction", "frequencies", "frequencies_nac", "lo_to_shifts", "lo_to_splitting", "imaginary_modes"):
        assert key in gamma
    assert gamma["lo_to_splitting"] > 0.5
    assert {"mesh_count", "band_path_count", "lowest_mesh_frequency"} <= set(report["imaginary_modes"])
    assert len(report["thermal_properties"]["free_energy_eV"]) == 31

    # phonopy reproduces our Gamma frequencies from the files we wrote
    ph.force_constants = fc
    ph.nac_params = params
    ph.run_qpoints([[0, 0, 0]], nac_q_direction=gamma["q_direction"])
    np.testing.assert_allclose(ph.qpoints.frequencies[0], gamma["frequencies_nac"], atol=0.05)  # masses differ
    bands = yaml.safe_load((out / "band.yaml").read_text())
    assert bands["nqpoint"] == len(bands["phonon"]) == 9 * bands["npath"]
    assert len(bands["phonon"][0]["band"]) == 6


def test_cli_qha(cli, tmp_path):
    poscar = tmp_path / "NaCl.vasp"
    bulk("NaCl", "rocksalt", a=5.69).write(poscar, format="vasp")
    out = tmp_path / "qha"
    result = CliRunner().invoke(
        cli.qha,
        [
            str(poscar),
            "--supercell",
            "2",
            "2",
            "2",
            "--allow-small-supercell",
            "--mesh",
            "4",
            "4",
            "4",
            "--volumes",
            "5",
            "--tmax",
            "300",
            "--tstep",
            "50",
            "--pressure",
            "0",
            "--pressure",
            "1",
            "--no-nac",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "qha.json").read_text())
    assert len(data["volumes_A3"]) == 5 and len(data["results"]) == 2
    zero, one = data["results"]
    assert one["volume_A3"][0] < zero["volume_A3"][0]
    assert zero["volume_A3"][-1] > zero["volume_A3"][0]  # thermal expansion of the Morse crystal
    assert (out / "e-v.dat").is_file() and (out / "qha.png").is_file()


def test_cli_phonon_refuses_a_small_supercell_and_skips_nac_for_a_metal(cli, tmp_path):
    """Without --allow-small-supercell a supercell below 2 x cutoff stops before anything is written; NiAl gets no
    NAC, and the text output and phonon.json say why."""
    poscar = tmp_path / "NiAl.vasp"
    bulk("NiAl", "cesiumchloride", a=2.88).write(poscar, format="vasp")
    out = tmp_path / "out"
    small = CliRunner().invoke(cli.phonon, [str(poscar), "--no-relax", "--supercell", "2", "2", "2", "-o", str(out)])
    assert small.exit_code == 2 and "2 x cutoff" in small.output and not out.exists()
    result = CliRunner().invoke(
        cli.phonon,
        [str(poscar), "--no-relax", "--mesh", "4", "4", "4", "--npoints", "5", "--tmax", "100", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "supercell 4x4x4" in result.output
    assert "NAC not applied: metallic: AlNi holds only metals" in result.output
    report = json.loads((out / "phonon.json").read_text())
    assert report["nac"]["applied"] is False and "only metals" in report["nac"]["reason"]
    assert report["supercell_check"]["contains_cutoff_sphere"] is True
    both = CliRunner().invoke(cli.phonon, [str(poscar), "--nac", "--metallic", "-o", str(out)])
    assert both.exit_code == 2 and "contradicts" in both.output
