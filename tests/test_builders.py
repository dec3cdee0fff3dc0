"""Data-set builders (mtsim.training.builders): DFPT split and Born-charge convention, generated structures, and the
CHGNet teacher's units. Synthetic inputs only; the CHGNet comparison is skipped without the ``teacher`` extra."""

from __future__ import annotations

import json
import sys

import ase
import ase.io
import numpy as np
import pytest
from ase.neighborlist import neighbor_list

pytest.importorskip("torch")

from mtsim.training.builders import allegro_pol, dfpt, structures, teacher  # noqa: E402
from mtsim.training.data import AtomsDataset, read_frames  # noqa: E402

# --------------------------------------------------------------------------------------------------- DFPT builder


def _fake_dfpt_file(path, num=40, seed=0, duplicate=True):
    """A phonondb-format extxyz: ``becs`` (9 per atom, non-symmetric) and ``eps`` (9) per structure."""
    rng = np.random.default_rng(seed)
    frames = []
    symbols = ["Na", "Cl", "Mg", "O", "Si", "Ga", "N"]
    for k in range(num):
        n = int(rng.integers(1, 5))
        cell = np.diag(rng.uniform(3.5, 5.0, 3)) + rng.uniform(-0.3, 0.3, (3, 3))
        atoms = ase.Atoms(
            [symbols[int(rng.integers(len(symbols)))] for _ in range(n)],
            scaled_positions=rng.uniform(size=(n, 3)),
            cell=cell,
            pbc=True,
        )
        atoms.arrays["becs"] = rng.normal(size=(n, 9))
        atoms.info["eps"] = (np.eye(3) * rng.uniform(2, 10) + 0.1 * rng.normal(size=(3, 3))).reshape(9)
        frames.append(atoms)
    if duplicate:  # the same crystal twice must land in one split
        frames.append(frames[3].copy())
    ase.io.write(path, frames, format="extxyz")
    return frames


def _split_ids(manifest):
    return {name: manifest["splits"][name]["structure_ids"] for name in dfpt.SPLITS}


def test_dfpt_split_is_deterministic_disjoint_and_by_structure(tmp_path):
    source = tmp_path / "phonon_becs_epsilon.xyz"
    frames = _fake_dfpt_file(source)
    m1 = dfpt.build(tmp_path, tmp_path / "a", seed=3, quiet=True)  # the folder is accepted as --data
    m2 = dfpt.build(source, tmp_path / "b", seed=3, quiet=True)
    assert _split_ids(m1) == _split_ids(m2)
    # independent of the order of the file
    ase.io.write(tmp_path / "reversed.xyz", ase.io.read(source, ":")[::-1], format="extxyz")
    m3 = dfpt.build(tmp_path / "reversed.xyz", tmp_path / "c", seed=3, quiet=True)
    assert _split_ids(m3) == _split_ids(m1)
    # another seed, another split
    assert _split_ids(dfpt.build(source, tmp_path / "d", seed=4, quiet=True)) != _split_ids(m1)
    ids = _split_ids(m1)
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    assert sum(m1["splits"][s]["structures"] for s in dfpt.SPLITS) == len(frames)
    assert len(ids["val"]) == len(ids["test"]) == 4  # 10 % of the 40 distinct structures each
    # the duplicate and its original share a split; the written files carry it
    written = {s: read_frames(tmp_path / "a" / f"{s}.extxyz") for s in dfpt.SPLITS}
    where = {a.info["source_index"]: s for s, fr in written.items() for a in fr}
    assert where[3] == where[len(frames) - 1]
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert _split_ids(on_disk) == ids and on_disk["seed"] == 3
    assert on_disk["source"]["frames"] == len(frames)


def test_dfpt_group_by_formula_keeps_formulas_together(tmp_path):
    _fake_dfpt_file(tmp_path / "x.xyz", num=60, seed=1)
    dfpt.build(tmp_path / "x.xyz", tmp_path / "out", seed=0, group="formula", quiet=True)
    formulas = {s: {a.info["formula"] for a in read_frames(tmp_path / "out" / f"{s}.extxyz")} for s in dfpt.SPLITS}
    assert not formulas["train"] & formulas["test"] and not formulas["train"] & formulas["val"]


