"""The YAML schema of ``mtsim train CONFIG.yaml``: dataclasses, one per section, with validation.

Every key is optional except ``data.train``. Unknown keys are errors that name the key (``optimizer.lrr``);
values of the wrong type are errors that name the field. Relative paths are relative to the config file. Floats
may be written ``5e-5`` (YAML 1.1 would read that as a string; the loader here follows YAML 1.2). A commented
example is ``examples/train_tiny.yaml``.
"""

from __future__ import annotations

import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Literal

import yaml

from mtsim.training.model import PRESETS, ModelConfig

Task = Literal["energy", "forces", "stress", "magmoms", "charges", "born_charges", "dielectric"]
Head = Literal["energy", "magmoms", "charges", "born_charges", "dielectric"]


class ConfigError(ValueError):
    """An invalid training configuration; the message names the offending key."""


@dataclass
class ModelSection:
    """The network: a Table S1 preset, optionally resized (unset sizes keep the preset's). When fine-tuning, the
    checkpoint fixes the architecture: ``preset`` is ignored and the sizes must stay unset."""

    preset: Literal["1M", "10M", "220M", "1.3B"] = "1M"
    dtype: Literal["float32", "float64"] = "float32"
    num_blocks: int | None = None
    dim: int | None = None
    ffn_dim: int | None = None
    num_heads: int | None = None
    num_gaussians: int | None = None
    cutoff: float | None = None
    """Å."""
    repulsion: bool | None = None
    """The ZBL pair repulsion under the learned energy. Unset: on for a new model (every preset has it), as in the
    checkpoint when fine-tuning; ``true`` adds it to a checkpoint without it (it has no weights)."""

    def overrides(self) -> dict:
        """The sizes that are set, as ``build_model`` keyword arguments."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("preset", "dtype", "repulsion") and getattr(self, f.name) is not None
        }


@dataclass
class DataSection:
    """Structures with (partial) labels; see ``mtsim.training.data`` for units and where labels are read."""

    train: list[str]
    """extxyz files, ASE databases (``.db``) or any format ``ase.io.read`` reads."""
    val: list[str] = field(default_factory=list)
    """Validation files (early stopping, best checkpoint). Empty: hold out ``val_fraction`` of ``train``."""
    val_fraction: float = 0.1
    """Seeded random fraction of the training structures held out when ``val`` is empty (0: no validation)."""
    keys: dict[Task, list[str]] = field(default_factory=dict)
    """Label -> keys to look for in the files, replacing ``data.DEFAULT_KEYS`` (``[]`` ignores a label)."""
    batch_size: int = 8
    """Structures per optimizer step."""


@dataclass
class LossSection:
    """Weights of the loss terms (Table S2); 0 drops a term. Units: eV/atom, eV/Å, GPa, μB, e, e, 1."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.07
    magmoms: float = 1.0
    charges: float = 1.0
    born_charges: float = 1.0
    dielectric: float = 1.0


@dataclass
class OptimizerSection:
    """AdamW (Table S2). ``head_lr``/``backbone_lr`` (S7.1) default to ``lr``; 0 freezes those parameters."""

    lr: float = 5e-5
    """Peak learning rate."""
    head_lr: float | None = None
    backbone_lr: float | None = None
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 10.0
    """Maximum global gradient norm (null: no clipping)."""


@dataclass
class ScheduleSection:
    """Linear warm-up to the peak learning rate, then linear decay to zero at the end of ``epochs``."""

    epochs: int = 23
    warmup_epochs: float = 1.0
    ema_decay: float = 0.99
    """Decay of the exponential moving average of the weights (validated and saved)."""
    patience: int | None = 3
    """Stop after this many epochs without a lower validation loss (null: never stop early)."""
    checkpoint_every: int | None = None
    """Also write ``last.pt`` every this many steps (it is always written at the end of an epoch)."""


@dataclass
class FinetuneSection:
    """Fine-tuning (S7.1): start from ``checkpoint`` and re-initialise the listed heads."""

    checkpoint: str | None = None
    reinit_heads: list[Head] = field(default_factory=list)
    energy_offsets: str | None = None
    """JSON of per-element offsets δ (eV per atom, ``{"offsets_eV_per_atom": {"Si": ..., ...}}``, as written by
    ``python -m mtsim.training.builders.dft align``) from the checkpoint's energy scale to the data's: each
    reference energy becomes E_Z - δ_Z before training."""


