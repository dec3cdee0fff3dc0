"""The torch-free SDK: mtsim.load, Model.predict, the ASE calculator and `mtsim predict`, against PyTorch."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import mtsim  # noqa: E402
import mtsim.graph  # noqa: E402
from mtsim.cli import main as cli  # noqa: E402
from mtsim.onnx_format import (  # noqa: E402
    CorruptOnnxError,
    ModelFileError,
    NotMtsimOnnxError,
    OnnxFileNotFoundError,
    UnsupportedFormatVersionError,
)
from mtsim.training import build_model, export  # noqa: E402

SMALL = dict(num_blocks=1, dim=32, ffn_dim=32, num_heads=4, num_gaussians=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small float64 model and its ONNX file."""
    model = build_model("1M", dtype=torch.float64, seed=3, **SMALL)
    with torch.no_grad():
        model.reference_energies.normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("sdk") / "small.float64.onnx"
    export(model, path, precision="float64")
    return model, path


@pytest.fixture(scope="module")
def sdk_model(exported):
    return mtsim.load(exported[1], device="cpu")


def structures():
    slab = bulk("Al", "fcc", a=4.05, cubic=True)
    slab.center(vacuum=3.0, axis=2)
    slab.pbc = (True, True, False)
    zno = bulk("ZnO", "wurtzite", a=3.25, c=5.21)
    zno.rattle(0.05, seed=1)
    return [zno, molecule("CH4"), slab, Atoms("Cu", cell=np.eye(3) * 2.6, pbc=True)]


def test_predict_matches_pytorch_single_and_batched(exported, sdk_model):
    model, _ = exported
    items = structures()
    reference = model.predict(items)
    batched = sdk_model.predict(items)
    assert isinstance(batched, list) and len(batched) == len(items)
    for atoms, ref, got in zip(items, reference, batched):
        single = sdk_model.predict(atoms)
        assert isinstance(single, mtsim.Prediction) and isinstance(single.energy, float)
        for key, value in ref.items():
            scale = max(np.abs(value).max(), 1e-3)
            np.testing.assert_allclose(getattr(got, key), value, rtol=0, atol=1e-10 * scale, err_msg=key)
            np.testing.assert_allclose(getattr(single, key), value, rtol=0, atol=1e-10 * scale, err_msg=key)
    assert sdk_model.predict(items, batch_size=1)[0].energy == pytest.approx(batched[0].energy, abs=1e-12)


def test_merge_graphs_equals_the_graph_of_the_list():
    items = structures()
    merged = mtsim.graph.merge_graphs([mtsim.graph.build_graph([s], 5.0) for s in items])
    whole = mtsim.graph.build_graph(items, 5.0)
    assert merged.keys() == whole.keys()
    for key, value in whole.items():
        assert merged[key].dtype == value.dtype and np.array_equal(merged[key], value), key


def test_cpu_batches_bound_the_padded_slots():
    """On the CPU a batch holds at most ``CPU_SLOT_BUDGET`` slots, padding included: small molecules share a call,
    a dense and an open crystal (55 and 29 edges per atom) do not pad each other."""
    from mtsim.model import ATOM_BUDGET, CPU_SLOT_BUDGET, _batches

    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)
    si = bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3)
    methane = molecule("CH4")
    mixed = [mtsim.graph.build_graph([s], 5.0) for s in [cu, si] * 2 + [methane] * 40]
    batches = list(_batches(iter(mixed), None, CPU_SLOT_BUDGET))
    assert [b[0] for b in batches[:4]] == mixed[:4]  # Cu and Si each alone (the last Si with 11 molecules)
    assert len(batches) == 5 and sum(len(b) for b in batches) == len(mixed)
    for batch in batches:
        n = sum(len(g["numbers"]) for g in batch)
        assert len(batch) == 1 or (
            n * (max(g["receiver_slots"].shape[1] for g in batch) + 1) <= CPU_SLOT_BUDGET and n <= ATOM_BUDGET
        )
    assert [len(b) for b in _batches(iter(mixed), None, None)] == [44]  # on a GPU: atoms only (1,144 < 2,048)
    assert [len(b) for b in _batches(iter(mixed), 16, None)] == [16, 16, 12]


def test_model_attributes(sdk_model):
    assert sdk_model.precision == "float64" and sdk_model.device == "cpu"
    assert sdk_model.cutoff == 5.0
    assert sdk_model.elements == tuple(range(1, 95))
    assert sdk_model.metadata["mtsim_format"] == "mtsim-onnx"
    assert json.loads(sdk_model.metadata["heads"]) == list(mtsim.model.OUTPUT_NAMES)


