"""The one place an onnxruntime session of an mtsim ONNX file is made (SDK and validator alike).

>>> session = open_session("mtsim-default.float32.onnx", device="cpu")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os

from mtsim.onnx_format import (
    KEY_SESSION_OPTIONS,
    SESSION_OPTIONS,
    CorruptOnnxError,
    NotMtsimOnnxError,
    OnnxFileNotFoundError,
    read_metadata,
)

DEVICES = ("cpu", "cuda")


def session_options(metadata: dict[str, str], device: str) -> dict:
    """The ``SessionOptions`` attributes the file with ``metadata`` asks for on ``device`` (``SESSION_OPTIONS``
    where the file does not say)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    options = SESSION_OPTIONS
    if KEY_SESSION_OPTIONS in metadata:
        try:
            options = json.loads(metadata[KEY_SESSION_OPTIONS])
        except ValueError:
            raise NotMtsimOnnxError(
                f"unreadable {KEY_SESSION_OPTIONS} metadata {metadata[KEY_SESSION_OPTIONS][:80]!r} (not JSON)"
            ) from None
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise NotMtsimOnnxError(
                f"{KEY_SESSION_OPTIONS} metadata must map devices to option dicts, got "
                f"{metadata[KEY_SESSION_OPTIONS][:80]!r}"
            )
    return dict(options.get(device, {}))


def _apply(options, settings: dict) -> None:
    """Set ``settings`` (attribute -> value, enums by name) on an ``ort.SessionOptions``."""
    import onnxruntime as ort

    enums = {
        "execution_order": ort.ExecutionOrder,
        "execution_mode": ort.ExecutionMode,
        "graph_optimization_level": ort.GraphOptimizationLevel,
    }
    for name, value in settings.items():
        if name in enums:
            if not hasattr(enums[name], str(value)):
                raise NotMtsimOnnxError(
                    f"{KEY_SESSION_OPTIONS}: {name}={value!r} is not an onnxruntime {enums[name].__name__}"
                )
            value = getattr(enums[name], value)
        elif not (hasattr(options, name) and isinstance(value, (bool, int, float, str))):
            raise NotMtsimOnnxError(f"{KEY_SESSION_OPTIONS}: {name!r} is not an onnxruntime session option")
        setattr(options, name, value)


def open_session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None, cpu_arena: bool = True):
    """An onnxruntime ``InferenceSession`` of the ONNX file ``path`` on ``device`` ("cpu" or "cuda"), with the
    session options its metadata asks for (``session_options``), ``threads`` intra-op threads (None or 0:
    onnxruntime's default) and, with ``cpu_arena=False``, onnxruntime's CPU memory arena off.

    On "cuda": full float32 matrix products (no TF32) and no memory reuse between nodes (with it, onnxruntime
    1.31's CUDA provider hands one small shape tensor's buffer to another and the graph fails or computes wrong
    shapes). Raises ``OnnxFileNotFoundError``, ``CorruptOnnxError`` or, when onnxruntime cannot start its CUDA
    provider, ``RuntimeError``.
    """
    import onnxruntime as ort

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OnnxFileNotFoundError(f"model file not found: {path}")
    options = ort.SessionOptions()
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
        options.enable_mem_reuse = False
    _apply(options, session_options(read_metadata(path), device))
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not cpu_arena:
        options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels of the cuda extra, where installed
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for corrupt files
        raise CorruptOnnxError(f"{path} is not a readable ONNX model (corrupt or truncated): {err}") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(
            "onnxruntime could not start its CUDA provider (are CUDA 13 and cuDNN 9 installed? "
            "pip install 'mtsim[cuda]'); load the model with device='cpu' to run on the CPU"
        )
    return session
