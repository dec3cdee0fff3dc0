"""Training loop (Section S1.3), fine-tuning (S7.1) and ensembles with the force-spread uncertainty (S2.2, eq. 22).

A run (``train``) writes to its ``run_dir``:

- ``last.pt``: an mtsim checkpoint of the EMA weights plus, under ``"training"``, everything needed to continue
  bit for bit: raw weights, AdamW and scheduler state, RNG state, epoch, step and the running epoch metrics.
  The data order of an epoch is a permutation fixed by ``(seed, epoch)``, so a run of N steps equals a run of
  k steps, resumed, then N - k steps (on the CPU; GPU scatter kernels are not bitwise deterministic).
- ``best.pt``: the EMA weights with the lowest validation loss (``load_checkpoint`` reads both files).
- ``metrics.jsonl``: one JSON record per epoch (learning rates, train and validation MAE of every task).

Normalisation (``normalise``): for every freshly initialised head, its output buffers are fitted to the training
set: per-element reference energies by least squares on total energies, ``energy_shift`` the mean residual
energy per atom, ``energy_scale`` the force RMS (or, without forces, the standard deviation of the residual
energy per atom), and the other heads' scales the RMS of their labels (``dielectric``: of eps - 1).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import ase
import numpy as np
import torch
from ase.data import atomic_numbers

from mtsim.training.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_checkpoint, save_checkpoint
from mtsim.training.config import TrainConfig
from mtsim.training.data import AtomsDataset, Batch, batch_order, collate, split
from mtsim.training.loss import UNITS, absolute_errors, multitask_loss
from mtsim.training.model import MAX_Z, PRESETS, ModelConfig, MTModel, build_model, with_repulsion

HEADS = {
    "energy": "energy_head",
    "magmoms": "magmom_head",
    "charges": "charge_head",
    "born_charges": "born_head",
    "dielectric": "dielectric_head",
}
"""Task -> output head of the model (forces and stress are derivatives of the energy head)."""
HEAD_LABELS = {
    "energy": ("energy", "forces", "stress"),
    "magmoms": ("magmoms",),
    "charges": ("charges",),
    "born_charges": ("born_charges",),
    "dielectric": ("dielectric",),
}
"""Head -> the labels that train it."""

Log = Callable[[str], None]


def _quiet(line: str) -> None:
    """The default ``log``: print nothing."""


# ------------------------------------------------------------------------------------------ model preparation
def fit_normalisation(model: MTModel, dataset: AtomsDataset, heads: Sequence[str] = tuple(HEADS)) -> dict:
    """Set the normalisation buffers of ``heads`` from the labels of ``dataset`` (see the module docstring).

    Heads without labels keep their buffers. Returns the fitted values (eV, eV/Å, μB, e, 1)."""
    fitted = {}

    def labelled(label: str) -> list:
        return [s for s in dataset.samples if label in s.labels]

    with torch.no_grad():
        if "energy" in heads and labelled("energy"):
            samples = labelled("energy")
            counts = np.stack([np.bincount(s.graph["numbers"], minlength=MAX_Z + 1) for s in samples])
            energies = np.array([float(s.labels["energy"]) for s in samples])
            present = np.flatnonzero(counts.sum(axis=0))
            references = np.zeros(MAX_Z + 1)
            references[present] = np.linalg.lstsq(counts[:, present].astype(float), energies, rcond=None)[0]
            residual = (energies - counts @ references) / counts.sum(axis=1)
            forces = [s.labels["forces"] for s in labelled("forces")]
            scale = _rms(np.concatenate(forces)) if forces else float(residual.std())
            model.reference_energies.copy_(torch.from_numpy(references))
            model.energy_shift.fill_(float(residual.mean()))
            fitted.update(energy_shift=float(residual.mean()), energy_scale=_set_scale(model.energy_scale, scale))
        for task, buffer in (
            ("magmoms", "magmom_scale"),
            ("charges", "charge_scale"),
            ("born_charges", "born_scale"),
            ("dielectric", "dielectric_scale"),
        ):
            if task in heads and labelled(task):
                values = np.concatenate(
                    [np.ravel(s.labels[task] - (np.eye(3) if task == "dielectric" else 0.0)) for s in labelled(task)]
                )
                fitted[buffer] = _set_scale(getattr(model, buffer), _rms(values))
    return fitted


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def _set_scale(buffer: torch.Tensor, value: float) -> float:
    """Fill ``buffer`` with ``value`` unless it is zero or not finite (then keep the buffer); the value set."""
    if math.isfinite(value) and value > 0:
        buffer.fill_(value)
    return float(buffer)


def shift_reference_energies(model: MTModel, path: str) -> dict[str, float]:
    """Put ``model`` on another energy scale: E_Z -= δ_Z for the per-element offsets δ (eV per atom) in the JSON
    file ``path`` (``offsets_eV_per_atom``, as ``mtsim.training.builders.dft align`` writes it); recorded in
    ``model.metadata["energy_offsets"]``. Returns the offsets."""
    with open(path) as handle:
        offsets = json.load(handle)["offsets_eV_per_atom"]
    unknown = [symbol for symbol in offsets if atomic_numbers.get(symbol, MAX_Z + 1) > MAX_Z]
    if unknown:
        raise ValueError(f"{path}: offsets for elements the model does not have: {unknown}")
    with torch.no_grad():
        for symbol, delta in offsets.items():
            model.reference_energies[atomic_numbers[symbol]] -= delta
    model.metadata["energy_offsets"] = {"file": os.path.basename(path), "sha256": file_sha256(path), "eV": offsets}
    return offsets


def reinitialise_heads(model: MTModel, heads: Sequence[str], seed: int) -> None:
    """Replace the weights of ``heads`` by a fresh initialisation drawn with ``seed`` (the global RNG is left
    untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = MTModel(model.config).to(model.dtype)
    for task in heads:
        getattr(model, HEADS[task]).load_state_dict(getattr(fresh, HEADS[task]).state_dict())


def prepare_model(config: TrainConfig, train_set: AtomsDataset) -> MTModel:
    """The model a new run starts from: a fresh preset model, or the fine-tuning checkpoint with the chosen heads
    re-initialised; then normalised on ``train_set`` (every head if fresh, the re-initialised ones otherwise)."""
    dtype = getattr(torch, config.model.dtype)
    tuning = config.finetune
    if tuning.checkpoint is None:
        repulsion = {} if config.model.repulsion is None else {"repulsion": config.model.repulsion}
        model = build_model(config.model.preset, dtype, config.seed, **config.model.overrides(), **repulsion)
        fresh_heads = tuple(HEADS)
    else:
        model = load_checkpoint(tuning.checkpoint).to(dtype)
        model.metadata["finetuned_from"] = {
            "file": os.path.basename(tuning.checkpoint),
            "sha256": file_sha256(tuning.checkpoint),
        }
        if config.model.repulsion is not None:
            model = with_repulsion(model, config.model.repulsion)
        if tuning.energy_offsets is not None:
            shift_reference_energies(model, tuning.energy_offsets)
        reinitialise_heads(model, tuning.reinit_heads, config.seed)
        fresh_heads = tuple(tuning.reinit_heads)
    if config.normalise:
        fitted = fit_normalisation(model, train_set, fresh_heads)
        model.metadata["normalisation"] = {**model.metadata.get("normalisation", {}), **fitted}
    record_provenance(model, config, train_set, fresh_heads)
    return model


def record_provenance(model: MTModel, config: TrainConfig, train_set: AtomsDataset, fresh_heads) -> None:
    """Write into ``model.metadata`` what a user of the exported file must know: its name, the training data
    (description + sha256 of every file) and ``untrained_heads``: heads that no label with a positive loss
    weight trains in this run and that were untrained (or re-initialised) before it."""
    counts, weights = train_set.label_counts(), vars(config.loss)
    trained = {
        head
        for head, labels in HEAD_LABELS.items()
        if any(counts.get(label, 0) > 0 and weights[label] > 0 for label in labels)
    }
    before = set(HEADS) if config.finetune.checkpoint is None else set(model.metadata.get("untrained_heads", []))
    model.metadata["untrained_heads"] = sorted((before | set(fresh_heads)) - trained)
    if config.model_name is not None:
        model.metadata["model_name"] = config.model_name
    files = [{"file": os.path.basename(path), "sha256": file_sha256(path)} for path in dict.fromkeys(config.data.train)]
    base = model.metadata.get("training_data") if config.finetune.checkpoint is not None else None
    model.metadata["training_data"] = {
        "description": config.training_data or "not described",
        "files": files,
        "labels": counts,
        **({"base": base} if base else {}),
    }


def model_cutoff(config: TrainConfig) -> float:
    """Å: the cutoff of the model a run trains (graphs of the data are built with it)."""
    if config.finetune.checkpoint is not None:
        return float(read_checkpoint(config.finetune.checkpoint)["config"]["cutoff"])
    return config.model.cutoff if config.model.cutoff is not None else PRESETS[config.model.preset].cutoff


# ------------------------------------------------------------------------------------------ optimisation
def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate for update ``step`` (0-based): linear warm-up, linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_optimizer(model: MTModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with a head and a backbone parameter group; a group whose learning rate is 0 is frozen
    (``requires_grad`` off, left out of the optimizer), so its weights stay bitwise unchanged."""
    opt = config.optimizer
    head_ids = {id(p) for name in HEADS.values() for p in getattr(model, name).parameters()}
    rates = {
        "head": opt.lr if opt.head_lr is None else opt.head_lr,
        "backbone": opt.lr if opt.backbone_lr is None else opt.backbone_lr,
    }
    groups = []
    for group, lr in rates.items():
        params = [p for p in model.parameters() if (id(p) in head_ids) == (group == "head")]
        for p in params:
            p.requires_grad_(lr > 0)
        if lr > 0:
            groups.append({"params": params, "lr": lr, "name": group})
    return torch.optim.AdamW(groups, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay)


class Trainer:
    """One run: model, AdamW, warm-up/decay schedule, EMA of the weights, early stopping and exact checkpoints.

    ``log`` receives the progress lines (one per epoch, and one per ``checkpoint_every`` steps). Use ``train`` for
    the whole job (data, ensembles, resume).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: MTModel,
        train_set: AtomsDataset,
        val_set: AtomsDataset | None = None,
        log: Log | None = None,
    ):
        if not len(train_set):
            raise ValueError("the training set is empty")
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.log = log or _quiet
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.weights = {task: w for task, w in vars(config.loss).items() if w > 0}
        self.steps_per_epoch = math.ceil(len(train_set) / config.data.batch_size)
        self.total_steps = config.schedule.epochs * self.steps_per_epoch
        warmup = round(config.schedule.warmup_epochs * self.steps_per_epoch)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, warmup, self.total_steps)
        )
        self.step = 0  # optimizer updates so far
        self.epoch = 0  # epochs completed
        self.best = math.inf  # lowest validation loss
        self.bad_epochs = 0
        self.stopped = False  # early stop
        self.running: dict[str, list[float]] = {}  # task -> [sum of batch MAEs, batches] of the current epoch

    # -------------------------------------------------------------------------------------- paths
    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def last_path(self) -> str:
        return os.path.join(self.run_dir, "last.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.run_dir, "best.pt")

    @property
    def finished(self) -> bool:
        return self.stopped or self.step >= self.total_steps

    # -------------------------------------------------------------------------------------- training
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One AdamW update on ``batch``, then the EMA update; returns the loss and the per-task MAEs."""
        batch = batch.to(self.device)
        loss, errors = multitask_loss(self.model(**batch.inputs), batch, self.weights)
        if not torch.isfinite(loss):
            raise self.non_finite("loss", errors, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = math.inf if self.config.optimizer.grad_clip is None else self.config.optimizer.grad_clip
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip)):
            raise self.non_finite("gradient", errors, batch)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.update_ema()
        return {"loss": loss.item(), **{task: error.item() for task, error in errors.items()}}

    def non_finite(self, what: str, errors: dict, batch: Batch) -> FloatingPointError:
        """The error that stops a run before a NaN or inf reaches the weights (they are those of ``last.pt`` plus
        the updates since): the step, the per-task MAEs and the batch's structures."""
        formulas = []
        for k in range(len(batch.num_atoms)):
            numbers = batch.inputs["numbers"][batch.inputs["batch"] == k].cpu().numpy()
            formulas.append(ase.Atoms(numbers=numbers).get_chemical_formula())
        maes = ", ".join(f"{task} {float(error.mean()):.4g}" for task, error in errors.items())
        return FloatingPointError(
            f"step {self.step + 1}: the {what} is not finite (MAEs: {maes}); batch of {len(formulas)}: "
            f"{' '.join(formulas)}. The weights were not updated."
        )

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d ema + (1 - d) w, with d = min(ema_decay, (1 + step) / (10 + step)) so that early steps,
        when the weights move fastest, are not swamped by the initialisation."""
        decay = min(self.config.schedule.ema_decay, (1 + self.step) / (10 + self.step))
        for averaged, current in zip(self.ema.parameters(), self.model.parameters()):
            averaged.lerp_(current, 1.0 - decay)

    def evaluate(self, dataset: AtomsDataset) -> dict[str, float]:
        """Weighted loss and MAE of every task over ``dataset`` (each label counted once), with the EMA weights."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        size = self.config.data.batch_size
        for start in range(0, len(dataset), size):
            batch = collate(dataset.samples[start : start + size], self.ema.dtype).to(self.device)
            predictions = {k: v.detach() for k, v in self.ema(**batch.inputs).items()}
            for task, errors in absolute_errors(predictions, batch, self.weights).items():
                sums[task] = sums.get(task, 0.0) + float(errors.sum())
                counts[task] = counts.get(task, 0) + errors.numel()
        maes = {task: sums[task] / counts[task] for task in sums}
        return {"loss": sum(self.weights[task] * mae for task, mae in maes.items()), **maes}

    def fit(self, max_steps: int | None = None, max_seconds: float | None = None) -> str:
        """Train until the schedule ends or early stopping, or pause (checkpoint and return) after ``max_steps``
        updates or ``max_seconds`` in this call. Returns ``"finished"``, ``"stopped early"`` or ``"paused"``."""
        os.makedirs(self.run_dir, exist_ok=True)
        start_step, start_time = self.step, time.monotonic()
        size, every = self.config.data.batch_size, self.config.schedule.checkpoint_every
        while not self.finished:
            order = batch_order(len(self.train_set), self.config.seed, self.epoch)
            done_in_epoch = self.step - self.epoch * self.steps_per_epoch
            for first in range(done_in_epoch * size, len(order), size):
                if (max_steps is not None and self.step - start_step >= max_steps) or (
                    max_seconds is not None and time.monotonic() - start_time >= max_seconds
                ):
                    self.save(self.last_path)
                    self.log(f"paused at step {self.step}/{self.total_steps}; resume to continue")
                    return "paused"
                samples = [self.train_set[i] for i in order[first : first + size]]
                for task, value in self.train_step(collate(samples, self.model.dtype)).items():
                    total = self.running.setdefault(task, [0.0, 0])
                    total[0], total[1] = total[0] + value, total[1] + 1
                if every is not None and self.step % every == 0:
                    self.save(self.last_path)
                    rate = (self.step - start_step) / max(time.monotonic() - start_time, 1e-9)
                    loss = self.running["loss"][0] / self.running["loss"][1]
                    self.log(
                        f"step {self.step}/{self.total_steps}  {rate:.2f} steps/s  train loss {loss:.4g} "
                        "(this epoch so far)  last.pt written"
                    )
            self.end_epoch()
        return "stopped early" if self.stopped else "finished"

    def end_epoch(self) -> None:
        """Validate the EMA weights, log, keep the best, decide on early stopping, write ``last.pt``."""
        self.epoch += 1
        train_metrics = {task: total[0] / total[1] for task, total in self.running.items()}
        self.running = {}
        val_metrics = self.evaluate(self.val_set) if self.val_set is not None and len(self.val_set) else None
        improved = val_metrics is None or val_metrics["loss"] < self.best
        if improved:
            self.best, self.bad_epochs = (math.inf if val_metrics is None else val_metrics["loss"]), 0
            self.save(self.best_path)
        else:
            self.bad_epochs += 1
            patience = self.config.schedule.patience
            self.stopped = patience is not None and self.bad_epochs >= patience
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
            "train": train_metrics,
            "val": val_metrics,
            "best": improved,
        }
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.log(self.progress_line(record))
        if self.stopped:
            self.log(f"early stop: no lower validation loss for {self.bad_epochs} epochs")
        self.save(self.last_path)

    def progress_line(self, record: dict) -> str:
        def losses(metrics):
            tasks = " ".join(f"{t} {metrics[t]:.4g}" for t in UNITS if t in metrics)
            return f"loss {metrics['loss']:.4g} ({tasks})"

        line = (
            f"epoch {record['epoch']}/{self.config.schedule.epochs}  step {record['step']}  "
            f"lr {max(record['lr'].values()):.3g}  train {losses(record['train'])}"
        )
        if record["val"] is not None:
            line += f"  val {losses(record['val'])}" + ("  *" if record["best"] else "")
        return line

    # -------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything besides the EMA weights that a resumed run needs to continue bit for bit."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "steps_per_epoch": self.steps_per_epoch,
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "running": self.running,
        }

    def load_state_dict(self, payload: dict) -> None:
        """Restore from a checkpoint dict written by ``save`` (EMA weights + ``"training"`` state)."""
        state = payload["training"]
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"the run was saved with {state['steps_per_epoch']} steps per epoch, this config and "
                f"data give {self.steps_per_epoch}: the data or the batch size changed"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for key in ("step", "epoch", "best", "bad_epochs", "stopped", "running"):
            setattr(self, key, state[key])

    def save(self, path: str) -> None:
        """An mtsim checkpoint of the EMA weights, with the training state under ``"training"``."""
        metadata = {
            **self.model.metadata,
            "training": {
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "step": self.step,
                "best_val_loss": self.best if math.isfinite(self.best) else None,
                "labels": self.train_set.label_counts(),
            },
        }
        self.ema.metadata = metadata
        save_checkpoint(self.ema, path, metadata, training=self.state_dict())

    @classmethod
    def resume(
        cls,
        path: str,
        config: TrainConfig,
        train_set: AtomsDataset,
        val_set: AtomsDataset | None = None,
        log: Log | None = None,
    ) -> Trainer:
        """Continue the run saved at ``path`` (``last.pt``) with ``config`` and the same data."""
        payload = read_checkpoint(path)
        if "training" not in payload:
            raise CheckpointError(f"{path} holds no training state (it is not a last.pt of a run)")
        model = MTModel(ModelConfig(**payload["config"])).to(getattr(torch, payload["dtype"]))
        model.metadata = {k: v for k, v in payload["metadata"].items() if k != "training"}
        trainer = cls(config, model, train_set, val_set, log)
        trainer.load_state_dict(payload)
        return trainer