def test_calculator_drives_ase_velocity_verlet(sdk_model):
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    atoms = bulk("MgO", "rocksalt", a=4.21) * (2, 2, 2)
    atoms.calc = mtsim.Calculator(sdk_model, include_untrained=True)  # a fresh model: every head untrained
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.05, (len(atoms), 3)))
    start = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * fs).run(20)
    assert abs(atoms.get_total_energy() - start) / len(atoms) < 1e-3
    for name in ("magmoms", "charges", "born_charges", "dielectric"):
        assert np.isfinite(atoms.calc.get_property(name, atoms)).all()
    assert atoms.get_stress().shape == (6,)


def test_calculator_caches_like_ase(sdk_model):
    class Counting:
        calls = 0

        def predict(self, atoms):
            Counting.calls += 1
            return sdk_model.predict(atoms)

    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = mtsim.Calculator(Counting())
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(), atoms.calc.get_property("born_charges")
    assert Counting.calls == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert Counting.calls == 2
    water = molecule("H2O")
    water.calc = mtsim.Calculator(Counting())
    water.get_forces()
    with pytest.raises(PropertyNotImplementedError):  # no cell volume: no stress, as ASE calculators do
        water.get_stress()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Atoms(numbers=[95], positions=[[0, 0, 0]]), "unknown element"),
        (lambda: Atoms("H2", positions=[[0, 0, 0], [np.inf, 0, 0]]), "NaN or inf"),
        (lambda: Atoms("H2", positions=[[0, 0, 0], [0.05, 0, 0]]), "overlapping atoms"),
        (lambda: Atoms("H", cell=[[1, 0, 0], [0, 1, 0], [1, 1, 0]], pbc=True), "singular cell"),
        (lambda: Atoms(), "non-empty"),
    ],
)
def test_bad_structures_raise_named_errors(sdk_model, make, message):
    with pytest.raises(ValueError, match=message):
        sdk_model.predict(make())


def test_overlap_can_be_allowed(sdk_model):
    p = sdk_model.predict(Atoms("H2", positions=[[0, 0, 0], [0.05, 0, 0]]), allow_overlap=True)
    assert np.isfinite(p.forces).all()


def with_metadata(source, path, **changes):
    """A copy of the ONNX file ``source`` at ``path`` with metadata entries replaced; returns the proto."""
    proto = onnx.load(source)
    for prop in proto.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(proto, path)
    return proto


def test_untrained_outputs_are_marked_and_not_calculator_results(exported, tmp_path):
    from ase.calculators.calculator import PropertyNotImplementedError

    fresh = mtsim.load(exported[1], device="cpu")
    assert "energy" in fresh.untrained_outputs and "charges" in fresh.untrained_outputs
    path = tmp_path / "no-charges.onnx"
    with_metadata(exported[1], path, untrained_outputs='["charges"]')
    model = mtsim.load(path, device="cpu")
    assert model.untrained_outputs == ("charges",)
    atoms = bulk("MgO", "rocksalt", a=4.21)
    atoms.calc = mtsim.Calculator(model)
    assert np.isfinite(atoms.get_forces()).all() and atoms.calc.get_property("born_charges", atoms).shape == (2, 3, 3)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_charges()
    atoms.calc = mtsim.Calculator(model, include_untrained=True)
    assert atoms.get_charges().shape == (2,)


def test_unsupported_element_of_a_restricted_model(exported, tmp_path):
    path = tmp_path / "restricted.onnx"
    with_metadata(exported[1], path, elements="1,6,8")
    with pytest.raises(ValueError, match=r"does not support Si \(Z=14\)"):
        mtsim.load(path, device="cpu").predict(bulk("Si"))


