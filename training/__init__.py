"""PyTorch model, training and export (needs the ``train`` extra: ``pip install mtsim[train]``)."""

from mtsim.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtsim.training.model import PRESETS, PROPERTIES, ModelConfig, MTModel, build_model

__all__ = ["PRESETS", "PROPERTIES", "CheckpointError", "ModelConfig", "MTModel", "build_model",
           "load_checkpoint", "save_checkpoint"]
