"""ONNX export (mtsim.training.export), `mtsim convert` / `mtsim info`, and the ONNX file checks.

Two exports are shared by most tests: a tiny model in float64 (`mtsim convert --precision float64`, validated on
the panel) and the real 1M preset in float32 (`mtsim convert --no-validate`).
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402

from mtsim.cli import main  # noqa: E402
from mtsim.converters.validate import (  # noqa: E402
    TOLERANCES,
    onnx_session,
    output_error,
    torch_outputs,
    validate_export,
    validation_panel,
)
from mtsim.graph import build_graph  # noqa: E402
from mtsim.onnx_format import (  # noqa: E402
    INPUT_NAMES,
    KEY_SESSION_OPTIONS,
    OUTPUT_NAMES,
    SESSION_OPTIONS,
    CorruptOnnxError,
    NotMtsimOnnxError,
    OnnxFileNotFoundError,
    OnnxFormatError,
    UnsupportedFormatVersionError,
    check_onnx_file,
)
from mtsim.training import build_model, save_checkpoint  # noqa: E402
from mtsim.training.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_checkpoint  # noqa: E402
from mtsim.training.exporter import IR_VERSION, OPSET, PASSES, ExportError, check_graph, export  # noqa: E402
from mtsim.training.model import ZBLRepulsion  # noqa: E402

SMALL = dict(num_blocks=1, dim=32, ffn_dim=32, num_heads=4, num_gaussians=16)
PRECISIONS = ("float32", "float64")
NUMPY = {"float32": np.float32, "float64": np.float64}
TORCH = {"float32": torch.float32, "float64": torch.float64}
PROVIDERS = ["CPUExecutionProvider"]


def with_visible_heads(model, seed: int = 0):
    """Random reference energies and output scales other than 1, so that every head is non-trivial."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.reference_energies.copy_(torch.randn(model.reference_energies.shape, generator=generator))
        for name, value in (
            ("energy_scale", 2.0),
            ("energy_shift", -0.5),
            ("magmom_scale", 2.0),
            ("charge_scale", 3.0),
            ("born_scale", 3.0),
            ("dielectric_scale", 2.0),
        ):
            getattr(model, name).fill_(value)
    return model.eval()


def tiny_model(seed: int = 0):
    """A small random float64 model (1 block, d=32)."""
    return with_visible_heads(build_model("1M", torch.float64, seed=seed, **SMALL), seed)


def rattled(atoms: Atoms, seed: int, amplitude: float = 0.05) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(amplitude, seed=seed)
    return atoms


def unseen_batches():
    """Structures and batch shapes that appear neither in the tracing example (n=7, e=31, b=2) nor the panel."""
    triclinic = Atoms(
        "SiOMgO",
        scaled_positions=[[0, 0, 0], [0.3, 0.4, 0.1], [0.6, 0.2, 0.7], [0.1, 0.8, 0.5]],
        cell=[[3.3, 0, 0], [0.9, 3.1, 0], [0.4, -0.6, 3.6]],
        pbc=True,
    )
    return {
        "single atom": [Atoms("O")],  # n = e = b = 1
        "rocksalt 2x1x1": [rattled(bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1), 1)],
        "batch of 3": [rattled(molecule("CO2"), 2), rattled(triclinic, 3), rattled(bulk("Cu", "fcc", a=3.6), 4)],
        "cell 37 atoms": [rattled(bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2), 5)[:37]],
    }


def model_in(model, precision):
    return model.to(TORCH[precision]).eval()


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoints(workdir):
    """float64: a tiny model; float32: the real 1M preset (saved in float32)."""
    paths = {"float64": workdir / "tiny.pt", "float32": workdir / "1M.pt"}
    save_checkpoint(tiny_model(), paths["float64"], metadata={"training_data": "unit-test data"})
    full = with_visible_heads(build_model("1M", torch.float32, seed=0))
    save_checkpoint(full, paths["float32"], metadata={"training_data": "unit-test data"})
    return paths


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
    return checkpoints["float64"]


