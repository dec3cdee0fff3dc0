"""Structures -> model inputs (the flat-edge layout of the ONNX contract, with edge slots).

The graph of a batch holds every ordered pair (i, j) with |r_ij| < cutoff, periodic images through integer
cell shifts, plus one self edge (i, i, 0) per atom. ``r_ij = positions[j] - positions[i] + shifts @ cell``.
``receiver_slots``/``sender_slots`` list each atom's edges (``edge_slots``): the model sums over the edges of an
atom by gathering them, so its graph has no scatter over edges (fast, and deterministic in its summation order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtsim.kernels import batched_neighbor_list
from mtsim.structure import Structure, as_structure

MIN_DISTANCE = 0.1
"""Å. Two atoms closer than this are reported as overlapping."""


def build_graph(
    structures: Sequence, cutoff: float, dtype=np.float64, check_overlap: bool = True, neighbors: str = "cpu"
) -> dict[str, np.ndarray]:
    """Model inputs for a batch of structures (``ase.Atoms`` or ``Structure``).

    Returns ``numbers`` int64 [n], ``positions`` [n,3] Å, ``cell`` [b,3,3] Å, ``batch`` int64 [n],
    ``edge_index`` int64 [2,e], ``shifts`` [e,3] (integer cell shifts stored as floats); floats in ``dtype``.
    Raises ``ValueError`` for overlapping atoms (closer than ``MIN_DISTANCE``) unless ``check_overlap`` is False.
    ``neighbors``: ``"cpu"`` (Numba cell list) or ``"cuda"`` (the CUDA kernel; identical output).
    """
    structures: list[Structure] = [as_structure(s) for s in structures]
    if not structures:
        raise ValueError("no structures given")
    n_atoms = np.array([len(s) for s in structures], dtype=np.int64)
    positions = np.concatenate([s.positions for s in structures])
    cells = np.stack([s.cell for s in structures])
    pbcs = np.stack([s.pbc for s in structures])
    if neighbors == "cpu":
        i, j, shifts = batched_neighbor_list(positions, cells, pbcs, n_atoms, cutoff, self_interaction=True)
    elif neighbors == "cuda":
        i, j, shifts = _cuda_neighbor_lists(structures, cutoff)
    else:
        raise ValueError(f"neighbors must be 'cpu' or 'cuda', got {neighbors!r}")
    batch = np.repeat(np.arange(len(structures), dtype=np.int64), n_atoms)
    if check_overlap:
        check_overlaps(positions, cells, batch, i, j, shifts)
    return with_slots(
        {
            "numbers": np.concatenate([s.numbers for s in structures]),
            "positions": positions.astype(dtype),
            "cell": cells.astype(dtype),
            "batch": batch,
            "edge_index": np.stack([i, j]).astype(np.int64),
            "shifts": shifts.astype(dtype),
        }
    )


def merge_graphs(graphs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch from the inputs of several (``build_graph`` layout): atoms, structures and edges concatenated in
    order, indices offset, slots rebuilt. ``merge_graphs([build_graph([a]), build_graph([b])])`` equals
    ``build_graph([a, b])``."""
    atoms = np.cumsum([0] + [len(g["numbers"]) for g in graphs])
    structures = np.cumsum([0] + [len(g["cell"]) for g in graphs])
    return with_slots(
        {
            "numbers": np.concatenate([g["numbers"] for g in graphs]),
            "positions": np.concatenate([g["positions"] for g in graphs]),
            "cell": np.concatenate([g["cell"] for g in graphs]),
            "batch": np.concatenate([g["batch"] + structures[k] for k, g in enumerate(graphs)]),
            "edge_index": np.concatenate([g["edge_index"] + atoms[k] for k, g in enumerate(graphs)], axis=1),
            "shifts": np.concatenate([g["shifts"] for g in graphs]),
        }
    )