@dataclass
class TrainConfig:
    """A training run. Outputs go to ``run_dir``: ``last.pt`` (resumable), ``best.pt`` (the EMA weights with the
    lowest validation loss) and ``metrics.jsonl`` (one record per epoch); an ensemble writes ``member_<k>/``."""

    data: DataSection
    run_dir: str = "runs/train"
    seed: int = 0
    """Initialisation, validation split and data order."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    ensemble: int = 1
    """Number of independently initialised members (seeds ``seed``, ``seed + 1``, ...), for eq. (22)."""
    normalise: bool = True
    """Fit the reference energies and output scales of every freshly initialised head to the training set."""
    model_name: str | None = None
    """Name written into checkpoints and ONNX metadata (default ``mtsim-<preset>``)."""
    training_data: str | None = None
    """Provenance of the labels in words (e.g. the teacher model and the DFT level); recorded with the sha256 of
    every data file in the checkpoint and the ONNX metadata."""
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def to_dict(self) -> dict:
        """Plain nested dict (stored in checkpoint metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Parse and validate a plain dict (as read from YAML); ``ConfigError`` names the first bad key."""
        config = _parse(cls, data, "")
        _check_values(config)
        return config


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a YAML config; relative paths in it become relative to the file's directory."""
    path = os.fspath(path)
    try:
        with open(path) as handle:
            data = yaml.load(handle, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = TrainConfig.from_dict({} if data is None else data)
    base = os.path.dirname(os.path.abspath(path))

    def resolve(relative: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(relative)))

    config.run_dir = resolve(config.run_dir)
    config.data.train = [resolve(p) for p in config.data.train]
    config.data.val = [resolve(p) for p in config.data.val]
    if config.finetune.checkpoint is not None:
        config.finetune.checkpoint = resolve(config.finetune.checkpoint)
    if config.finetune.energy_offsets is not None:
        config.finetune.energy_offsets = resolve(config.finetune.energy_offsets)
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-5`` as a float (YAML 1.2), not as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


# ------------------------------------------------------------------------------------------------- validation
def _parse(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys to values, got {_kind(data)}")
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(
                f"unknown key {_join(where, key)!r}; {where or 'the top level'} takes: {', '.join(known)}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        name = _join(where, f.name)
        if f.name in data:
            values[f.name] = _convert(data[f.name], hints[f.name], name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"missing required key {name!r}")
    return cls(**values)


def _convert(value, kind, name: str):
    """``value`` checked against the annotation ``kind``; ``ConfigError`` names the field on a mismatch."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if is_dataclass(kind):
        return _parse(kind, value, name)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name!r} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name!r} must be a list, got {_kind(value)}")
        return [_convert(v, args[0], f"{name}[{k}]") for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name!r} must be a mapping, got {_kind(value)}")
        return {
            _convert(k, args[0], f"{name} key"): _convert(v, args[1], _join(name, str(k))) for k, v in value.items()
        }
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name!r} must be {kind.__name__}, got {_kind(value)}")
    return value


def _check_values(config: TrainConfig) -> None:
    """Range and consistency checks that the types alone do not express."""

    def require(ok: bool, name: str, what: str):
        if not ok:
            raise ConfigError(f"{name!r} {what}")

    data, opt, sched = config.data, config.optimizer, config.schedule
    require(len(data.train) > 0, "data.train", "must list at least one file")
    require(0.0 <= data.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    require(data.batch_size >= 1, "data.batch_size", "must be at least 1")
    for task, weight in asdict(config.loss).items():
        require(weight >= 0.0, f"loss.{task}", "must be non-negative")
    require(any(w > 0 for w in asdict(config.loss).values()), "loss", "needs at least one positive weight")
    for name in ("lr", "head_lr", "backbone_lr", "weight_decay", "eps"):
        value = getattr(opt, name)
        require(value is None or value >= 0.0, f"optimizer.{name}", "must be non-negative")
    require(
        max(opt.lr if v is None else v for v in (opt.head_lr, opt.backbone_lr)) > 0,
        "optimizer",
        "freezes every parameter (all learning rates are 0)",
    )
    require(0.0 <= opt.beta1 < 1.0, "optimizer.beta1", "must be in [0, 1)")
    require(0.0 <= opt.beta2 < 1.0, "optimizer.beta2", "must be in [0, 1)")
    require(opt.grad_clip is None or opt.grad_clip > 0, "optimizer.grad_clip", "must be positive or null")
    require(sched.epochs >= 1, "schedule.epochs", "must be at least 1")
    require(0.0 <= sched.warmup_epochs <= sched.epochs, "schedule.warmup_epochs", "must be in [0, epochs]")
    require(0.0 <= sched.ema_decay < 1.0, "schedule.ema_decay", "must be in [0, 1)")
    require(sched.patience is None or sched.patience >= 1, "schedule.patience", "must be at least 1 or null")
    require(
        sched.checkpoint_every is None or sched.checkpoint_every >= 1,
        "schedule.checkpoint_every",
        "must be at least 1 or null",
    )
    require(config.ensemble >= 1, "ensemble", "must be at least 1")
    if config.finetune.checkpoint is not None:
        sizes = config.model.overrides()
        require(
            not sizes,
            f"model.{next(iter(sizes), '')}",
            "cannot be set when fine-tuning (the checkpoint fixes the architecture)",
        )
    else:
        require(not config.finetune.reinit_heads, "finetune.reinit_heads", "needs finetune.checkpoint")
        require(config.finetune.energy_offsets is None, "finetune.energy_offsets", "needs finetune.checkpoint")
        for name, value in config.model.overrides().items():
            require(value > 0, f"model.{name}", "must be positive")
        try:
            ModelConfig(**{**asdict(PRESETS[config.model.preset]), **config.model.overrides()})
        except ValueError as err:
            raise ConfigError(f"'model': {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"
