"""Write a trained model as an mtsim ONNX file: ``export`` (trace, ``torch.onnx.export``, metadata, checks)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from mtsim.onnx_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_LAYOUT,
    INPUT_NAMES,
    INPUT_SHAPES,
    KEY_FORMAT,
    KEY_SESSION_OPTIONS,
    KEY_VERSION,
    KEY_WEIGHTS_SHA256,
    OUTPUT_NAMES,
    PRECISIONS,
    SESSION_OPTIONS,
    UNITS,
    weights_sha256,
)
from mtsim.training.checkpoint import file_sha256, load_checkpoint
from mtsim.training.exporter.checks import ExportError, check_graph
from mtsim.training.exporter.passes import warn_idle
from mtsim.training.exporter.tracing import trace
from mtsim.training.exporter.translations import custom_translations
from mtsim.training.model import MAX_Z, PROPERTIES, MTModel

OPSET = 18
"""ONNX opset of exported files."""
IR_VERSION = 10
"""ONNX IR version written into exported files (onnxruntime >= 1.20 reads IR 10)."""
UNTRAINED = "untrained / none"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Bytes of weights above which they are written to ``<path>.data`` (protobuf's 2 GB limit)."""

assert tuple(PROPERTIES) == OUTPUT_NAMES, "model outputs and ONNX contract disagree"

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _resolve(model_or_checkpoint) -> tuple[MTModel, str]:
    if isinstance(model_or_checkpoint, MTModel):
        return model_or_checkpoint, "none"
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        path = os.fspath(model_or_checkpoint)
        model = load_checkpoint(path)
        return model, file_sha256(path)
    raise TypeError(f"export() takes an MTModel or a checkpoint path, got {type(model_or_checkpoint).__name__}")


def untrained_outputs(meta: dict) -> list[str]:
    """Outputs whose head no training touched: the outputs of the model's ``untrained_heads`` (recorded by the
    trainer; the energy head gives energy, forces and stress), and every output when the model does not record
    them (a fresh model, or one trained elsewhere: set ``model.metadata["untrained_heads"] = []`` there)."""
    if "untrained_heads" not in meta:
        return list(OUTPUT_NAMES)
    heads = set(meta["untrained_heads"])
    if "energy" in heads:
        heads |= {"forces", "stress"}
    return [name for name in OUTPUT_NAMES if name in heads]


def export_metadata(model: MTModel, precision: str, checkpoint_sha256: str = "none") -> dict[str, str]:
    """The ``metadata_props`` of an export of ``model`` (all values strings)."""
    import mtsim

    meta = dict(getattr(model, "metadata", {}) or {})
    provenance = meta.get("training_data", meta.get("provenance", UNTRAINED))
    written = {
        KEY_FORMAT: FORMAT_NAME,
        KEY_VERSION: str(FORMAT_VERSION),
        "input_layout": INPUT_LAYOUT,
        "model_name": str(meta.get("model_name", meta.get("name", f"mtsim-{model.config.preset}"))),
        "model_preset": model.config.preset,
        "model_config": json.dumps(asdict(model.config), sort_keys=True),
        "cutoff": repr(float(model.config.cutoff)),
        "elements": ",".join(str(z) for z in range(1, MAX_Z + 1)),
        "heads": json.dumps(list(OUTPUT_NAMES)),
        "precision": precision,
        "units": json.dumps(UNITS, ensure_ascii=False),
        "parameter_count": str(model.num_parameters()),
        "training_data": provenance if isinstance(provenance, str) else json.dumps(provenance, sort_keys=True),
        "untrained_outputs": json.dumps(untrained_outputs(meta)),
        "short_range_repulsion": json.dumps(model.repulsion.description()) if model.repulsion else "none",
        "source_checkpoint_sha256": checkpoint_sha256,
        "mtsim_version": getattr(mtsim, "__version__", "unknown"),
        KEY_SESSION_OPTIONS: json.dumps(SESSION_OPTIONS, sort_keys=True),
    }
    if "energy_offsets" in meta:
        written["energy_offsets"] = json.dumps(meta["energy_offsets"], sort_keys=True)
    return written


def export(
    model_or_checkpoint,
    path: str | os.PathLike,
    precision: str = "float32",
    *,
    metadata: dict[str, str] | None = None,
    checkpoint_sha256: str | None = None,
    verbose: bool = False,
) -> dict[str, str]:
    """Write ``model_or_checkpoint`` (an ``MTModel`` or a checkpoint path) to ``path`` as an mtsim ONNX file.

    ``precision`` ("float32" or "float64") is the type of every float input, output and weight of the file.
    ``metadata`` entries are added to (or override) the written metadata; ``checkpoint_sha256`` records the
    source checkpoint of an in-memory model (computed automatically when a path is given). Runs
    ``check_graph`` on the result and raises ``ExportError`` (writing nothing) if the graph breaks the
    contract. Returns the metadata written.
    """
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    source, source_sha256 = _resolve(model_or_checkpoint)
    checkpoint_sha256 = checkpoint_sha256 or source_sha256
    dtype = _TORCH_DTYPES[precision]
    model = copy.deepcopy(source).to(device="cpu", dtype=dtype).eval().requires_grad_(False)

    start = time.perf_counter()
    graph_module, args = trace(model, dtype)
    warn_idle(graph_module.meta["rewrites"])
    traced = time.perf_counter()
    from torch.export import Dim

    dims = {name: Dim(name) for name in ("n", "e", "b", "kr", "ks")}
    dynamic_shapes = tuple(
        {axis: dims[size] for axis, size in enumerate(INPUT_SHAPES[name]) if isinstance(size, str)}
        for name in INPUT_NAMES
    )
    with _quiet(not verbose):
        program = torch.onnx.export(
            graph_module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            verbose=verbose,
            report=False,
            custom_translation_table=custom_translations(),
        )
    proto = program.model_proto
    exported = time.perf_counter()

    proto.ir_version = IR_VERSION
    proto.producer_name = "mtsim"
    written = export_metadata(model, precision, checkpoint_sha256)
    written.update({str(k): str(v) for k, v in (metadata or {}).items()})
    weight_bytes = sum(np.prod(init.dims) * (8 if precision == "float64" else 4) for init in proto.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD  # weights beside the file carry no checksum
    written.pop(KEY_WEIGHTS_SHA256, None)  # computed from the weights below
    del proto.metadata_props[:]
    for key, value in written.items():
        proto.metadata_props.add(key=key, value=value)
    if not external:
        proto.metadata_props.add(key=KEY_WEIGHTS_SHA256, value=weights_sha256(proto.SerializeToString()))
        written[KEY_WEIGHTS_SHA256] = proto.metadata_props[-1].value
    check_graph(proto, precision)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"exported ONNX model is invalid: {err}") from None

    path = os.fspath(path)
    tmp = f"{path}.tmp"
    if external:
        onnx.save_model(
            proto,
            tmp,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=os.path.basename(path) + ".data",
        )
    else:
        onnx.save_model(proto, tmp)
    os.replace(tmp, path)
    if verbose:
        print(
            f"traced in {traced - start:.1f} s (rewrites {graph_module.meta['rewrites']}), exported in "
            f"{exported - traced:.1f} s, {len(proto.graph.node)} nodes -> {path}"
        )
    return written


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence the exporter's progress prints, its warnings and its logging (e.g. 'torchvision is not installed')."""
    if not enabled:
        yield
        return
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
