"""PyTorch model, training and export (needs the ``train`` extra: ``pip install mtsim[train]``)."""

from mtsim.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtsim.training.config import ConfigError, TrainConfig, load_config
from mtsim.training.data import AtomsDataset, collate, read_frames
from mtsim.training.exporter import ExportError, check_graph, export
from mtsim.training.loss import multitask_loss
from mtsim.training.model import PRESETS, PROPERTIES, ModelConfig, MTModel, build_model
from mtsim.training.trainer import Trainer, ensemble_uncertainty, force_spread, rank_by_uncertainty, train

__all__ = [
    "PRESETS",
    "PROPERTIES",
    "AtomsDataset",
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "ModelConfig",
    "MTModel",
    "TrainConfig",
    "Trainer",
    "build_model",
    "check_graph",
    "collate",
    "ensemble_uncertainty",
    "export",
    "force_spread",
    "load_checkpoint",
    "load_config",
    "multitask_loss",
    "rank_by_uncertainty",
    "read_frames",
    "save_checkpoint",
    "train",
]