@pytest.fixture(scope="module")
def converted(workdir, checkpoints):
    """`mtsim convert`: the tiny checkpoint in float64 with validation, the 1M preset in float32 without."""
    runner = CliRunner()
    results = {}
    for precision, extra in (("float64", []), ("float32", ["--no-validate"])):
        path = workdir / f"model.{precision}.onnx"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = runner.invoke(
                main, ["convert", str(checkpoints[precision]), "-o", str(path), "--precision", precision, *extra]
            )
        results[precision] = (path, result)
        EXPORT_WARNINGS[precision] = [str(w.message) for w in caught]
    return results


EXPORT_WARNINGS = {}
"""precision -> the warnings `mtsim convert` raised in the ``converted`` fixture."""


@pytest.fixture(scope="module")
def files(converted):
    for precision, (path, result) in converted.items():
        assert result.exit_code == 0, f"mtsim convert --precision {precision} failed:\n{result.output}"
    return {precision: path for precision, (path, _) in converted.items()}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {precision: model_in(load_checkpoint(checkpoints[precision]), precision) for precision in PRECISIONS}


# ----------------------------------------------------------------------------------------------- convert
def test_convert_cli(converted, checkpoints):
    """`mtsim convert` writes both precisions; float64 is validated on the panel, --no-validate skips it."""
    path64, result64 = converted["float64"]
    path32, result32 = converted["float32"]
    assert result64.exit_code == 0, result64.output
    assert "validation PASSED" in result64.output
    for name in OUTPUT_NAMES:
        assert name in result64.output  # the table of worst errors
    assert result32.exit_code == 0, result32.output
    assert "validation skipped" in result32.output and "PASSED" not in result32.output
    for path, precision in ((path64, "float64"), (path32, "float32")):
        info = check_onnx_file(path)
        assert info.precision == precision
        assert info.metadata["source_checkpoint_sha256"] == file_sha256(checkpoints[precision])
        assert info.metadata["training_data"] == "unit-test data"


def test_graph_and_metadata(files, models):
    """Contract checks: names, symbolic n/e/b, no ScatterND, one float type, pinned IR and opset, metadata."""
    for precision, path in files.items():
        model = onnx.load(str(path))
        check_graph(model, precision)
        assert model.ir_version == IR_VERSION
        assert {o.domain: o.version for o in model.opset_import}.get("", None) == OPSET
        ops = {node.op_type for node in model.graph.node}
        assert "ScatterND" not in ops
        # ops without a CUDA kernel in onnxruntime would shuttle edge tensors between GPU and CPU
        assert not ops & {"SplitToSequence", "SequenceAt", "ConcatFromSequence"}
        assert not ops & {"Erf", "Gelu", "LayerNormalization"}  # float64 kernels missing or float32 statistics
        inputs = {v.name: v for v in model.graph.input}
        assert tuple(inputs) == INPUT_NAMES
        assert tuple(v.name for v in model.graph.output) == OUTPUT_NAMES
        dims = {name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for name, v in inputs.items()}
        assert dims == {
            "numbers": ["n"],
            "positions": ["n", 3],
            "cell": ["b", 3, 3],
            "batch": ["n"],
            "edge_index": [2, "e"],
            "shifts": ["e", 3],
            "receiver_slots": ["n", "kr"],
            "sender_slots": ["n", "ks"],
        }
        # sums over edges gather each atom's edges: the only scatters left are the few atom -> structure sums
        # (format 1 scattered over edges ~95 times, 65 % of the run time)
        assert sum(node.op_type == "ScatterElements" for node in model.graph.node) <= 10
        info = check_onnx_file(path)
        meta = info.metadata
        assert meta["mtsim_format"] == "mtsim-onnx" and meta["mtsim_format_version"] == "2"
        assert meta["input_layout"] == "flat-edges+slots" and meta["precision"] == precision
        assert float(meta["cutoff"]) == 5.0 and info.elements == tuple(range(1, 95))
        assert json.loads(meta["heads"]) == list(OUTPUT_NAMES)
        assert json.loads(meta["units"])["stress"] == "eV/Å^3"
        assert json.loads(meta["model_config"])["dim"] == models[precision].config.dim
        assert meta["model_preset"] == "1M"
        assert int(meta["parameter_count"]) == models[precision].num_parameters()
        repulsion = json.loads(meta["short_range_repulsion"])
        assert (repulsion["inner"], repulsion["outer"]) == (ZBLRepulsion.INNER, ZBLRepulsion.OUTER)


