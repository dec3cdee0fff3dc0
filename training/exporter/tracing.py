"""The model as one forward+backward aten graph: ``trace`` (make_fx with symbolic sizes, then ``PASSES``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtsim.graph import edge_slots
from mtsim.onnx_format import OUTPUT_NAMES
from mtsim.training.exporter.passes import CLEANUP, PASSES, run_passes
from mtsim.training.model import MTModel


class ForceStressModule(nn.Module):
    """``MTModel`` as a function of the eight contract inputs returning the seven outputs as a tuple."""

    def __init__(self, model: MTModel):
        super().__init__()
        self.model = model

    def forward(self, numbers, positions, cell, batch, edge_index, shifts, receiver_slots, sender_slots):
        out = self.model(
            numbers, positions, cell, batch, edge_index, shifts, receiver_slots, sender_slots, compute_forces=True
        )
        return tuple(out[name] for name in OUTPUT_NAMES)


EXAMPLE_SIZES = (3, 2, 1, 3)
"""Atoms per structure of the tracing example: n=9, b=4 (and e=37 edges, slot widths kr=7 and ks=8). Symbolic
tracing gives input dims of equal value one symbol and specialises 0 and 1, so n, e, b, kr and ks differ from
each other and from 0, 1, 2 and 3 (the fixed dims of the contract)."""
EXAMPLE_EDGES = 37
EXAMPLE_SLOT_WIDTHS = (7, 8)


def example_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The generic graph used for tracing only (values are irrelevant; sizes are ``EXAMPLE_SIZES``)."""
    rng = np.random.default_rng(0)
    n, b = sum(EXAMPLE_SIZES), len(EXAMPLE_SIZES)
    numbers = rng.integers(1, 95, size=n)
    cell = np.eye(3)[None] * rng.uniform(4.0, 7.0, size=(b, 1, 1)) + rng.uniform(-0.3, 0.3, size=(b, 3, 3))
    positions = rng.uniform(0.0, 3.0, size=(n, 3))
    batch = np.repeat(np.arange(b), EXAMPLE_SIZES)
    first = np.concatenate([[0], np.cumsum(EXAMPLE_SIZES)[:-1]])
    edges = [
        (i, j, 0, 0, 0)
        for k, size in enumerate(EXAMPLE_SIZES)
        for i in range(first[k], first[k] + size)
        for j in range(first[k], first[k] + size)
    ]  # self edges too
    while len(edges) < EXAMPLE_EDGES:  # periodic images
        i = int(rng.integers(0, n))
        j = int(rng.choice(np.flatnonzero(batch == batch[i])))
        edges.append((i, j, *rng.choice([-1, 1], size=3)))
    edges = np.array(edges[:EXAMPLE_EDGES], dtype=np.int64)
    slots = [edge_slots(edges[:, k], n, width) for k, width in enumerate(EXAMPLE_SLOT_WIDTHS)]
    assert len({n, b, len(edges), *(s.shape[1] for s in slots)} | {0, 1, 2, 3}) == 9
    return (
        torch.from_numpy(numbers.astype(np.int64)),
        torch.tensor(positions, dtype=dtype),
        torch.tensor(cell, dtype=dtype),
        torch.from_numpy(batch.astype(np.int64)),
        torch.from_numpy(edges[:, :2].T.copy()),
        torch.tensor(edges[:, 2:].astype(np.float64), dtype=dtype),
        *(torch.from_numpy(s) for s in slots),
    )


def decompositions() -> dict:
    """``aten.native_layer_norm`` and its backward as plain arithmetic in the model's dtype: onnxruntime's
    ``LayerNormalization`` keeps float32 statistics, which the backward then mixes with doubles (float64 error
    ~1e-8)."""
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    return get_decompositions([aten.native_layer_norm, aten.native_layer_norm_backward])


def trace(model: MTModel, dtype: torch.dtype, rewrite: bool = True):
    """The forward+backward aten graph of ``model`` (a ``torch.fx.GraphModule`` with symbolic sizes) and the
    example inputs, after ``PASSES`` (only ``CLEANUP`` without ``rewrite``); ``graph_module.meta["rewrites"]``
    holds the number of rewrites each pass made."""
    from torch.fx.experimental.proxy_tensor import make_fx

    module = ForceStressModule(model).eval()
    args = example_inputs(dtype)
    with torch.enable_grad():
        graph_module = make_fx(
            module, tracing_mode="symbolic", decomposition_table=decompositions(), _allow_non_fake_inputs=True
        )(*args)
    run_passes(graph_module, PASSES if rewrite else CLEANUP)
    return graph_module, args
