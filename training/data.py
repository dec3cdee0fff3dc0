"""Training data: structures with partial labels, read from extxyz files or ASE databases, batched as graphs.

Labels, in the units of the model's outputs (``mtsim.training.model``):

================ ========= ===============================================================================
``energy``       []        eV, total
``forces``       [n,3]     eV/Å
``stress``       [3,3]     eV/Å^3, ASE sign (positive = tensile); the loss converts to GPa
``magmoms``      [n]       μB
``charges``      [n]       e
``born_charges`` [n,3,3]   e, ``Z[i, a, b]``: first index the field, second the displacement (phonopy's order)
``dielectric``   [3,3]     eps_inf
================ ========= ===============================================================================

Where labels are found. Each label has a list of candidate keys (``DEFAULT_KEYS``, replaceable per label); the
first key present wins. A key is looked up in the calculator results (ASE's extxyz reader puts ``energy``,
``forces``, ``stress``, ``magmoms``, ``charges`` there, in a ``SinglePointCalculator``), then in ``atoms.info``,
then in ``atoms.arrays``. Stress may be 9 numbers (row-major) or 6 (Voigt order xx, yy, zz, yz, xz, xy, as
ASE's calculators store it): from a ``SinglePointCalculator`` the label is ``atoms.get_stress(voigt=False)``.
Born charges are 9 numbers per atom, row-major ``Z[a, b]``; the dielectric tensor 9 numbers. For ASE databases
(``.db``) the row's key-value pairs and ``data`` entries are looked up like ``atoms.info``. A structure that has
none of a label's keys does not carry that label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ase.db
import ase.io
import numpy as np
import torch
from ase.stress import voigt_6_to_full_3x3_stress
from torch import Tensor

from mtsim.graph import build_graph, with_slots
from mtsim.model import PER_STRUCTURE_OUTPUTS
from mtsim.training.model import PROPERTIES

LABEL_SHAPES = {
    "energy": (),
    "forces": (3,),
    "stress": (3, 3),
    "magmoms": (),
    "charges": (),
    "born_charges": (3, 3),
    "dielectric": (3, 3),
}
"""Shape of one label per structure (per-structure labels) or per atom (the others)."""

DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "energy": ("energy", "total_energy"),
    "forces": ("forces",),
    "stress": ("stress",),
    "magmoms": ("magmoms",),
    "charges": ("charges",),
    "born_charges": ("born_charges", "born_effective_charge", "becs", "born_charge"),
    "dielectric": ("dielectric", "eps_inf", "eps"),
}
"""Candidate keys of each label, in the order tried (the names used by the files in ``shared/data``)."""


@dataclass
class Sample:
    """One structure: its graph (``mtsim.graph.build_graph`` arrays, edges local to the structure) and labels."""

    graph: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str = ""

    @property
    def num_atoms(self) -> int:
        return len(self.graph["numbers"])


@dataclass
class Batch:
    """Collated samples: model ``inputs``, ``labels`` (NaN where missing) and per-structure ``masks`` [b]."""

    inputs: dict[str, Tensor]
    labels: dict[str, Tensor]
    masks: dict[str, Tensor]
    num_atoms: Tensor  # [b]

    def to(self, device) -> Batch:
        def move(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {key: value.to(device) for key, value in tensors.items()}

        return Batch(move(self.inputs), move(self.labels), move(self.masks), self.num_atoms.to(device))


def label_keys(overrides: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """``DEFAULT_KEYS`` with the candidate lists of ``overrides`` substituted (an empty list ignores a label)."""
    keys = dict(DEFAULT_KEYS)
    for label, candidates in (overrides or {}).items():
        if label not in keys:
            raise ValueError(f"unknown label {label!r}; labels are {list(PROPERTIES)}")
        keys[label] = (candidates,) if isinstance(candidates, str) else tuple(candidates)
    return keys


def read_frames(path: str | os.PathLike):
    """All structures of ``path``: an ASE database (``.db``, with key-value pairs and data merged into
    ``atoms.info``) or anything ``ase.io.read`` reads (extxyz, ...)."""
    path = os.fspath(path)
    if path.endswith(".db"):
        frames = []
        with ase.db.connect(path) as db:
            for row in db.select():
                atoms = row.toatoms(add_additional_information=True)
                extra = atoms.info
                atoms.info = {**extra.get("key_value_pairs", {}), **extra.get("data", {})}
                frames.append(atoms)
        return frames
    return ase.io.read(path, index=":")


def extract_labels(atoms, keys: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """The labels ``atoms`` carries, as float64 arrays of the shapes in ``LABEL_SHAPES``."""
    keys = label_keys(keys)
    results = atoms.calc.results if atoms.calc is not None else {}
    n = len(atoms)
    labels = {}
    for label, candidates in keys.items():
        for key in candidates:
            if key in results:
                value = results[key]
            elif key in atoms.info:
                value = atoms.info[key]
            elif key in atoms.arrays:
                value = atoms.arrays[key]
            else:
                continue
            labels[label] = as_label(label, np.asarray(value, dtype=np.float64), n, key)
            break
    return labels


def as_label(label: str, value: np.ndarray, num_atoms: int, key: str) -> np.ndarray:
    """Reshape a raw label to its canonical shape; ``ValueError`` naming the key if the size does not fit."""
    shape = LABEL_SHAPES[label] if label in PER_STRUCTURE_OUTPUTS else (num_atoms, *LABEL_SHAPES[label])
    if label == "stress" and value.size == 6:
        value = voigt_6_to_full_3x3_stress(value)
    if value.size != int(np.prod(shape)):
        raise ValueError(f"key {key!r} ({label}) holds {value.size} numbers; expected shape {shape}")
    return value.reshape(shape)


class AtomsDataset(torch.utils.data.Dataset):
    """Labelled structures with their graphs precomputed (the neighbour list is built once, at ``cutoff`` Å)."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    @classmethod
    def from_atoms(
        cls, frames, cutoff: float, keys: Mapping[str, Sequence[str]] | None = None, source: str = ""
    ) -> AtomsDataset:
        keys = label_keys(keys)
        samples = []
        for k, atoms in enumerate(frames):
            name = f"{source}[{k}]" if source else f"[{k}]"
            try:
                graph = build_graph([atoms], cutoff, dtype=np.float64)
                labels = extract_labels(atoms, keys)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            samples.append(Sample(graph, labels, name))
        return cls(samples)

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike], cutoff: float, keys: Mapping[str, Sequence[str]] | None = None
    ) -> AtomsDataset:
        """Every structure of every file (extxyz, ``.db``, any ASE format)."""
        samples = []
        for path in paths:
            samples += cls.from_atoms(read_frames(path), cutoff, keys, source=os.fspath(path)).samples
        return cls(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def subset(self, indices: Sequence[int]) -> AtomsDataset:
        return AtomsDataset([self.samples[i] for i in indices])

    def label_counts(self) -> dict[str, int]:
        """How many structures carry each label."""
        return {label: sum(label in s.labels for s in self.samples) for label in PROPERTIES}


def collate(samples: Sequence[Sample], dtype: torch.dtype = torch.float64) -> Batch:
    """Concatenate sample graphs into one batch (edge indices offset per structure) and stack the labels.

    A label missing from a structure is NaN-filled, so a loss that forgot a mask fails loudly; ``masks[label]``
    [b] says which structures carry it (per-atom masks: ``masks[label][inputs["batch"]]``).
    """
    sizes = [s.num_atoms for s in samples]
    offsets = np.cumsum([0] + sizes[:-1])

    def cat(key: str) -> np.ndarray:
        return np.concatenate([s.graph[key] for s in samples])

    graph = with_slots(
        {
            "numbers": cat("numbers"),
            "positions": cat("positions"),
            "cell": cat("cell"),
            "batch": np.repeat(np.arange(len(samples), dtype=np.int64), sizes),
            "edge_index": np.concatenate([s.graph["edge_index"] + o for s, o in zip(samples, offsets)], axis=1),
            "shifts": cat("shifts"),
        }
    )
    inputs = {
        key: torch.from_numpy(value).to(dtype) if key in ("positions", "cell", "shifts") else torch.from_numpy(value)
        for key, value in graph.items()
    }
    labels, masks = {}, {}
    for label in PROPERTIES:
        carried = [label in s.labels for s in samples]
        if not any(carried):
            continue
        shape = LABEL_SHAPES[label]
        parts = [
            s.labels[label] if c else np.full((() if label in PER_STRUCTURE_OUTPUTS else (n,)) + shape, np.nan)
            for s, c, n in zip(samples, carried, sizes)
        ]
        stacked = np.stack(parts) if label in PER_STRUCTURE_OUTPUTS else np.concatenate(parts)
        labels[label] = torch.from_numpy(stacked).to(dtype)
        masks[label] = torch.tensor(carried)
    return Batch(inputs, labels, masks, torch.tensor(sizes))


def batch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the samples in ``epoch``: a permutation fixed by ``(seed, epoch)`` alone, so that a resumed
    run sees the same batches without storing them."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def split(dataset: AtomsDataset, fraction: float, seed: int) -> tuple[AtomsDataset, AtomsDataset]:
    """(train, validation): a seeded random ``fraction`` of the structures (at least one if fraction > 0)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    num_val = max(1, round(fraction * len(dataset))) if fraction > 0 else 0
    if num_val >= len(dataset):
        raise ValueError(f"cannot hold out {num_val} of {len(dataset)} structures for validation")
    return dataset.subset(sorted(order[num_val:])), dataset.subset(sorted(order[:num_val]))