def test_every_pass_rewrites_the_real_model(files):
    """Each graph pass found something to rewrite in the 1M preset and the tiny model (the exporter warns about a
    pass that finds nothing: the model's layout changed under it), and the files record the session options the
    rewritten graph needs."""
    assert set(EXPORT_WARNINGS) == set(PRECISIONS)
    for precision, caught in EXPORT_WARNINGS.items():
        idle = [message for message in caught if "found nothing to rewrite" in message]
        assert not idle, f"{precision}: {idle}"
        meta = check_onnx_file(files[precision]).metadata
        assert json.loads(meta[KEY_SESSION_OPTIONS]) == SESSION_OPTIONS


@pytest.mark.parametrize("precision", PRECISIONS)
def test_graph_rewrites_are_exact(precision):
    """The rewrites for onnxruntime (no materialised expands, edge gathers repeated near their later uses,
    per-head factors widened by a 0/1 matrix product) change the graph, not its numbers: bitwise the outputs of
    the traced graph without them, on a size not traced."""
    from mtsim.training.exporter import trace

    model = tiny_model().to(TORCH[precision])
    plain, _ = trace(model, TORCH[precision], rewrite=False)
    rewritten, _ = trace(model, TORCH[precision])

    def count(graph_module, target):
        return sum(node.target == target for node in graph_module.graph.nodes)

    aten = torch.ops.aten
    assert set(rewritten.meta["rewrites"]) == {p.name for p in PASSES}
    assert all(n > 0 for n in rewritten.meta["rewrites"].values()), rewritten.meta["rewrites"]
    assert count(rewritten, aten.expand.default) < count(plain, aten.expand.default)
    assert count(rewritten, aten.index_select.default) > count(plain, aten.index_select.default)
    assert count(rewritten, aten.mm.default) > count(plain, aten.mm.default)
    graph = build_graph(unseen_batches()["batch of 3"], 5.0, dtype=NUMPY[precision])
    inputs = [torch.from_numpy(graph[name]) for name in INPUT_NAMES]
    with torch.no_grad():
        for name, a, b in zip(OUTPUT_NAMES, plain(*inputs), rewritten(*inputs)):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("precision", PRECISIONS)
def test_parity_on_unseen_shapes(files, models, precision):
    """All seven outputs match PyTorch (1e-5 float32, 1e-10 float64; see mtsim.converters.validate for the
    measure) on sizes never seen at export, including n = e = b = 1."""
    batches = unseen_batches()
    report = validate_export(models[precision], files[precision], panel=list(batches.items()))
    print(report.table())
    assert report.passed, report.table("all")
    assert {c.case for c in report.comparisons} == set(batches)
    session = onnx_session(files[precision])
    for name, structures in batches.items():
        inputs = build_graph(structures, 5.0, dtype=NUMPY[precision])
        outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), inputs)))
        n, b = len(inputs["numbers"]), len(structures)
        expected = {
            "energy": (b,),
            "forces": (n, 3),
            "stress": (b, 3, 3),
            "magmoms": (n,),
            "charges": (n,),
            "born_charges": (n, 3, 3),
            "dielectric": (b, 3, 3),
        }
        assert {k: v.shape for k, v in outputs.items()} == expected
        assert all(v.dtype == NUMPY[precision] for v in outputs.values())
        if name != "single atom":
            assert np.abs(outputs["forces"]).max() > 1e-2 and np.ptp(outputs["charges"]) > 1e-2  # non-trivial


def test_validate_export_float32(files, models):
    """The shared validation function passes on the float32 1M-preset file (the CLI ran it on the float64 one),
    here on the panel without its 200-atom cell (for time)."""
    panel = validation_panel()
    assert len(panel) >= 8 and max(sum(len(a) for a in structures) for _, structures in panel) >= 200
    report = validate_export(
        models["float32"],
        files["float32"],
        panel=[(name, structures) for name, structures in panel if name != "200 atoms"],
    )
    print(report.table())
    assert report.passed, report.table("all")
    assert set(report.max_errors()) == set(OUTPUT_NAMES)