def test_model_file_errors(exported, tmp_path):
    with pytest.raises(OnnxFileNotFoundError, match="not found"):
        mtsim.load(tmp_path / "missing.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported[1].read_bytes()[:5000])
    with pytest.raises(CorruptOnnxError, match="corrupt or truncated"):
        mtsim.load(truncated)
    newer = tmp_path / "newer.onnx"
    proto = with_metadata(exported[1], newer, mtsim_format_version="3")
    with pytest.raises(UnsupportedFormatVersionError, match="newer mtsim"):
        mtsim.load(newer)
    older = tmp_path / "older.onnx"  # version 1 summed over edges by scattering; its files must be re-exported
    with_metadata(exported[1], older, mtsim_format_version="1")
    with pytest.raises(UnsupportedFormatVersionError, match="re-export"):
        mtsim.load(older)
    foreign = tmp_path / "foreign.onnx"
    del proto.metadata_props[:]
    onnx.save(proto, foreign)
    with pytest.raises(NotMtsimOnnxError, match="not an mtsim ONNX model"):
        mtsim.load(foreign)
    assert issubclass(CorruptOnnxError, ModelFileError)


def test_precision_is_never_silently_changed(exported, sdk_model):
    with pytest.raises(ValueError, match="float64 model, but precision='float32'"):
        mtsim.load(exported[1], precision="float32")
    from mtsim.graph import build_graph

    inputs = build_graph([bulk("Cu")], 5.0, dtype=np.float32)
    with pytest.raises(ValueError, match="float32, but this model file is float64"):
        sdk_model.evaluate(inputs)


def test_io_binding_gives_the_same_numbers(exported):
    """The GPU path (IOBinding) run on the CPU provider: bitwise the outputs of a plain session run."""
    from mtsim.graph import build_graph

    model = mtsim.load(exported[1], device="cpu")
    assert not model.io_binding  # on by default only on a GPU
    inputs = build_graph(structures(), model.cutoff, dtype=model.dtype)
    plain = model.evaluate(inputs)
    model.io_binding = True
    bound = model.evaluate(inputs)
    for name in mtsim.model.OUTPUT_NAMES:
        assert bound[name].dtype == plain[name].dtype and np.array_equal(bound[name], plain[name]), name


def test_cpu_session_options_change_memory_not_numbers(exported):
    """The CPU session runs nodes in graph order without onnxruntime's memory pattern (lower peak memory, see
    bench/README.md); the outputs are bitwise those of a session with onnxruntime's default options, at two
    sizes in a row (a new shape, as after a neighbour-list rebuild)."""
    import onnxruntime as ort

    from mtsim.graph import build_graph

    model = mtsim.load(exported[1], device="cpu")
    options = model.session.get_session_options()
    assert not options.enable_mem_pattern and options.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    default = ort.InferenceSession(str(exported[1]), providers=["CPUExecutionProvider"])
    for items in (structures(), structures()[:1]):
        inputs = build_graph(items, model.cutoff, dtype=model.dtype)
        ours = model.evaluate(inputs)
        theirs = default.run(list(mtsim.model.OUTPUT_NAMES), {name: inputs[name] for name in mtsim.model.INPUT_NAMES})
        for name, value in zip(mtsim.model.OUTPUT_NAMES, theirs):
            assert np.array_equal(ours[name], value), name


def test_bundled_model_missing_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(mtsim.model, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled default model is missing"):
        mtsim.load()


def test_cuda_is_refused_clearly_without_a_gpu():
    if mtsim.model.cuda_usable():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match="usable CUDA GPU is not present"):
        mtsim.load("whatever.onnx", device="cuda")


def test_cli_predict(exported, tmp_path):
    model, path = exported
    frames = structures()[:2]
    ase.io.write(tmp_path / "in.extxyz", frames, format="extxyz")
    ase.io.write(tmp_path / "POSCAR", frames[0], format="vasp")
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "predict",
            str(tmp_path / "in.extxyz"),
            str(tmp_path / "POSCAR"),
            "--model",
            str(path),
            "--device",
            "cpu",
            "--format",
            "json",
            "-o",
            str(tmp_path / "out.json"),
            "--include-untrained",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "O2Zn2 (4 atoms)" in result.output and "CH4 (5 atoms)" in result.output and "GPa" in result.output
    records = json.loads((tmp_path / "out.json").read_text())
    reference = model.predict(frames)
    assert len(records) == 3
    np.testing.assert_allclose(records[1]["born_charges"], reference[1]["born_charges"], atol=1e-10)

    result = runner.invoke(
        cli,
        [
            "predict",
            str(tmp_path / "in.extxyz"),
            "--model",
            str(path),
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "out.extxyz"),
            "--include-untrained",
        ],
    )
    assert result.exit_code == 0, result.output
    back = ase.io.read(tmp_path / "out.extxyz", index=":")
    np.testing.assert_allclose(
        back[0].arrays["born_charges"].reshape(-1, 3, 3), reference[0]["born_charges"], atol=1e-8
    )

    partly = tmp_path / "partly.onnx"  # a model whose charges head is untrained: charges are left out
    with_metadata(path, partly, untrained_outputs='["charges"]')
    result = runner.invoke(
        cli,
        [
            "predict",
            str(tmp_path / "in.extxyz"),
            "--model",
            str(partly),
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "partly.extxyz"),
        ],
    )
    assert result.exit_code == 0 and "left out charges" in result.output, result.output
    back = ase.io.read(tmp_path / "partly.extxyz", index=0)
    assert "charges" not in back.arrays and "born_charges" in back.arrays

    (tmp_path / "junk.cif").write_text("this is not a structure file\n")
    result = runner.invoke(cli, ["predict", str(tmp_path / "junk.cif"), "--model", str(path)])
    assert result.exit_code != 0 and "cannot read" in result.output


