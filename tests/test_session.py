"""One session factory (mtsim.session.open_session) for the SDK and the validator: the session options come from
the file's metadata (onnxruntime_session_options), files without it get SESSION_OPTIONS; the metadata reader."""

import json
import shutil

import onnxruntime as ort
import pytest

from mtsim.model import MODELS_DIR, Model
from mtsim.onnx_format import (
    KEY_SESSION_OPTIONS,
    SESSION_OPTIONS,
    CorruptOnnxError,
    NotMtsimOnnxError,
    OnnxFileNotFoundError,
    read_metadata,
)
from mtsim.session import open_session, session_options

SHIPPED = MODELS_DIR / "mtsim-default.float32.onnx"


def with_metadata(source, target, value):
    """A copy of ``source`` whose session-options metadata is ``value`` (None: without that key)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(source))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != KEY_SESSION_OPTIONS]
    del model.metadata_props[:]
    for key, text in kept + ([(KEY_SESSION_OPTIONS, value)] if value is not None else []):
        model.metadata_props.add(key=key, value=text)
    onnx.save(model, str(target))
    return target


def options_of(session) -> tuple:
    options = session.get_session_options()
    return options.execution_order, options.enable_mem_pattern, options.enable_mem_reuse


def test_sdk_and_validator_read_the_same_options(tmp_path):
    from mtsim.converters.validate import onnx_session

    custom = json.dumps({"cpu": {"execution_order": "DEFAULT", "enable_mem_pattern": True}})
    files = {
        "without key": with_metadata(SHIPPED, tmp_path / "old.onnx", None),
        "default": with_metadata(SHIPPED, tmp_path / "new.onnx", json.dumps(SESSION_OPTIONS)),
        "custom": with_metadata(SHIPPED, tmp_path / "custom.onnx", custom),
    }
    expected = {
        "without key": (ort.ExecutionOrder.PRIORITY_BASED, False, True),
        "default": (ort.ExecutionOrder.PRIORITY_BASED, False, True),
        "custom": (ort.ExecutionOrder.DEFAULT, True, True),
    }
    for name, path in files.items():
        sdk = options_of(Model(path, device="cpu").session)
        validator = options_of(onnx_session(path))
        assert sdk == validator == expected[name], name


def test_session_options_by_device_and_bad_metadata(tmp_path):
    assert session_options({}, "cpu") == SESSION_OPTIONS["cpu"]
    assert session_options({}, "cuda") == {}
    assert session_options({KEY_SESSION_OPTIONS: '{"cuda": {"enable_mem_reuse": false}}'}, "cpu") == {}
    with pytest.raises(ValueError, match="device"):
        session_options({}, "tpu")
    with pytest.raises(NotMtsimOnnxError, match="not JSON"):
        session_options({KEY_SESSION_OPTIONS: "{cpu"}, "cpu")
    for bad, message in (
        ({"cpu": {"execution_order": "SIDEWAYS"}}, "SIDEWAYS"),
        ({"cpu": {"enable_warp_drive": True}}, "enable_warp_drive"),
    ):
        path = with_metadata(SHIPPED, tmp_path / "bad.onnx", json.dumps(bad))
        with pytest.raises(NotMtsimOnnxError, match=message):
            open_session(path)


def test_read_metadata_matches_onnx_and_rejects_broken_files(tmp_path):
    onnx = pytest.importorskip("onnx")
    for path in sorted(MODELS_DIR.glob("*.onnx")):
        assert read_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    data = SHIPPED.read_bytes()
    cut = tmp_path / "cut.onnx"
    for length in (1, 100, len(data) // 2, len(data) - 3):
        cut.write_bytes(data[:length])
        with pytest.raises(CorruptOnnxError, match="cut.onnx"):
            read_metadata(cut)
    (tmp_path / "garbage.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    with pytest.raises(CorruptOnnxError):
        read_metadata(tmp_path / "garbage.onnx")
    with pytest.raises(OnnxFileNotFoundError):
        read_metadata(tmp_path / "missing.onnx")
    shutil.copy(SHIPPED, tmp_path / "copy.onnx")
    assert read_metadata(tmp_path / "copy.onnx")["precision"] == "float32"