def test_born_convention_conversion_by_hand():
    # field first: Z[a, b] = dP_a / du_b. Moving the ion along y by u (charge e) gives P = (2u, u, 0).
    field_first = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    displacement_first = np.array([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # Z'[b, a] = dP_a/du_b
    np.testing.assert_array_equal(
        dfpt.to_field_first(displacement_first[None], dfpt.DISPLACEMENT_FIRST)[0], field_first
    )
    np.testing.assert_array_equal(dfpt.to_field_first(field_first.reshape(1, 9), dfpt.FIELD_FIRST)[0], field_first)
    np.testing.assert_allclose(field_first @ [0.0, 1.0, 0.0], [2.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        dfpt.to_field_first(field_first, "rows")


def test_dfpt_output_layout_and_conversion(tmp_path):
    frames = _fake_dfpt_file(tmp_path / "x.xyz", num=12, duplicate=False)
    for convention in (dfpt.FIELD_FIRST, dfpt.DISPLACEMENT_FIRST):
        out = tmp_path / convention
        dfpt.build(tmp_path / "x.xyz", out, seed=0, convention=convention, quiet=True)
        for name in dfpt.SPLITS:
            for atoms in read_frames(out / f"{name}.extxyz"):
                raw = frames[atoms.info["source_index"]].arrays["becs"].reshape(-1, 3, 3)
                expect = raw if convention == dfpt.FIELD_FIRST else raw.transpose(0, 2, 1)
                np.testing.assert_allclose(atoms.arrays["born_charges"].reshape(-1, 3, 3), expect, atol=1e-7)
                np.testing.assert_allclose(
                    atoms.info["dielectric"], frames[atoms.info["source_index"]].info["eps"], atol=1e-7
                )
    ds = AtomsDataset.from_files([tmp_path / dfpt.FIELD_FIRST / "train.extxyz"], cutoff=4.0)
    counts = ds.label_counts()
    assert counts["born_charges"] == counts["dielectric"] == len(ds) > 0 and counts["energy"] == 0


def test_dfpt_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        dfpt.split_groups(["a", "b"], (0.5, 0.5, 0.5))


def test_polarization_check_tells_the_index_order():
    rng = np.random.default_rng(0)
    n = 6
    atoms = ase.Atoms("Si2O4", scaled_positions=rng.uniform(size=(n, 3)), cell=np.diag([6.0, 6.5, 7.0]), pbc=True)
    born = rng.normal(size=(n, 3, 3)) + 2 * np.eye(3)  # field first, strongly non-symmetric
    frames, p = [], np.zeros(3)
    for _ in range(30):
        new = atoms.copy()
        du = rng.normal(scale=0.05, size=(n, 3))
        new.positions = atoms.positions + du
        p = p + np.einsum("iab,ib->a", born, du)
        new.arrays["born_charge"] = born.reshape(n, 9)
        new.info["polarization"] = p.copy()
        frames.append(new)
        atoms = new
    result = dfpt.polarization_residuals(frames)
    assert result[dfpt.FIELD_FIRST]["relative_residual"] < 1e-10
    assert result[dfpt.DISPLACEMENT_FIRST]["relative_residual"] > 0.1


def test_antisymmetric_correlation_sees_a_transpose_through_rotations():
    rng = np.random.default_rng(2)
    cell = np.array([[4.6, 0.3, 0.1], [0.2, 5.1, 0.4], [0.0, 0.3, 5.6]])
    atoms = ase.Atoms(
        "SiO2", scaled_positions=[[0.1, 0.2, 0.3], [0.45, 0.5, 0.6], [0.7, 0.85, 0.15]], cell=cell, pbc=True
    )
    born = rng.normal(size=(3, 3, 3))
    for det in (1, -1):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * (det * np.sign(np.linalg.det(q)))
        moved = ase.Atoms("SiO2", positions=atoms.positions @ rot.T, cell=atoms.cell[:] @ rot.T, pbc=True)
        born_moved = np.einsum("ab,ibc,dc->iad", rot, born, rot)
        assert dfpt.antisymmetric_correlation([atoms], [born], moved, born_moved, cutoff=4.0) > 0.99
        assert dfpt.antisymmetric_correlation([atoms], [born.transpose(0, 2, 1)], moved, born_moved, cutoff=4.0) < -0.99


# ------------------------------------------------------------------------------------------- generated structures

ELEMS = ("Li", "C", "Si", "Cu", "Fe", "Cs", "Al", "Mg")  # no molecular elements: the density filter rejects them


def _bases(**kwargs):
    return structures.base_structures(elements=ELEMS, num_binaries=6, seed=0, **kwargs)


@pytest.mark.parametrize("lattice", structures.ELEMENT_LATTICES)
def test_element_prototypes_have_the_covalent_bond_length(lattice):
    for symbol in ("C", "Cu", "Cs"):
        atoms = structures.element_prototype(symbol, lattice)
        d = neighbor_list("d", atoms, 8.0).min()
        assert d == pytest.approx(2 * structures.radius(symbol), rel=1e-6)


@pytest.mark.parametrize("lattice", structures.BINARY_LATTICES)
def test_binary_prototypes_have_the_covalent_bond_length(lattice):
    atoms = structures.binary_prototype("Ga", "N", lattice)
    i, j, d = neighbor_list("ijd", atoms, 8.0)
    mixed = atoms.numbers[i] != atoms.numbers[j]
    assert d[mixed].min() == pytest.approx(structures.radius("Ga") + structures.radius("N"), rel=1e-3)


def test_generated_structures_are_valid_and_deterministic():
    bases = _bases()
    frames = structures.generate(bases, 40, seed=5)
    again = structures.generate(_bases(), 40, seed=5)
    other = structures.generate(bases, 40, seed=6)
    # a draw that fails the overlap or density filter 20 times is skipped (here: close-packed carbon prototypes)
    assert 36 <= len(frames) <= 40 and {a.info["kind"] for a in frames} == {"rattle", "strain", "compress"}
    assert all(structures.min_distance_ok(a) and structures.density_ok(a) for a in frames)
    assert {a.info["category"] for a in frames} == {"element", "binary"}
    for a, b in zip(frames, again):
        assert a.get_chemical_formula() == b.get_chemical_formula()
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell[:], b.cell[:])
    assert any(not np.array_equal(a.positions, b.positions) for a, b in zip(frames, other) if len(a) == len(b))
    by_name = {b.info["base"]: b for b in bases}
    for atoms in frames:
        assert len(atoms) >= 8
        assert neighbor_list("d", atoms, 0.5).size == 0  # no pair closer than 0.5 Å
        base = structures.supercell(by_name[atoms.info["base"]], 8)
        deformation = np.linalg.solve(base.cell[:], atoms.cell[:])  # cell = cell0 (1 + eps)
        strain = deformation - np.eye(3)
        np.testing.assert_allclose(strain, strain.T, atol=1e-10)
        np.testing.assert_allclose(strain.reshape(9), atoms.info["strain"], atol=1e-10)
        principal = np.linalg.eigvalsh(strain)
        assert (principal >= -0.2 - 1e-12).all() and (principal <= 0.2 + 1e-12).all()
        ratio = atoms.get_volume() / base.get_volume()
        assert ratio == pytest.approx(atoms.info["volume_ratio"])
        if atoms.info["kind"] == "compress":
            assert 0.7 - 1e-9 <= ratio <= 0.9 + 1e-9
        if atoms.info["kind"] == "rattle":
            assert ratio == pytest.approx(1.0) and 0.02 <= atoms.info["rattle"] <= 0.15


def test_strains_reach_the_range_of_the_explorer():
    rng = np.random.default_rng(0)
    principal = np.concatenate([np.linalg.eigvalsh(structures.random_strain(rng)) for _ in range(300)])
    assert principal.min() < -0.18 and principal.max() > 0.18 and np.abs(principal).max() <= 0.2 + 1e-12


def test_overlap_filter():
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0.4, 0, 0]], cell=[5, 5, 5], pbc=True)
    assert not structures.min_distance_ok(atoms)
    atoms.positions[1, 0] = 0.8
    assert structures.min_distance_ok(atoms)
    assert not structures.min_distance_ok(
        ase.Atoms("Cs2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[9, 9, 9], pbc=True)
    )


def test_density_filter_rejects_metallic_hydrogen():
    from ase.build import bulk

    assert not structures.density_ok(bulk("H", "fcc", a=0.9))  # H at covalent contact: ~3000 neighbours in 5 Å
    assert structures.density_ok(bulk("Si", "diamond", a=5.43))  # 28 within 5 Å
    assert "H" not in structures.ELEMENTS and "Si" in structures.ELEMENTS


def test_phonondb_bases_use_only_the_train_split(tmp_path):
    _fake_dfpt_file(tmp_path / "x.xyz", num=30, duplicate=False)
    manifest = dfpt.build(tmp_path / "x.xyz", tmp_path / "dfpt", seed=0, quiet=True)
    bases = structures.base_structures(
        tmp_path / "x.xyz", tmp_path / "dfpt" / "manifest.json", elements=("Si",), num_binaries=0
    )
    phonondb = [b for b in bases if b.info["category"] == "phonondb"]
    assert len(phonondb) == manifest["splits"]["train"]["structures"]
    assert {b.info["structure_id"] for b in phonondb} == set(manifest["splits"]["train"]["structure_ids"])


def test_structures_command_line(tmp_path):
    out = tmp_path / "gen.extxyz"
    assert (
        structures.main(
            ["--out", str(out), "--size", "12", "--elements", "Si", "Na", "Al", "--binaries", "2", "--quiet"]
        )
        == 0
    )
    frames = ase.io.read(out, ":")
    assert len(frames) == 12
    manifest = json.loads((tmp_path / "gen.manifest.json").read_text())
    assert manifest["written"] == 12 and manifest["md_steps"] == 0


def test_structures_mix_and_kinds_choose_what_is_drawn(tmp_path):
    out = tmp_path / "gen.extxyz"
    args = ["--out", str(out), "--size", "10", "--elements", "Si", "S", "Na", "Al", "--binaries", "3", "--quiet"]
    assert structures.main(args + ["--mix", "binary=1"]) == 0
    assert {a.info["category"] for a in ase.io.read(out, ":")} == {"binary"}
    assert json.loads((tmp_path / "gen.manifest.json").read_text())["mix"] == {"binary": 1.0}
    assert structures.main(args + ["--mix", "element=2", "binary=0"]) == 0
    assert {a.info["category"] for a in ase.io.read(out, ":")} == {"element"}
    for bad in (["binary"], ["metal=1"], ["binary=x"], ["binary=-1"], ["binary=nan"]):
        with pytest.raises(SystemExit, match="--mix"):
            structures.main(args + ["--mix", *bad])
    assert structures.main(args + ["--kinds", "compress=1", "strain=0"]) == 0
    frames = ase.io.read(out, ":")
    assert {a.info["kind"] for a in frames} == {"compress"}
    assert all(0.7 <= a.info["volume_ratio"] <= 0.9 for a in frames)
    assert json.loads((tmp_path / "gen.manifest.json").read_text())["kind_weights"] == {"compress": 1.0}
    for bad in (["md=1"], ["squash=1"], ["strain"]):
        with pytest.raises(SystemExit, match="--kinds"):
            structures.main(args + ["--kinds", *bad])


def test_md_needs_a_teacher():
    base = structures.element_prototype("Si", "diamond")
    with pytest.raises(ValueError):
        structures.sample(base, "md", np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------- teacher


def test_teacher_conversion_units():
    n = 2
    prediction = {
        "e": np.array(-5.0),
        "f": np.ones((n, 3)),
        "s": np.diag([160.21766208, -2 * 160.21766208, 0.0]),
        "m": np.array([0.5, 2.0]),
    }
    labels = teacher.convert_prediction(prediction, n)
    assert labels["energy"] == pytest.approx(-10.0)  # CHGNet's energy is per atom
    np.testing.assert_allclose(labels["stress"], np.diag([1.0, -2.0, 0.0]))  # GPa -> eV/Å^3, same sign
    np.testing.assert_allclose(labels["magmoms"], [0.5, 2.0])
    assert labels["forces"].shape == (n, 3)


def test_missing_teacher_extra_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "chgnet", None)
    with pytest.raises(teacher.TeacherUnavailable, match="teacher"):
        teacher.load_teacher()


@pytest.fixture(scope="module")
def chgnet_model():
    pytest.importorskip("chgnet")
    return teacher.load_teacher()


def _strained_silicon():
    atoms = structures.element_prototype("Si", "diamond").repeat((2, 1, 1))
    atoms.set_cell(
        atoms.cell[:] @ (np.eye(3) + np.array([[-0.04, 0.02, 0], [0.02, -0.03, 0], [0, 0, 0.01]])), scale_atoms=True
    )
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_teacher_labels_match_chgnet_calculator_and_energy_derivative(chgnet_model, tmp_path):
    atoms = _strained_silicon()
    born = np.random.default_rng(1).normal(size=(len(atoms), 9))
    atoms.arrays["born_charges"] = born  # DFPT labels of the input survive teacher labelling
    atoms.info["dielectric"] = np.arange(9.0)
    (labelled,) = teacher.label([atoms], chgnet_model)
    assert labelled.info["label_source"] == teacher.PROVENANCE
    np.testing.assert_array_equal(labelled.arrays["born_charges"], born)
    np.testing.assert_array_equal(labelled.info["dielectric"], np.arange(9.0))
    stress = labelled.get_stress(voigt=False)
    # CHGNet's own ASE calculator
    reference = atoms.copy()
    reference.calc = teacher.teacher_calculator(chgnet_model)
    np.testing.assert_allclose(stress, reference.get_stress(voigt=False), atol=1e-6)
    np.testing.assert_allclose(labelled.get_forces(), reference.get_forces(), atol=1e-5)
    assert labelled.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-4)
    assert (labelled.get_magnetic_moments() >= 0).all()
    # ASE sign: stress = (1/V) dE/d(strain), by central differences of the teacher's energy
    h, volume = 2e-3, atoms.get_volume()

    def energy(eps):
        strained = atoms.copy()
        strained.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        return teacher.predict([strained], chgnet_model)[0]["energy"]

    for a, b in ((0, 0), (2, 2), (0, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h
        derivative = (energy(eps) - energy(-eps)) / (2 * h) / (1 if a == b else 2)
        assert stress[a, b] == pytest.approx(derivative / volume, abs=3e-4)
    assert np.abs(stress).max() > 5e-3  # a stress large enough for the sign test to mean something
    # written and read back in the training layout
    ase.io.write(tmp_path / "l.extxyz", [labelled], format="extxyz")
    sample = AtomsDataset.from_files([tmp_path / "l.extxyz"], cutoff=5.0)[0]
    np.testing.assert_allclose(sample.labels["stress"], stress, atol=1e-8)
    assert set(sample.labels) == {"energy", "forces", "stress", "magmoms", "born_charges", "dielectric"}


def allegro_pol_frames(count: int) -> list[ase.Atoms]:
    """Frames in the layout of the allegro-pol files (energy in info, ASE-readable forces/stress)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    frames = []
    for k in range(count):
        atoms = ase.Atoms("SiO2", positions=rng.uniform(0, 4, (3, 3)), cell=np.diag([4.0, 4.5, 5.0]), pbc=True)
        atoms.info["total_energy"] = -100.0 - k
        atoms.info["polarizability"] = (np.eye(3) * (1.0 + k)).reshape(9)
        atoms.arrays["born_charge"] = rng.normal(size=(3, 9))
        atoms.calc = SinglePointCalculator(atoms, forces=rng.normal(size=(3, 3)), stress=rng.normal(size=6))
        frames.append(atoms)
    return frames


def test_allegro_pol_conversion_and_block_split(tmp_path):
    frames = allegro_pol_frames(8)
    ase.io.write(tmp_path / "src.xyz", frames, format="extxyz")
    manifest = allegro_pol.build(tmp_path / "src.xyz", tmp_path / "out", fractions=(0.5, 0.25, 0.25))
    assert manifest["splits"] == {"train": [0, 4], "val": [4, 6], "test": [6, 8]}  # blocks in file order
    test = read_frames(tmp_path / "out" / "test.extxyz")
    assert [a.info["source_index"] for a in test] == [6, 7]
    for atoms in test:
        source = frames[atoms.info["source_index"]]
        volume = source.get_volume()
        expected_eps = np.eye(3) + np.reshape(source.info["polarizability"], (3, 3)) / (allegro_pol.EPSILON_0 * volume)
        labels = AtomsDataset.from_atoms([atoms], cutoff=3.0).samples[0].labels
        assert labels["energy"] == pytest.approx(source.info["total_energy"])
        np.testing.assert_allclose(labels["forces"], source.get_forces())
        np.testing.assert_allclose(labels["stress"], source.get_stress(voigt=False))
        np.testing.assert_allclose(labels["born_charges"], source.arrays["born_charge"].reshape(-1, 3, 3))
        np.testing.assert_allclose(labels["dielectric"], expected_eps)


def test_allegro_pol_rejects_other_files(tmp_path):
    atoms = ase.Atoms("Si", cell=np.eye(3) * 3, pbc=True)
    with pytest.raises(ValueError, match="not an allegro-pol frame"):
        allegro_pol.convert_frame(atoms, 0)