def test_cli_predict_writes_every_good_structure_and_names_each_bad_one(exported, tmp_path):
    """One frame with overlapping atoms among good ones, and a file truncated in its third frame: the good frames
    (two of the first file, two of the truncated one) are written, each bad one is named with file, frame (and line)
    and reason, and the exit status is 1."""
    model, path = exported
    good = structures()[:2]
    overlap = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.01]])
    ase.io.write(tmp_path / "mixed.extxyz", [good[0], overlap, good[1]], format="extxyz")
    ase.io.write(tmp_path / "whole.extxyz", [good[1], good[0], good[1]], format="extxyz")
    lines = (tmp_path / "whole.extxyz").read_text().splitlines()
    (tmp_path / "cut.extxyz").write_text("\n".join(lines[:-2]) + "\n")
    third = len(good[1]) + len(good[0]) + 4 + 1  # the line where the third frame starts
    out = tmp_path / "out.extxyz"
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(tmp_path / "mixed.extxyz"),
            str(tmp_path / "cut.extxyz"),
            "--model",
            str(path),
            "--device",
            "cpu",
            "-o",
            str(out),
            "--include-untrained",
        ],
    )
    assert result.exit_code == 1, result.output
    assert f"failed: {tmp_path / 'mixed.extxyz'}[1]: " in result.output and "0.1" in result.output
    assert (
        f"failed: {tmp_path / 'cut.extxyz'}[2]: cannot read {tmp_path / 'cut.extxyz'}: frame 2 (starting at "
        f"line {third})" in result.output
    )
    assert "2 structure(s) failed" in result.output and "4 succeeded" in result.output
    back = ase.io.read(out, index=":")
    assert [len(a) for a in back] == [len(good[0]), len(good[1]), len(good[1]), len(good[0])]
    np.testing.assert_allclose(back[1].get_forces(), model.predict(good[1])["forces"], atol=1e-5)


def test_memory_budget_at_load_turns_the_cpu_arena_off(exported):
    """A budget given at load is kept call by call: no onnxruntime arena holding its high-water mark."""
    assert mtsim.load(exported[1], device="cpu").session.get_session_options().enable_cpu_mem_arena
    budgeted = mtsim.load(exported[1], device="cpu", memory_budget=2**30)
    assert budgeted.memory_budget == 2**30
    assert not budgeted.session.get_session_options().enable_cpu_mem_arena


@pytest.mark.parametrize(
    "budget, message",
    [("abc", "must be a number"), (float("nan"), "must be finite"), (-1, "must be > 0"), (0, "must be > 0")],
)
def test_memory_budget_is_checked_at_load(exported, budget, message):
    with pytest.raises(ValueError, match=f"memory_budget .* {message}"):
        mtsim.load(exported[1], device="cpu", memory_budget=budget)


def test_memory_budget_splits_batches_and_refuses_early(exported):
    model = mtsim.load(exported[1], device="cpu")
    items = structures()
    reference = model.predict(items)
    largest = max(model.estimate_bytes(mtsim.graph.slot_count(mtsim.graph.build_graph([s], 5.0))) for s in items)
    model.memory_budget = 1.01 * largest  # room for each structure alone, not for the whole list
    split = model.predict(items)
    for ref, got in zip(reference, split):
        np.testing.assert_allclose(got.forces, ref.forces, atol=1e-12)
    model.memory_budget = 0.5 * largest
    with pytest.raises(MemoryError, match=r"needs an estimated .* GiB, more than the budget"):
        model.predict(items)


def test_graph_from_the_cuda_kernel_equals_the_cpu_graph():
    """On a GPU the SDK builds the graph with the CUDA kernel; here it runs on Numba's CUDA simulator."""
    pytest.importorskip("numba.cuda")
    import subprocess
    import sys

    code = (
        "import os; os.environ['NUMBA_ENABLE_CUDASIM'] = '1'\n"
        "import numpy as np\nfrom ase.build import bulk, molecule\nfrom mtsim.graph import build_graph\n"
        "items = [bulk('ZnO', 'wurtzite', a=3.25, c=5.21), molecule('CH4'), bulk('Cu', cubic=True)]\n"
        "cpu, gpu = build_graph(items, 4.0), build_graph(items, 4.0, neighbors='cuda')\n"
        "assert all(np.array_equal(cpu[k], gpu[k]) for k in cpu)\nprint('equal')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "equal"


def test_calculator_drives_ase_optimizer(sdk_model):
    from ase.optimize import BFGS

    atoms = bulk("MgO", "rocksalt", a=4.21) * (2, 1, 1)
    atoms.rattle(0.05, seed=2)
    atoms.calc = mtsim.Calculator(sdk_model, include_untrained=True)
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=8)
    assert atoms.get_potential_energy() < start