# ------------------------------------------------------------------------------------------ the whole job
def load_datasets(config: TrainConfig, log: Log | None = None) -> tuple[AtomsDataset, AtomsDataset | None]:
    """(train, validation) sets of a config; structures that carry no label with a positive loss weight are
    dropped from both."""
    log = log or _quiet
    cutoff, keys = model_cutoff(config), config.data.keys
    train_set = AtomsDataset.from_files(config.data.train, cutoff, keys)
    if config.data.val:
        val_set = AtomsDataset.from_files(config.data.val, cutoff, keys)
    elif config.data.val_fraction > 0:
        train_set, val_set = split(train_set, config.data.val_fraction, config.seed)
    else:
        val_set = None
    used = {task for task, weight in vars(config.loss).items() if weight > 0}
    for name, dataset in (("train", train_set), ("val", val_set)):
        if dataset is None:
            continue
        keep = [k for k, s in enumerate(dataset.samples) if used & set(s.labels)]
        if len(keep) < len(dataset):
            log(f"{name}: dropped {len(dataset) - len(keep)} structures without a used label")
            dataset.samples = [dataset.samples[k] for k in keep]
        counts = ", ".join(f"{task} {n}" for task, n in dataset.label_counts().items() if n)
        log(f"{name}: {len(dataset)} structures (labels: {counts or 'none'})")
    return train_set, val_set


