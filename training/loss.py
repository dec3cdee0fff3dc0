"""The multi-task loss of Section S1.3 (``shared/design/model-spec.md``, "Loss and training").

    L = MAE(E/atom) + 10 MAE(F) + 0.07 MAE(sigma in GPa) + sum_t 1.0 MAE(p_t),  t = magmoms, charges, Z*, eps_inf

Each term averages only over the structures that carry its label: per-structure labels over those structures,
per-atom labels over their atoms, and every tensor component counts once (MAE over the components). A term whose
label no structure of the batch carries, or whose weight is zero, is absent (not zero-valued) in the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from mtsim.model import PER_STRUCTURE_OUTPUTS
from mtsim.training.data import Batch
from mtsim.units import GPA

DEFAULT_WEIGHTS = {
    "energy": 1.0,
    "forces": 10.0,
    "stress": 0.07,
    "magmoms": 1.0,
    "charges": 1.0,
    "born_charges": 1.0,
    "dielectric": 1.0,
}
"""Table S2 loss weights."""

UNITS = {
    "energy": "eV/atom",
    "forces": "eV/Å",
    "stress": "GPa",
    "magmoms": "μB",
    "charges": "e",
    "born_charges": "e",
    "dielectric": "1",
}
"""Units of each loss term (the MAE of that task)."""


def absolute_errors(
    predictions: Mapping[str, Tensor], batch: Batch, tasks: Iterable[str] = tuple(DEFAULT_WEIGHTS)
) -> dict[str, Tensor]:
    """|prediction - label| of every labelled component, per task in ``tasks`` (flat tensors, units ``UNITS``);
    only structures that carry a task's label contribute, and tasks that none carries are absent."""
    errors = {}
    for task in tasks:
        if task not in batch.labels:
            continue
        carried = batch.masks[task]
        mask = carried if task in PER_STRUCTURE_OUTPUTS else carried[batch.inputs["batch"]]
        prediction, target = predictions[task][mask], batch.labels[task][mask]
        if task == "energy":
            atoms = batch.num_atoms[carried].to(prediction.dtype)
            prediction, target = prediction / atoms, target / atoms
        elif task == "stress":
            prediction, target = prediction / GPA, target / GPA
        errors[task] = (prediction - target).abs().flatten()
    return errors


def multitask_loss(
    predictions: Mapping[str, Tensor], batch: Batch, weights: Mapping[str, float] = DEFAULT_WEIGHTS
) -> tuple[Tensor, dict[str, Tensor]]:
    """(L, per-task MAEs): the weighted sum over the tasks with a positive weight that ``batch`` carries."""
    errors = absolute_errors(predictions, batch, [task for task, weight in weights.items() if weight > 0])
    if not errors:
        raise ValueError("no structure of the batch carries a label with a positive loss weight")
    maes = {task: error.mean() for task, error in errors.items()}
    return sum(weights[task] * mae for task, mae in maes.items()), maes
