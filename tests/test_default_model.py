"""The bundled model: it loads with ``mtsim.load()``, declares every head and its provenance, and its ONNX files
reproduce the shipped checkpoint they were exported from."""

import json

import numpy as np
import pytest
from ase.build import bulk

import mtsim
from mtsim.model import DEFAULT_MODEL, MODELS_DIR
from mtsim.onnx_format import OUTPUT_NAMES, check_onnx_file
from mtsim.units import GPA

PRECISIONS = ("float32", "float64")
CHECKPOINT = MODELS_DIR / f"{DEFAULT_MODEL}.pt"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_model_loads_and_declares_every_head(precision):
    path = MODELS_DIR / f"{DEFAULT_MODEL}.{precision}.onnx"
    assert path.stat().st_size < 20e6
    model = mtsim.load(precision=precision, device="cpu")
    assert model.path == path and model.precision == precision
    meta = model.metadata
    assert meta["model_name"] == DEFAULT_MODEL and meta["model_preset"] == "1M"
    assert tuple(json.loads(meta["heads"])) == OUTPUT_NAMES
    assert model.untrained_outputs == ("charges",)  # no Bader data: the charges head is untrained and says so
    provenance = json.loads(meta["training_data"])
    assert "CHGNet 0.3.0" in provenance["description"] and "MPtrj" in provenance["description"]
    assert {f["file"] for f in provenance["files"]} == {
        "lab_train10.extxyz",
        "lab_train11.extxyz",
        "lab_train12.extxyz",
        "lab_dfpt_train.extxyz",
    }
    assert provenance["labels"]["born_charges"] > 0 and provenance["labels"]["charges"] == 0
    # stages 2-9 (examples/default_model/stage*.yaml) continued stage 1; each run keeps its base's record
    stage8 = provenance["base"]
    assert {f["file"] for f in stage8["files"]} == {
        "lab_train7.extxyz",
        "lab_train8.extxyz",
        "lab_train9.extxyz",
        "lab_dfpt_train.extxyz",
    }
    stage7 = stage8["base"]
    assert {f["file"] for f in stage7["files"]} == {
        "lab_train3.extxyz",
        "lab_train4.extxyz",
        "lab_train5.extxyz",
        "lab_train6.extxyz",
        "lab_replay.extxyz",
        "lab_dfpt_train.extxyz",
    }
    stage6 = stage7["base"]
    assert {f["file"] for f in stage6["files"]} == {
        "lab_train3.extxyz",
        "lab_train4.extxyz",
        "lab_train5.extxyz",
        "lab_replay.extxyz",
        "lab_dfpt_train.extxyz",
    }
    stage5 = stage6["base"]
    assert {f["file"] for f in stage5["files"]} == {
        "lab_train3.extxyz",
        "lab_train4.extxyz",
        "lab_replay.extxyz",
        "lab_dfpt_train.extxyz",
    }
    stage4 = stage5["base"]
    assert {f["file"] for f in stage4["files"]} == {"lab_train3.extxyz", "lab_replay.extxyz", "lab_dfpt_train.extxyz"}
    stage3 = stage4["base"]
    assert {f["file"] for f in stage3["files"]} == {"lab_train.extxyz", "lab_train2.extxyz", "lab_dfpt_train.extxyz"}
    stage1 = stage3["base"]["base"]
    assert {f["file"] for f in stage1["files"]} == {"lab_train.extxyz", "lab_dfpt_train.extxyz"}


def test_default_model_predicts_sensible_silicon():
    """Not a benchmark (bench/accuracy.py is): only that the shipped weights are trained ones, not a placeholder —
    diamond Si at its experimental lattice constant is near zero stress, and compressing it raises the pressure."""
    model = mtsim.load(device="cpu")
    pressures = []
    for a in (5.43, 5.25):
        p = model.predict(bulk("Si", "diamond", a=a))
        pressures.append(-np.trace(p.stress) / 3 / GPA)
        np.testing.assert_allclose(p.forces, 0.0, atol=1e-3)  # zero by symmetry
        assert np.abs(p.born_charges).max() < 1.0  # non-polar covalent crystal: small Z*
        assert 8.0 < np.trace(p.dielectric) / 3 < 16.0  # experiment: 11.7
    assert abs(pressures[0]) < 5.0 and pressures[1] > pressures[0] + 5.0