def _cuda_neighbor_lists(structures: list[Structure], cutoff: float):
    from mtsim.kernels.cuda import neighbor_list_cuda

    lists, offset = [], 0
    for s in structures:
        i, j, shifts = neighbor_list_cuda(s.positions, s.cell, s.pbc, cutoff, self_interaction=True)
        lists.append((i + offset, j + offset, shifts))
        offset += len(s)
    return tuple(np.concatenate(parts) for parts in zip(*lists))


def graph_inputs(numbers, positions, cell, i, j, shifts, dtype=np.float64) -> dict[str, np.ndarray]:
    """Model inputs for one structure from a given edge list (e.g. a reused skin list), layout as ``build_graph``."""
    return with_slots(
        {
            "numbers": np.asarray(numbers, dtype=np.int64),
            "positions": np.asarray(positions, dtype=dtype),
            "cell": np.asarray(cell, dtype=dtype)[None],
            "batch": np.zeros(len(numbers), dtype=np.int64),
            "edge_index": np.stack([i, j]).astype(np.int64),
            "shifts": np.asarray(shifts, dtype=dtype),
        }
    )


def edge_slots(index: np.ndarray, num_atoms: int, width: int | None = None) -> np.ndarray:
    """int64 [num_atoms, k]: row a holds, in edge order, the edges e with ``index[e] == a``, padded with the
    number of edges (a padding slot of the model, zero in every sum); k = the largest count (at least ``width``)."""
    index = np.asarray(index, dtype=np.int64)
    counts = np.bincount(index, minlength=num_atoms)
    k = max(int(counts.max(initial=0)), width or 0, 1)
    order = np.argsort(index, kind="stable")
    starts = np.cumsum(counts) - counts
    slots = np.full((num_atoms, k), len(index), dtype=np.int64)
    slots[index[order], np.arange(len(index)) - starts[index[order]]] = order
    return slots


def slot_count(inputs: dict[str, np.ndarray]) -> int:
    """Rows of the model's edge tensors for these inputs: atoms times (the largest receiver count + 1), the
    model's receiver-slot layout with one padding slot per atom."""
    n, k = inputs["receiver_slots"].shape
    return n * (k + 1)


def with_slots(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` with ``receiver_slots`` and ``sender_slots`` (``edge_slots`` of ``edge_index[0]`` and ``[1]``)."""
    n = len(inputs["numbers"])
    inputs["receiver_slots"] = edge_slots(inputs["edge_index"][0], n)
    inputs["sender_slots"] = edge_slots(inputs["edge_index"][1], n)
    return inputs


def edge_vectors(positions, cells, batch, i, j, shifts) -> np.ndarray:
    """r_ij = positions[j] - positions[i] + shifts @ cell, Å, [e,3]."""
    return positions[j] - positions[i] + np.einsum("ek,ekl->el", shifts, cells[batch[i]])


def first_overlap(i, j, shifts, distances, min_distance: float = MIN_DISTANCE) -> int | None:
    """Index of the first edge between two different atoms, or an atom and its periodic image, shorter than
    ``min_distance`` Å (``distances`` [e] Å); None if there is none."""
    not_self = (i != j) | np.any(shifts != 0, axis=1)
    close = np.flatnonzero(not_self & (distances < min_distance))
    return int(close[0]) if close.size else None


def check_overlaps(positions, cells, batch, i, j, shifts, min_distance: float = MIN_DISTANCE) -> None:
    """Raise ``ValueError`` naming the first pair of atoms closer than ``min_distance`` Å."""
    d = np.linalg.norm(edge_vectors(positions, cells, batch, i, j, shifts), axis=1)
    k = first_overlap(i, j, shifts, d, min_distance)
    if k is not None:
        a, b = i[k], j[k]
        first = np.searchsorted(batch, batch[a])
        raise ValueError(
            f"overlapping atoms: atoms {a - first} and {b - first} of structure {batch[a]} are "
            f"{d[k]:.4f} Å apart (minimum {min_distance} Å)"
        )