def train(
    config: TrainConfig,
    resume: bool = False,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    log: Log | None = None,
) -> list[str]:
    """Run the training described by ``config`` (each ensemble member in turn) and return the ``best.pt`` path
    of every member. ``resume`` continues from the ``last.pt`` files in the run directory; without it an
    existing run there is an error. ``max_steps``/``max_seconds`` pause each member (see ``Trainer.fit``)."""
    log = log or _quiet
    train_set, val_set = load_datasets(config, log)
    paths = []
    for member in range(config.ensemble):
        member_config = (
            config
            if config.ensemble == 1
            else replace(config, seed=config.seed + member, run_dir=os.path.join(config.run_dir, f"member_{member}"))
        )
        last = os.path.join(member_config.run_dir, "last.pt")
        if os.path.exists(last) and not resume:
            raise FileExistsError(f"{member_config.run_dir} already holds a run; resume it or choose another run_dir")
        if config.ensemble > 1:
            log(f"ensemble member {member + 1}/{config.ensemble} (seed {member_config.seed})")
        if os.path.exists(last):
            trainer = Trainer.resume(last, member_config, train_set, val_set, log)
        else:
            trainer = Trainer(member_config, prepare_model(member_config, train_set), train_set, val_set, log)
        status = trainer.fit(max_steps, max_seconds)
        if status != "paused":
            log(f"{status} at step {trainer.step}")
        paths.append(trainer.best_path)
    return paths