def test_shipped_files_come_from_the_shipped_checkpoint():
    from mtsim.training.checkpoint import file_sha256

    digest = file_sha256(CHECKPOINT)
    for precision in PRECISIONS:
        info = check_onnx_file(MODELS_DIR / f"{DEFAULT_MODEL}.{precision}.onnx")
        assert info.metadata["source_checkpoint_sha256"] == digest


@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_model_passes_export_parity_against_its_checkpoint(precision):
    pytest.importorskip("torch")
    from mtsim.converters.validate import validate_export

    report = validate_export(CHECKPOINT, MODELS_DIR / f"{DEFAULT_MODEL}.{precision}.onnx")
    assert report.passed, report.table("worst")


def test_info_summarises_the_training_data_of_the_bundled_model():
    from click.testing import CliRunner

    from mtsim.cli import main

    path = MODELS_DIR / f"{DEFAULT_MODEL}.float32.onnx"
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    training_data = mtsim.load(path, device="cpu").metadata["training_data"]
    stages = []
    record = json.loads(training_data)
    while record is not None:
        stages.append(record)
        record = record.get("base")
    stages.reverse()
    section = result.output.split("source checkpoint sha256")[0].split("training data")[1]
    assert f"{len(stages)} stage(s)" in section
    for k, stage in enumerate(stages, 1):
        line = next(row for row in section.splitlines() if row.strip().startswith(f"stage {k}:"))
        assert f"energy/forces/magmoms/stress {stage['labels']['energy']:,}" in line
        assert f"born_charges/dielectric {stage['labels']['born_charges']:,}" in line
    assert "lab_train12.extxyz" in section and len(section) < 5000  # the record is ~12,000 characters of JSON
    full = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)
    assert full["metadata"]["training_data"] == training_data


def test_training_data_summary_of_a_two_stage_record_and_of_plain_text():
    from mtsim.converters.cli import describe_training_data

    first = {"description": "first", "files": [{"file": "a.xyz", "sha256": "0"}], "labels": {"energy": 3, "forces": 3}}
    second = {
        "description": "second run",
        "files": [{"file": "b.xyz", "sha256": "1"}],
        "labels": {"energy": 5, "forces": 5, "charges": 0},
        "base": first,
    }
    lines = describe_training_data(json.dumps(second))
    assert lines[0].startswith("2 stage(s), oldest first")
    assert lines[1] == "stage 1: energy/forces 3" and lines[2] == "  files: a.xyz"
    assert lines[3] == "stage 2: energy/forces 5, charges 0" and lines[4] == "  files: b.xyz"
    assert lines[5] == "stage 2 description: second run"
    assert describe_training_data("untrained / none") == ["untrained / none"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shipped_weights_checksum_is_verified(precision, tmp_path):
    """The shipped files carry weights_sha256 and load; one flipped exponent bit in a weight raises
    CorruptWeightsError (it loaded and predicted forces of 1e284 eV/Å before); a file without the key loads with a
    warning; ``mtsim info`` shows the checksum."""
    import onnx
    from click.testing import CliRunner

    from mtsim.cli import main as cli_main
    from mtsim.onnx_format import CorruptWeightsError, ModelFileError, weights_sha256

    path = MODELS_DIR / f"{DEFAULT_MODEL}.{precision}.onnx"
    model = mtsim.load(path)
    assert model.metadata["weights_sha256"] == weights_sha256(path)
    proto = onnx.load(path)
    assert (
        weights_sha256(path)
        == __import__("hashlib").sha256(b"".join(init.raw_data for init in proto.graph.initializer)).hexdigest()
    )
    data = bytearray(path.read_bytes())
    weight = max(proto.graph.initializer, key=lambda init: len(init.raw_data)).raw_data
    offset = bytes(data).find(weight)
    itemsize = np.dtype(precision).itemsize
    data[offset + itemsize - 1] ^= 0x40  # the highest exponent bit of the first value (little-endian)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError, match="do not match the file's checksum"):
        mtsim.load(corrupt)
    assert issubclass(CorruptWeightsError, ModelFileError)
    for entry in proto.metadata_props:
        if entry.key == "weights_sha256":
            proto.metadata_props.remove(entry)
            break
    older = tmp_path / "older.onnx"
    onnx.save(proto, older)
    with pytest.warns(UserWarning, match="no weights_sha256"):
        mtsim.load(older)
    result = CliRunner().invoke(cli_main, ["info", str(path)])
    assert result.exit_code == 0 and f"weights sha256             {weights_sha256(path)}" in result.output