def test_validate_export_detects_mismatch(files):
    """A model that is not the one exported fails validation, with a FAIL row in the table."""
    other = model_in(tiny_model(seed=3), "float32")
    panel = [(name, structures) for name, structures in validation_panel() if name in ("molecule", "triclinic")]
    report = validate_export(other, files["float32"], panel=panel)
    assert not report.passed
    assert "FAIL" in report.table()


# ----------------------------------------------------------------------------------------------- physics
@pytest.mark.parametrize("case", ["triclinic", "compressed"])
def test_forces_and_stress_are_derivatives_of_onnx_energy(files, case):
    """float64 file: forces = -dE/dr and stress = (1/V) dE/dstrain against central differences of its energy (the
    compressed cell has bonds inside the switch of the short-range repulsion)."""
    session = onnx_session(files["float64"])
    if case == "triclinic":
        atoms = rattled(
            Atoms(
                "SiOMg",
                scaled_positions=[[0, 0, 0], [0.3, 0.4, 0.1], [0.6, 0.2, 0.7]],
                cell=[[3.1, 0, 0], [0.8, 2.9, 0], [0.5, -0.7, 3.4]],
                pbc=True,
            ),
            7,
        )
    else:
        atoms = rattled(bulk("MgO", "rocksalt", a=3.0) * (2, 1, 1), 8, 0.1)
    inputs = build_graph([atoms], 5.0, dtype=np.float64)

    def run(positions, cell):
        out = session.run(None, {**inputs, "positions": positions, "cell": cell[None]})
        return dict(zip(OUTPUT_NAMES, out))

    positions, cell = inputs["positions"], inputs["cell"][0]
    out = run(positions, cell)
    h = 1e-5
    fd_forces = np.zeros_like(positions)
    for i in range(len(atoms)):
        for a in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[i, a] += h
            minus[i, a] -= h
            fd_forces[i, a] = -(run(plus, cell)["energy"][0] - run(minus, cell)["energy"][0]) / (2 * h)
    np.testing.assert_allclose(out["forces"], fd_forces, atol=1e-7 * np.abs(fd_forces).max(), rtol=0)
    assert np.abs(fd_forces).max() > 1e-2

    volume = abs(np.linalg.det(cell))
    fd_stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = h / 2 if a != b else h
            deform_plus, deform_minus = np.eye(3) + strain, np.eye(3) - strain
            e_plus = run(positions @ deform_plus, cell @ deform_plus)["energy"][0]
            e_minus = run(positions @ deform_minus, cell @ deform_minus)["energy"][0]
            fd_stress[a, b] = (e_plus - e_minus) / (2 * h) / volume  # symmetric strain: d/d(eps_ab) of E
    np.testing.assert_allclose(out["stress"][0], fd_stress, atol=1e-7 * np.abs(fd_stress).max(), rtol=0)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_deterministic_across_runs_and_threads(files, precision):
    """5 runs with 1 and with 2 intra-op threads: every output bitwise identical (no racy ScatterND)."""
    structures = [rattled(bulk("MgO", "rocksalt", a=4.21, cubic=True) * (2, 2, 2), 11), rattled(molecule("C6H6"), 12)]
    inputs = build_graph(structures, 5.0, dtype=NUMPY[precision])
    runs = {}
    for threads in (1, 2):
        session = onnx_session(files[precision], threads)
        runs[threads] = [session.run(list(OUTPUT_NAMES), inputs) for _ in range(5)]
    for threads, outputs in runs.items():
        for other in outputs[1:]:
            for name, a, b in zip(OUTPUT_NAMES, outputs[0], other):
                assert a.tobytes() == b.tobytes(), f"{name} differs between runs with {threads} threads"
    for name, a, b in zip(OUTPUT_NAMES, runs[1][0], runs[2][0]):
        assert a.tobytes() == b.tobytes(), f"{name} differs between 1 and 2 threads"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
