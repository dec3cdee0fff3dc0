"""Versioned checkpoints: model config + state dict (normalisation buffers included) + metadata.

A checkpoint is a ``torch.save`` dict, loaded with ``weights_only=True`` (no pickled code)::

    {"format": "mtsim-checkpoint", "format_version": 1, "config": {...}, "state_dict": {...},
     "metadata": {...}}
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import asdict

import torch

from mtsim.training.model import ModelConfig, MTModel

CHECKPOINT_FORMAT = "mtsim-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or of an unknown format version."""


def save_checkpoint(model: MTModel, path: str | os.PathLike, metadata: dict | None = None, **extra) -> None:
    """Write ``model`` (config, weights, normalisation) and JSON-like ``metadata`` (default ``model.metadata``).

    ``extra`` entries (optimizer state, EMA weights, ...) are stored alongside for resuming training.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": asdict(model.config),
        "dtype": str(model.dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(model.metadata if metadata is None else metadata),
        **extra,
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, after checking that it is a readable mtsim checkpoint of a known version."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as err:
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an mtsim checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this mtsim reads version {CHECKPOINT_VERSION}"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> MTModel:
    """Rebuild the model stored at ``path`` (in its saved dtype, on the CPU, in eval mode)."""
    payload = read_checkpoint(path)
    model = MTModel(ModelConfig(**payload["config"])).to(getattr(torch, payload.get("dtype", "float32")))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match its own config: {err}") from None
    model.metadata = dict(payload.get("metadata", {}))
    return model.eval()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (checkpoints for the ONNX metadata, data sources for manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