def test_split_outputs_gives_each_structure_its_rows():
    from mtsim.model import PER_ATOM_OUTPUTS, PER_STRUCTURE_OUTPUTS, split_outputs
    from mtsim.onnx_format import OUTPUT_NAMES, OUTPUT_SHAPES

    assert PER_STRUCTURE_OUTPUTS == ("energy", "stress", "dielectric")
    assert PER_ATOM_OUTPUTS == ("forces", "magmoms", "charges", "born_charges")
    sizes = (2, 3, 1)
    rows = {"b": len(sizes), "n": sum(sizes)}
    out = {}
    for k, name in enumerate(OUTPUT_NAMES):  # each entry's value says which output, row and element it is
        shape = (rows[OUTPUT_SHAPES[name][0]], *OUTPUT_SHAPES[name][1:])
        out[name] = 1000 * k + np.arange(np.prod(shape), dtype=float).reshape(shape)
    parts = split_outputs(out, sizes)
    assert len(parts) == 3
    start = 0
    for s, (part, n) in enumerate(zip(parts, sizes)):
        assert tuple(part) == OUTPUT_NAMES
        for name in PER_STRUCTURE_OUTPUTS:
            np.testing.assert_array_equal(part[name], out[name][s])
        for name in PER_ATOM_OUTPUTS:
            assert len(part[name]) == n
            np.testing.assert_array_equal(part[name], out[name][start : start + n])
        start += n
    with pytest.raises(ValueError, match="6 atoms.*adds up to 5"):
        split_outputs(out, (2, 3))


def test_evaluate_checks_its_inputs(sdk_model):
    """Wrong dtypes, shapes and ranges of Model.evaluate's inputs: a named error naming the input (onnxruntime's
    InvalidArgument, or silence for atomic number -1, before); nothing is cast."""
    from mtsim.graph import build_graph
    from mtsim.model import InputError, InputTypeError

    good = build_graph([bulk("Cu", cubic=True), bulk("Al")], 5.0, dtype=np.float64)
    sdk_model.evaluate(good)

    def changed(**values):
        return {**good, **values}

    n, e = len(good["numbers"]), good["edge_index"].shape[1]
    cases = [
        (changed(numbers=good["numbers"].astype(np.int32)), InputTypeError, "'numbers' is int32, but the mtsim ONNX"),
        (changed(positions=good["positions"].astype(np.float32)), InputTypeError, "'positions' is float32"),
        (changed(shifts=good["shifts"].tolist()), InputTypeError, "'shifts' must be a numpy array"),
        (changed(positions=good["positions"][:, :2].copy()), InputError, r"'positions' has shape \(5, 2\)"),
        (changed(cell=good["cell"][0]), InputError, "'cell' must have shape"),
        (changed(batch=good["batch"][:-1]), InputError, "'batch' has shape"),
        (changed(numbers=np.where(np.arange(n) == 1, -1, good["numbers"])), InputError, "atomic number -1"),
        (changed(numbers=np.full(n, 95)), InputError, "atomic number 95"),
        (changed(batch=good["batch"][::-1].copy()), InputError, "'batch' must be sorted"),
        (
            changed(edge_index=np.where(np.arange(e) == 3, n, good["edge_index"])),
            InputError,
            f"'edge_index' holds atom index {n}",
        ),
        (
            changed(receiver_slots=np.where(np.arange(n)[:, None] == 0, e + 1, good["receiver_slots"])),
            InputError,
            f"'receiver_slots' holds edge index {e + 1}",
        ),
        (changed(positions=np.where(np.arange(n)[:, None] == 0, np.nan, good["positions"])), InputError, "NaN"),
        ({k: v for k, v in good.items() if k != "shifts"}, InputError, r"missing input\(s\) \['shifts'\]"),
    ]
    for inputs, error, message in cases:
        with pytest.raises(error, match=message):
            sdk_model.evaluate(inputs)
    assert issubclass(InputTypeError, TypeError) and issubclass(InputError, ValueError)
