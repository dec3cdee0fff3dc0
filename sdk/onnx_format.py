"""The mtsim ONNX file format: names, metadata keys, and a torch-free reader/checker.

An mtsim ONNX file (written by ``mtsim.training.export`` / ``mtsim convert``) is one fixed graph per precision:

* inputs (``INPUT_NAMES``, the "flat-edges+slots" layout of format version 2): ``numbers`` int64 [n],
  ``positions`` [n,3], ``cell`` [b,3,3], ``batch`` int64 [n], ``edge_index`` int64 [2,e], ``shifts`` [e,3],
  ``receiver_slots`` int64 [n,kr], ``sender_slots`` int64 [n,ks];
  floats in the file's precision (float32 or float64); n, e, b, kr and ks are symbolic;
* outputs (``OUTPUT_NAMES``, in this order): ``energy`` [b], ``forces`` [n,3], ``stress`` [b,3,3],
  ``magmoms`` [n], ``charges`` [n], ``born_charges`` [n,3,3], ``dielectric`` [b,3,3];
* ``metadata_props`` (all values are strings; JSON where noted), see ``METADATA_KEYS``.

This module imports neither torch nor onnxruntime at import time, so the SDK can use it. ``read_onnx_file``
uses the ``onnx`` package when it is installed and falls back to onnxruntime otherwise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

FORMAT_NAME = "mtsim-onnx"
"""Value of the ``mtsim_format`` metadata key."""
FORMAT_VERSION = 2
"""Version written by this mtsim (``mtsim_format_version``). Bump it when inputs, outputs or units change."""
SUPPORTED_FORMAT_VERSIONS = (2,)
"""Versions this mtsim reads. A version-1 file (no slot inputs) is refused with a request to re-export the
checkpoint."""
INPUT_LAYOUT = "flat-edges+slots"
"""``input_layout`` of format version 2: edges as an [2,e] index list plus [e,3] integer cell shifts, and
``receiver_slots``/``sender_slots`` [n,k] (each atom's edges, padded with e; ``mtsim.graph.edge_slots``), so that
the graph sums over edges by gathering instead of scattering."""

INPUT_NAMES = ("numbers", "positions", "cell", "batch", "edge_index", "shifts", "receiver_slots", "sender_slots")
OUTPUT_NAMES = ("energy", "forces", "stress", "magmoms", "charges", "born_charges", "dielectric")
PRECISIONS = ("float32", "float64")

INPUT_SHAPES = {
    "numbers": ("n",),
    "positions": ("n", 3),
    "cell": ("b", 3, 3),
    "batch": ("n",),
    "edge_index": (2, "e"),
    "shifts": ("e", 3),
    "receiver_slots": ("n", "kr"),
    "sender_slots": ("n", "ks"),
}
OUTPUT_SHAPES = {
    "energy": ("b",),
    "forces": ("n", 3),
    "stress": ("b", 3, 3),
    "magmoms": ("n",),
    "charges": ("n",),
    "born_charges": ("n", 3, 3),
    "dielectric": ("b", 3, 3),
}
INTEGER_INPUTS = ("numbers", "batch", "edge_index", "receiver_slots", "sender_slots")

UNITS = {
    "positions": "Å",
    "cell": "Å",
    "shifts": "1 (integer cell shifts)",
    "energy": "eV",
    "forces": "eV/Å",
    "stress": "eV/Å^3",
    "magmoms": "μB",
    "charges": "e",
    "born_charges": "e",
    "dielectric": "1",
}

# metadata keys ---------------------------------------------------------------------------------------------
KEY_FORMAT = "mtsim_format"
KEY_VERSION = "mtsim_format_version"
KEY_SESSION_OPTIONS = "onnxruntime_session_options"
METADATA_KEYS = {
    KEY_FORMAT: f"always {FORMAT_NAME!r}",
    KEY_VERSION: "integer format version",
    "input_layout": "input layout of this version (flat-edges+slots)",
    "model_name": "name of the model (preset name unless the checkpoint metadata names it)",
    "model_preset": "Table S1 size preset (1M, 10M, 220M, 1.3B or custom)",
    "model_config": "JSON: the ModelConfig the model was built with",
    "cutoff": "neighbour cutoff in Å (float)",
    "elements": "supported atomic numbers, comma-separated (e.g. 1,2,...,94)",
    "heads": "JSON list of outputs, in output order",
    "precision": "float32 or float64 (type of every float input and output)",
    "units": "JSON: unit of every input and output",
    "parameter_count": "number of trained parameters (integer)",
    "training_data": "training-data provenance (JSON or text; 'untrained / none' for a fresh model)",
    "source_checkpoint_sha256": "sha256 of the checkpoint file exported from ('none' if exported from memory)",
    "mtsim_version": "version of mtsim that wrote the file",
}
REQUIRED_KEYS = tuple(METADATA_KEYS)
OPTIONAL_KEYS = {
    "untrained_outputs": "JSON list of outputs whose head was never trained: their values are not predictions "
    "(absent: not recorded)",
    "short_range_repulsion": "JSON: form and parameters of the pair repulsion inside the energy (ZBL with a switch), "
    "or 'none' (absent: none)",
    "energy_offsets": "JSON: the per-element offsets by which fine-tuning moved the energy scale, E_Z -> E_Z - "
    "eV[Z] (eV per atom; e.g. from CHGNet's MPtrj scale to GPAW PBE's), with the offsets file and its sha256 "
    "(absent: the scale of the training data, never moved)",
    KEY_SESSION_OPTIONS: "JSON: onnxruntime SessionOptions per device (cpu, cuda) the graph needs (absent: "
    "SESSION_OPTIONS)",
    "weights_sha256": "sha256 of the weights (every initializer's data bytes in graph order, ``weights_sha256()``), "
    "verified by mtsim.load (absent: older files, loaded with a warning)",
}
KEY_WEIGHTS_SHA256 = "weights_sha256"
"""The metadata key of the weights' checksum."""

SESSION_OPTIONS = {"cpu": {"enable_mem_pattern": False, "execution_order": "PRIORITY_BASED"}}
"""What onnxruntime must be told to run the exported graph well, per device (``cpu``, ``cuda``): ``SessionOptions``
attributes, enums by name. The exporter writes it as JSON under ``KEY_SESSION_OPTIONS``; files without that key get
it too (``mtsim.session.open_session``). On the CPU: nodes in graph order, which the export's gather
rematerialisation relies on (half the peak memory), and no memory pattern (planned per input shape: the first two
calls of each new shape ran 2-3x slower and later calls held a second copy of every buffer)."""

DTYPES = (  # ONNX TensorProto data type, numpy name, onnxruntime type string
    (1, "float32", "tensor(float)"),
    (11, "float64", "tensor(double)"),
    (10, "float16", "tensor(float16)"),
    (16, "bfloat16", "tensor(bfloat16)"),
    (7, "int64", "tensor(int64)"),
    (6, "int32", "tensor(int32)"),
    (9, "bool", "tensor(bool)"),
)
"""The element types mtsim names: one row per type."""
DTYPE_NAMES = {proto: name for proto, name, _ in DTYPES}
"""ONNX TensorProto data type -> numpy name."""
ONNX_DTYPES = {name: proto for proto, name, _ in DTYPES}
"""numpy name -> ONNX TensorProto data type."""
ORT_DTYPE_NAMES = {ort: name for _, name, ort in DTYPES}
"""onnxruntime type string (``NodeArg.type``) -> numpy name."""


class ModelFileError(ValueError):
    """A model file is missing, corrupt, not an mtsim model, or of an unsupported format version (base class)."""


class OnnxFormatError(ModelFileError):
    """An ONNX file cannot be used as an mtsim model (base class of the errors below)."""


class OnnxFileNotFoundError(OnnxFormatError, FileNotFoundError):
    """The ONNX file does not exist (also a ``FileNotFoundError``)."""


class CorruptOnnxError(OnnxFormatError):
    """The file is not a readable ONNX model (corrupt, truncated or not ONNX at all)."""


class NotMtsimOnnxError(OnnxFormatError):
    """A valid ONNX model that was not written by mtsim (no ``mtsim_format`` metadata) or breaks the contract."""


class UnsupportedFormatVersionError(OnnxFormatError):
    """An mtsim ONNX file of a format version this mtsim cannot read."""


class CorruptWeightsError(OnnxFormatError):
    """The weights of a model file do not match the checksum it carries (``weights_sha256``): the file was
    damaged after it was written."""


@dataclass
class OnnxModelInfo:
    """What ``read_onnx_file`` found. Shapes use ints for fixed dims and strings for symbolic ones."""

    path: str
    metadata: dict[str, str]
    inputs: list[tuple[str, str, tuple]]  # (name, element type, shape)
    outputs: list[tuple[str, str, tuple]]
    reader: str  # "onnx" or "onnxruntime"
    opset: int | None = None
    ir_version: int | None = None
    node_count: int | None = None
    parameter_count: int | None = None  # elements of all initializers (None where unreadable)
    op_counts: dict[str, int] | None = None
    unavailable: list[str] = field(default_factory=list)  # what the reader could not tell

    # parsed metadata (valid after check_mtsim_metadata) ----------------------------------------------------
    @property
    def format_version(self) -> int:
        return int(self.metadata[KEY_VERSION])

    @property
    def precision(self) -> str:
        return self.metadata["precision"]

    @property
    def cutoff(self) -> float:
        return float(self.metadata["cutoff"])

    @property
    def elements(self) -> tuple[int, ...]:
        return tuple(int(z) for z in self.metadata["elements"].split(","))

    @property
    def input_layout(self) -> str:
        return self.metadata["input_layout"]

    def json(self, key: str):
        """Metadata value ``key`` parsed as JSON (``model_config``, ``units``, ``heads``, ...)."""
        return json.loads(self.metadata[key])


def read_onnx_file(path: str | os.PathLike, prefer: str = "onnx") -> OnnxModelInfo:
    """Read metadata, inputs, outputs (and with ``onnx``: opset, node and parameter counts) of any ONNX file.

    Raises ``OnnxFileNotFoundError`` or ``CorruptOnnxError``; does not check that the file is an mtsim model
    (``check_onnx_file`` does). ``prefer="onnxruntime"`` skips the ``onnx`` package.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise OnnxFileNotFoundError(f"ONNX file not found: {path}")
    if not os.path.isfile(path):
        raise CorruptOnnxError(f"{path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise CorruptOnnxError(f"{path} is empty (0 bytes): not an ONNX model")
    if prefer == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            prefer = "onnxruntime"
    return _read_with_onnx(path) if prefer == "onnx" else _read_with_onnxruntime(path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read from its top-level protobuf fields without parsing the graph
    (needs neither onnx nor onnxruntime; reads a few hundred bytes). Raises ``OnnxFileNotFoundError`` or
    ``CorruptOnnxError``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OnnxFileNotFoundError(f"ONNX file not found: {path}")
    size = os.path.getsize(path)
    metadata = {}
    with open(path, "rb") as file:
        try:
            while file.tell() < size:
                field, wire = divmod(_varint(file), 8)
                if wire == 0:
                    _varint(file)
                elif wire in (1, 5):
                    file.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                elif wire == 2:
                    length = _varint(file)
                    if file.tell() + length > size:
                        raise ValueError("a field runs past the end of the file")
                    if field == _METADATA_PROPS:
                        entry = _string_fields(file.read(length))
                        metadata[entry.get(1, "")] = entry.get(2, "")
                    else:
                        file.seek(length, os.SEEK_CUR)
                else:
                    raise ValueError(f"protobuf wire type {wire}")
            if file.tell() != size:
                raise ValueError("the last field runs past the end of the file")
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptOnnxError(f"{path} is not a readable ONNX model (corrupt or truncated): {err}") from None
    return metadata


_METADATA_PROPS = 14
"""Field number of ``ModelProto.metadata_props`` (entries: key = 1, value = 2)."""
_GRAPH, _INITIALIZER, _DATA_LOCATION = 7, 5, 14
"""Field numbers of ``ModelProto.graph``, ``GraphProto.initializer`` and ``TensorProto.data_location``."""
_TENSOR_DATA = (4, 5, 7, 9, 10, 11)
"""Field numbers of the data of a ``TensorProto``: float_data, int32_data, int64_data, raw_data, double_data,
uint64_data."""


def _fields(data: memoryview, start: int, end: int):
    """The fields of the protobuf message ``data[start:end]``: (number, wire type, value start, value end); for
    length-delimited fields the value is the payload."""
    position = start
    while position < end:
        key, position = _varint_at(data, position)
        field, wire = divmod(key, 8)
        if wire == 0:
            _, after = _varint_at(data, position)
        elif wire in (1, 5):
            after = position + (8 if wire == 1 else 4)
        elif wire == 2:
            length, position = _varint_at(data, position)
            after = position + length
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if after > end:
            raise ValueError("a field runs past the end of its message")
        yield field, wire, position, after
        position = after


def _varint_at(data: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("the file ends inside a number")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("a number longer than 64 bits")


def weights_sha256(source: str | os.PathLike | bytes) -> str:
    """sha256 (hex) of a model's weights: the data bytes (as stored: ``raw_data`` or the packed typed fields) of
    every initializer of the main graph, in graph order. ``source``: a file path or the serialized model. Reads the
    protobuf directly (neither onnx nor onnxruntime). Raises ``CorruptOnnxError`` for unreadable data and
    ``NotMtsimOnnxError`` for weights stored outside the file (external data)."""
    import hashlib

    path = "the model" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes):
        with open(source, "rb") as file:
            source = file.read()
    data, digest = memoryview(source), hashlib.sha256()
    try:
        for field, wire, start, end in _fields(data, 0, len(data)):
            if field != _GRAPH or wire != 2:
                continue
            for g_field, g_wire, g_start, g_end in _fields(data, start, end):
                if g_field != _INITIALIZER or g_wire != 2:
                    continue
                for t_field, _, t_start, t_end in _fields(data, g_start, g_end):
                    if t_field == _DATA_LOCATION and data[t_start] == 1:
                        raise NotMtsimOnnxError(
                            f"{path} keeps its weights in an external file; their checksum is not verified"
                        )
                    if t_field in _TENSOR_DATA:
                        digest.update(data[t_start:t_end])
    except ValueError as err:
        raise CorruptOnnxError(f"{path} is not a readable ONNX model (corrupt or truncated): {err}") from None
    return digest.hexdigest()


def verify_weights(path: str | os.PathLike, metadata: dict[str, str]) -> bool:
    """Check the file's weights against its ``weights_sha256`` metadata: ``CorruptWeightsError`` if they differ;
    False (and a warning) for a file without the key or with external weights, True when verified."""
    import warnings

    expected = metadata.get(KEY_WEIGHTS_SHA256)
    if expected is None:
        warnings.warn(
            f"{path} carries no {KEY_WEIGHTS_SHA256}: its weights cannot be verified (re-export it with "
            "`mtsim convert`)",
            UserWarning,
            stacklevel=3,
        )
        return False
    try:
        found = weights_sha256(path)
    except NotMtsimOnnxError as err:
        warnings.warn(str(err), UserWarning, stacklevel=3)
        return False
    if found != expected:
        raise CorruptWeightsError(
            f"{path}: the weights do not match the file's checksum ({KEY_WEIGHTS_SHA256} "
            f"{expected[:16]}..., found {found[:16]}...): the file is damaged; download or "
            "export it again"
        )
    return True


def _varint(stream) -> int:
    value, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise ValueError("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a number longer than 64 bits")


def _string_fields(data: bytes) -> dict[int, str]:
    """The length-delimited fields of a protobuf message as UTF-8 strings (a ``StringStringEntryProto``)."""
    import io

    stream, fields = io.BytesIO(data), {}
    while stream.tell() < len(data):
        field, wire = divmod(_varint(stream), 8)
        if wire != 2:
            raise ValueError(f"metadata entry field {field} has wire type {wire}")
        length = _varint(stream)
        value = stream.read(length)
        if len(value) != length:
            raise ValueError("a metadata entry runs past its end")
        fields[field] = value.decode("utf-8")
    return fields


def _shape_of(value_info) -> tuple:
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return tuple(dims)


def _read_with_onnx(path: str) -> OnnxModelInfo:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # DecodeError and friends: protobuf raises several unrelated types
        raise CorruptOnnxError(f"{path} is not a readable ONNX model (corrupt or truncated): {err}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise CorruptOnnxError(f"{path} holds no ONNX graph (corrupt, truncated or not an ONNX file)")
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}

    def io(values, skip=()):
        return [
            (v.name, DTYPE_NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)), _shape_of(v))
            for v in values
            if v.name not in skip
        ]

    op_counts: dict[str, int] = {}
    for node in _all_nodes(model):
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    parameters = sum(math.prod(init.dims) for init in graph.initializer)
    return OnnxModelInfo(
        path=path,
        metadata={p.key: p.value for p in model.metadata_props},
        inputs=io(graph.input, initializer_names),
        outputs=io(graph.output),
        reader="onnx",
        opset=opset,
        ir_version=int(model.ir_version),
        node_count=len(graph.node),
        parameter_count=int(parameters),
        op_counts=op_counts,
    )


def _all_nodes(model):
    """Every node of the main graph, its subgraphs and local functions."""
    stack = [model.graph]
    for function in model.functions:
        yield from function.node
    while stack:
        graph = stack.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _read_with_onnxruntime(path: str) -> OnnxModelInfo:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise CorruptOnnxError(f"{path} is not a readable ONNX model (corrupt or truncated): {err}") from None
    return session_info(path, session)


def session_info(path, session) -> OnnxModelInfo:
    """What an open onnxruntime session tells of its file (metadata, inputs, outputs)."""

    def io(values):
        return [
            (v.name, ORT_DTYPE_NAMES.get(v.type, v.type), tuple(d if d is not None else "?" for d in v.shape))
            for v in values
        ]

    return OnnxModelInfo(
        path=os.fspath(path),
        metadata=dict(session.get_modelmeta().custom_metadata_map),
        inputs=io(session.get_inputs()),
        outputs=io(session.get_outputs()),
        reader="onnxruntime",
        unavailable=["opset", "IR version", "node count", "parameter count", "operator counts"],
    )


def check_mtsim_metadata(info: OnnxModelInfo) -> OnnxModelInfo:
    """Check that ``info`` describes an mtsim ONNX file of a supported version that keeps the contract.

    Raises ``NotMtsimOnnxError`` or ``UnsupportedFormatVersionError``; returns ``info``.
    """
    meta, path = info.metadata, info.path
    if meta.get(KEY_FORMAT) != FORMAT_NAME:
        found = f"{KEY_FORMAT}={meta[KEY_FORMAT]!r}" if KEY_FORMAT in meta else f"no {KEY_FORMAT!r} metadata"
        raise NotMtsimOnnxError(
            f"{path} is not an mtsim ONNX model ({found}); convert a checkpoint with `mtsim convert`"
        )
    raw_version = meta.get(KEY_VERSION)
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        raise UnsupportedFormatVersionError(
            f"{path} has an unreadable {KEY_VERSION} {raw_version!r}; this mtsim reads versions "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
        ) from None
    if version not in SUPPORTED_FORMAT_VERSIONS:
        newer = (
            " (written by a newer mtsim: upgrade mtsim)"
            if version > max(SUPPORTED_FORMAT_VERSIONS)
            else " (written by an older mtsim: re-export its checkpoint with `mtsim convert`)"
        )
        raise UnsupportedFormatVersionError(
            f"{path} has mtsim ONNX format version {version}{newer}; this mtsim reads versions "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise NotMtsimOnnxError(f"{path}: metadata is incomplete (missing {missing}); the file may be truncated")
    if meta["input_layout"] != INPUT_LAYOUT:
        raise UnsupportedFormatVersionError(
            f"{path}: input layout {meta['input_layout']!r} is not {INPUT_LAYOUT!r} (format version {version})"
        )
    precision = meta["precision"]
    if precision not in PRECISIONS:
        raise NotMtsimOnnxError(f"{path}: unknown precision {precision!r} (expected one of {PRECISIONS})")
    try:
        float(meta["cutoff"])
        [int(z) for z in meta["elements"].split(",")]
    except ValueError:
        raise NotMtsimOnnxError(
            f"{path}: unreadable cutoff {meta['cutoff']!r} or elements {meta['elements'][:40]!r}"
        ) from None
    inputs = {name: (dtype, shape) for name, dtype, shape in info.inputs}
    outputs = [name for name, _, _ in info.outputs]
    if tuple(inputs) != INPUT_NAMES:
        raise NotMtsimOnnxError(f"{path}: inputs {list(inputs)} are not {list(INPUT_NAMES)}")
    if tuple(outputs) != OUTPUT_NAMES:
        raise NotMtsimOnnxError(f"{path}: outputs {outputs} are not {list(OUTPUT_NAMES)}")
    for name, (dtype, shape) in inputs.items():
        expected = "int64" if name in INTEGER_INPUTS else precision
        if dtype != expected:
            raise NotMtsimOnnxError(f"{path}: input {name!r} has type {dtype}, expected {expected}")
        if len(shape) != len(INPUT_SHAPES[name]):
            raise NotMtsimOnnxError(f"{path}: input {name!r} has shape {shape}, expected {INPUT_SHAPES[name]}")
    for name, dtype, _ in info.outputs:
        if dtype != precision:
            raise NotMtsimOnnxError(f"{path}: output {name!r} has type {dtype}, expected {precision}")
    return info


def check_onnx_file(path: str | os.PathLike, prefer: str = "onnx") -> OnnxModelInfo:
    """``read_onnx_file`` + ``check_mtsim_metadata``: the one call the SDK needs before opening a session.

    Raises a subclass of ``OnnxFormatError`` with a message naming the problem.
    """
    return check_mtsim_metadata(read_onnx_file(path, prefer=prefer))