def test_isolated_atom_keeps_epsilon(files, models, precision, level):
    """An isolated atom has e = 0, so the equivariant layer norm computes 0 * rsqrt(0 + eps): finite only while
    no optimizer (onnxscript's or onnxruntime's) has dropped the ``+ eps``. Must be finite and equal PyTorch."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(str(files[precision]), options, providers=PROVIDERS)
    structures = [Atoms("Fe"), Atoms("O", positions=[[0.5, 0.2, 0.1]]), Atoms("Cu", cell=np.eye(3) * 11.0, pbc=True)]
    for atoms in structures:
        inputs = build_graph([atoms], 5.0, dtype=NUMPY[precision])
        assert inputs["edge_index"].shape == (2, 1)  # the self edge only
        reference = torch_outputs(models[precision], inputs)
        outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), inputs)))
        for key in OUTPUT_NAMES:
            assert np.isfinite(outputs[key]).all(), f"{key} is not finite for an isolated atom"
            assert output_error(outputs[key], reference[key], key) <= TOLERANCES[precision], key
    # every layer norm's eps is still a constant of the graph, in the file's precision
    float_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NUMPY[precision]))
    constants = {
        float(onnx.numpy_helper.to_array(a.t))
        for node in onnx.load(str(files[precision])).graph.node
        if node.op_type == "Constant"
        for a in node.attribute
        if a.name == "value" and a.t.data_type == float_type and np.prod(a.t.dims) == 1
    }
    eps = {float(NUMPY[precision](m.eps)) for m in models[precision].modules() if hasattr(m, "eps")}
    assert eps and eps <= constants, f"layer-norm eps {eps - constants} missing from the graph"


def test_sdk_model_reads_export(files, models):
    """The torch-free SDK (mtsim.model.Model) loads the exported file and reproduces PyTorch."""
    from mtsim.model import Model

    sdk_model = Model(files["float64"], device="cpu")
    atoms = rattled(bulk("NaCl", "rocksalt", a=5.64), 13)
    prediction = sdk_model.predict(atoms)
    reference = models["float64"].predict(atoms)
    np.testing.assert_allclose(prediction.energy, reference["energy"], rtol=1e-10)
    np.testing.assert_allclose(prediction.forces, reference["forces"], atol=1e-10)
    np.testing.assert_allclose(prediction.born_charges, reference["born_charges"], atol=1e-10)


# ----------------------------------------------------------------------------------------------- graph guards
def contract_model(extra_nodes, precision=TensorProto.FLOAT, static=False, outputs_from="y"):
    """A synthetic ONNX model with the contract's inputs and outputs (outputs copied from ``outputs_from``)."""
    n, e, b = (5, 9, 2) if static else ("n", "e", "b")
    inputs = [
        oh.make_tensor_value_info("numbers", TensorProto.INT64, [n]),
        oh.make_tensor_value_info("positions", precision, [n, 3]),
        oh.make_tensor_value_info("cell", precision, [b, 3, 3]),
        oh.make_tensor_value_info("batch", TensorProto.INT64, [n]),
        oh.make_tensor_value_info("edge_index", TensorProto.INT64, [2, e]),
        oh.make_tensor_value_info("shifts", precision, [e, 3]),
        oh.make_tensor_value_info("receiver_slots", TensorProto.INT64, [n, 4 if static else "kr"]),
        oh.make_tensor_value_info("sender_slots", TensorProto.INT64, [n, 4 if static else "ks"]),
    ]
    shapes = {
        "energy": [b],
        "forces": [n, 3],
        "stress": [b, 3, 3],
        "magmoms": [n],
        "charges": [n],
        "born_charges": [n, 3, 3],
        "dielectric": [b, 3, 3],
    }
    outputs = [oh.make_tensor_value_info(name, precision, shapes[name]) for name in OUTPUT_NAMES]
    copies = [oh.make_node("Identity", [outputs_from], [name]) for name in OUTPUT_NAMES]
    graph = oh.make_graph(list(extra_nodes) + copies, "synthetic", inputs, outputs)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def test_scatternd_add_is_rejected():
    """A graph with ScatterND(reduction="add") (racy on onnxruntime CPU) is refused with a clear error."""
    nodes = [  # positions.index_add(0, edge_index[0], shifts) written as ScatterND
        oh.make_node("Constant", [], ["zero"], value=oh.make_tensor("zero", TensorProto.INT64, [], [0])),
        oh.make_node("Constant", [], ["axes"], value=oh.make_tensor("axes", TensorProto.INT64, [1], [1])),
        oh.make_node("Gather", ["edge_index", "zero"], ["receiver"], axis=0),
        oh.make_node("Unsqueeze", ["receiver", "axes"], ["index"]),
        oh.make_node("ScatterND", ["positions", "index", "shifts"], ["y"], reduction="add"),
    ]
    with pytest.raises(ExportError, match=r"ScatterND\(reduction='add'\)"):
        check_graph(contract_model(nodes))
    plain = [oh.make_node("Identity", ["positions"], ["y"])]
    check_graph(contract_model(plain), "float32")  # the same graph without the scatter passes