# ------------------------------------------------------------------------------------------ uncertainty
def force_spread(forces: np.ndarray) -> float:
    """Eq. (22): ``max_a (1/N) sum_i (|F_ia| - |F̄_a|)^2`` in (eV/Å)^2, with F̄_a the ensemble-mean force vector
    on atom a; ``forces`` [N members, n atoms, 3] eV/Å. Zero iff all members agree."""
    forces = np.asarray(forces, dtype=np.float64)
    magnitudes = np.linalg.norm(forces, axis=-1)  # [N, n]
    mean_magnitude = np.linalg.norm(forces.mean(axis=0), axis=-1)  # [n]
    return float(((magnitudes - mean_magnitude) ** 2).mean(axis=0).max())


def ensemble_uncertainty(models: Sequence[MTModel], structures: Sequence, batch_size: int = 16) -> np.ndarray:
    """Eq. (22) score of every structure (``ase.Atoms`` or ``mtsim.Structure``) under an ensemble, (eV/Å)^2."""
    structures = list(structures)
    forces = [[] for _ in structures]
    for model in models:
        for start in range(0, len(structures), batch_size):
            for k, prediction in enumerate(model.predict(structures[start : start + batch_size])):
                forces[start + k].append(prediction["forces"])
    return np.array([force_spread(np.stack(f)) for f in forces])


def rank_by_uncertainty(
    models: Sequence[MTModel], structures: Sequence, threshold: float | None = None, max_count: int | None = None
) -> tuple[list[int], np.ndarray]:
    """Active learning: indices of the structures to label next, most uncertain first (eq. 22 scores above
    ``threshold``, at most ``max_count``), and the scores of all structures."""
    scores = ensemble_uncertainty(models, structures)
    order = [int(k) for k in np.argsort(-scores, kind="stable") if threshold is None or scores[k] > threshold]
    return order[:max_count], scores