@pytest.mark.filterwarnings("ignore")
def test_scatternd_add_from_torch_exporter_is_rejected(tmp_path):
    """What `index_add` becomes in torch.onnx.export (ScatterND add) is caught by the guard."""

    class IndexAdd(torch.nn.Module):
        def forward(self, positions, receiver):
            return torch.zeros_like(positions).index_add(0, receiver, positions)

    positions, receiver = torch.randn(5, 3), torch.tensor([0, 1, 1, 3, 4])
    program = torch.onnx.export(
        IndexAdd(),
        (positions, receiver),
        dynamo=True,
        optimize=False,
        dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}),
    )
    with pytest.raises(ExportError, match="ScatterND"):
        check_graph(program.model_proto)


def test_static_dims_and_wrong_precision_are_rejected():
    plain = [oh.make_node("Identity", ["positions"], ["y"])]
    with pytest.raises(ExportError, match="static dim"):
        check_graph(contract_model(plain, static=True))
    half = [
        oh.make_node("Constant", [], ["c"], value=oh.make_tensor("c", TensorProto.FLOAT, [], [0.5])),
        oh.make_node("Cast", ["c"], ["c64"], to=TensorProto.DOUBLE),
        oh.make_node("Mul", ["positions", "c64"], ["y"]),
    ]
    with pytest.raises(ExportError, match="Constant .* is float32"):
        check_graph(contract_model(half, precision=TensorProto.DOUBLE), "float64")


# ----------------------------------------------------------------------------------------------- info + errors
def test_info_cli(files):
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(files["float32"])])
    assert result.exit_code == 0, result.output
    for text in (
        "mtsim-onnx version 2",
        "flat-edges+slots",
        "float32",
        "opset",
        "18",
        "nodes",
        "parameters",
        "source checkpoint sha256",
        "energy scale",
        "unit-test data",
        *INPUT_NAMES,
        *OUTPUT_NAMES,
    ):
        assert text in result.output
    fallback = runner.invoke(main, ["info", str(files["float64"]), "--reader", "onnxruntime"])
    assert fallback.exit_code == 0, fallback.output
    assert "float64" in fallback.output and "not available" in fallback.output
    as_json = json.loads(runner.invoke(main, ["info", str(files["float64"]), "--json"]).output)
    assert as_json["opset"] == OPSET and as_json["node_count"] > 100
    assert [i["name"] for i in as_json["inputs"]] == list(INPUT_NAMES)


@pytest.fixture(scope="module")
def bad_onnx_files(files, workdir):
    """name -> (path, expected error class)."""
    data = files["float32"].read_bytes()
    paths = {}
    (workdir / "garbage.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    paths["corrupt"] = (workdir / "garbage.onnx", CorruptOnnxError)
    (workdir / "truncated.onnx").write_bytes(data[: len(data) // 2])
    paths["truncated"] = (workdir / "truncated.onnx", CorruptOnnxError)
    (workdir / "empty.onnx").write_bytes(b"")
    paths["empty"] = (workdir / "empty.onnx", CorruptOnnxError)
    paths["missing"] = (workdir / "missing.onnx", OnnxFileNotFoundError)
    plain = contract_model([oh.make_node("Identity", ["positions"], ["y"])])
    onnx.save(plain, str(workdir / "plain.onnx"))
    paths["not mtsim"] = (workdir / "plain.onnx", NotMtsimOnnxError)
    future = onnx.load(str(files["float32"]))
    for prop in future.metadata_props:
        if prop.key == "mtsim_format_version":
            prop.value = "99"
    onnx.save(future, str(workdir / "future.onnx"))
    paths["future version"] = (workdir / "future.onnx", UnsupportedFormatVersionError)
    return paths


@pytest.mark.parametrize("case", ["corrupt", "truncated", "empty", "missing", "not mtsim", "future version"])
@pytest.mark.parametrize("reader", ["onnx", "onnxruntime"])
def test_bad_onnx_files_raise_named_errors(bad_onnx_files, case, reader):
    path, error = bad_onnx_files[case]
    with pytest.raises(error) as info:
        check_onnx_file(path, prefer=reader)
    assert isinstance(info.value, OnnxFormatError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    result = CliRunner().invoke(main, ["info", str(path), "--reader", reader])
    assert result.exit_code != 0
    assert error.__name__ in result.output


def test_truncated_onnx_at_many_lengths(files, workdir):
    """Every truncation is a CorruptOnnxError (never a silently partial model)."""
    data = files["float32"].read_bytes()
    path = workdir / "cut.onnx"
    for fraction in (0.001, 0.2, 0.6, 0.95, 0.999):
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(OnnxFormatError):
            check_onnx_file(path)
    path.write_bytes(data[:-3])
    with pytest.raises(OnnxFormatError):
        check_onnx_file(path)


@pytest.fixture(scope="module")
def bad_checkpoints(checkpoint, workdir):
    data = checkpoint.read_bytes()
    (workdir / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    (workdir / "truncated.pt").write_bytes(data[: len(data) // 2])
    payload = read_checkpoint(checkpoint)
    payload["format_version"] = 99
    torch.save(payload, workdir / "future.pt")
    torch.save({"weights": torch.zeros(3)}, workdir / "foreign.pt")
    return {name: workdir / name for name in ("corrupt.pt", "truncated.pt", "future.pt", "foreign.pt", "missing.pt")}


@pytest.mark.parametrize("name", ["corrupt.pt", "truncated.pt", "future.pt", "foreign.pt", "missing.pt"])
def test_convert_rejects_bad_checkpoints(bad_checkpoints, workdir, name):
    path = bad_checkpoints[name]
    with pytest.raises(CheckpointError):
        export(str(path), workdir / "never.onnx")
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(workdir / "never.onnx")])
    assert result.exit_code != 0
    assert "CheckpointError" in result.output
    assert not (workdir / "never.onnx").exists()


def test_convert_fails_and_removes_file_when_validation_fails(files, workdir, monkeypatch):
    """If the file does not reproduce PyTorch, `mtsim convert` exits non-zero, prints the error table and
    removes the file (the export is replaced by a copy of another model's file to make it fail)."""
    import mtsim.converters.validate as validate_module
    import mtsim.training.exporter as export_module

    quick = [case for case in validate_module.validation_panel() if case[0] in ("molecule", "triclinic")]
    monkeypatch.setattr(validate_module, "validation_panel", lambda: quick)
    other = workdir / "other.pt"
    save_checkpoint(tiny_model(seed=5).float(), other)
    monkeypatch.setattr(
        export_module, "export", lambda model, path, precision, **kw: shutil.copy(files["float32"], path)
    )
    out = workdir / "mismatch.onnx"
    result = CliRunner().invoke(main, ["convert", str(other), "-o", str(out)])
    assert result.exit_code != 0
    assert "FAIL" in result.output and "does not reproduce PyTorch" in result.output
    assert not out.exists()


def test_cli_and_format_check_work_without_torch(files):
    """`import mtsim.converters.cli` and `mtsim info` need neither torch nor onnx."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
        "from click.testing import CliRunner\n"
        "from mtsim.converters.cli import info\n"
        "from mtsim.onnx_format import check_onnx_file\n"
        f"assert check_onnx_file({str(files['float32'])!r}).reader == 'onnxruntime'\n"
        f"r = CliRunner().invoke(info, [{str(files['float32'])!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'not available' in r.output\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
