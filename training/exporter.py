"""Export a trained model to one fixed ONNX graph per precision, forces and stress inside the graph.

``export(model_or_checkpoint, path, precision)`` writes the file described by ``mtsim.onnx_format``
(the ONNX contract of ``shared/design/model-spec.md``).

How (each step is there because the obvious alternative fails with torch 2.13 / onnxscript 0.7 /
onnxruntime 1.3x):

1. A wrapper module runs ``MTModel.forward(..., compute_forces=True)`` in eval mode, so the graph holds the
   energy, its ``torch.autograd.grad`` with respect to positions and strain, and the other heads.
2. ``make_fx(tracing_mode="symbolic")`` traces forward *and* backward into one aten graph (``dynamo=True`` on a
   module calling ``autograd.grad``, ``torch.func`` transforms and the TorchScript exporter all fail). The
   example graph has distinct, non-trivial sizes (n=9 atoms in b=4 structures, e=37 edges) so that no size is
   specialised or tied to another. Full slices (``x[:, None]``) and their backward (``slice_backward``, which
   would become zeros + ``ScatterND``) are removed from the traced graph: both are the identity.
   ``aten.native_layer_norm`` and its backward are decomposed during tracing into plain arithmetic in the
   model's dtype: onnxruntime's ``LayerNormalization`` keeps float32 statistics, which the backward then mixes
   with doubles (float64 error ~1e-8).
3. ``torch.onnx.export(graph_module, dynamo=True, optimize=False)`` with dynamic n, e, b, kr, ks. The onnxscript
   optimizer is off: its rewrites delete ``x + eps`` terms (the equivariant layer norm's ``+ eps``).
4. The ONNX model is post-processed: IR version pinned (``IR_VERSION``; onnx 1.23 writes IR 14 which
   onnxruntime 1.31 refuses), metadata added, and ``check_graph`` run: no ``ScatterND`` with
   ``reduction="add"`` (onnxruntime's CPU kernel races with more than one thread: forces wrong and different
   every run; the model sums over edges with ``SlotSum`` and over slots, which become ``Gather`` + ``ReduceSum``,
   and over atoms with ``scatter_add``, which becomes ``ScatterElements``), every input and output dim that the
   contract makes dynamic is still symbolic, and every float tensor (inputs, outputs, initializers, constants,
   casts) has the file's precision.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from mtsim.graph import edge_slots
from mtsim.onnx_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_LAYOUT,
    INPUT_NAMES,
    INPUT_SHAPES,
    KEY_FORMAT,
    KEY_VERSION,
    OUTPUT_NAMES,
    OUTPUT_SHAPES,
    PRECISIONS,
    UNITS,
)
from mtsim.training.checkpoint import file_sha256, load_checkpoint
from mtsim.training.model import MAX_Z, PROPERTIES, MTModel

OPSET = 18
"""ONNX opset of exported files."""
IR_VERSION = 10
"""ONNX IR version written into exported files (onnxruntime >= 1.20 reads IR 10)."""
UNTRAINED = "untrained / none"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
"""Bytes of weights above which they are written to ``<path>.data`` (protobuf's 2 GB limit)."""

assert tuple(PROPERTIES) == OUTPUT_NAMES, "model outputs and ONNX contract disagree"

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_ONNX_FLOAT_TYPES = {"float32": 1, "float64": 11}  # onnx.TensorProto.FLOAT / DOUBLE


class ExportError(RuntimeError):
    """The exported graph breaks the ONNX contract (e.g. a racy ScatterND(add), static dims, wrong dtypes)."""


class ForceStressModule(nn.Module):
    """``MTModel`` as a function of the eight contract inputs returning the seven outputs as a tuple."""

    def __init__(self, model: MTModel):
        super().__init__()
        self.model = model

    def forward(self, numbers, positions, cell, batch, edge_index, shifts, receiver_slots, sender_slots):
        out = self.model(numbers, positions, cell, batch, edge_index, shifts, receiver_slots, sender_slots,
                         compute_forces=True)
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
    edges = [(i, j, 0, 0, 0) for k, size in enumerate(EXAMPLE_SIZES)
             for i in range(first[k], first[k] + size) for j in range(first[k], first[k] + size)]  # self edges too
    while len(edges) < EXAMPLE_EDGES:  # periodic images
        i = int(rng.integers(0, n))
        j = int(rng.choice(np.flatnonzero(batch == batch[i])))
        edges.append((i, j, *rng.choice([-1, 1], size=3)))
    edges = np.array(edges[:EXAMPLE_EDGES], dtype=np.int64)
    slots = [edge_slots(edges[:, k], n, width) for k, width in enumerate(EXAMPLE_SLOT_WIDTHS)]
    assert len({n, b, len(edges), *(s.shape[1] for s in slots)} | {0, 1, 2, 3}) == 9
    return (
        torch.from_numpy(numbers.astype(np.int64)), torch.tensor(positions, dtype=dtype),
        torch.tensor(cell, dtype=dtype), torch.from_numpy(batch.astype(np.int64)),
        torch.from_numpy(edges[:, :2].T.copy()), torch.tensor(edges[:, 2:].astype(np.float64), dtype=dtype),
        *(torch.from_numpy(s) for s in slots),
    )


def _custom_translations() -> dict:
    """onnxscript translations that replace the exporter's defaults.

    ``aten.scalar_tensor``: the default turns the Python float into a float32 ``Constant`` and then casts it, so
    a float64 file would carry every scalar constant (1/sqrt(d), GELU's coefficients, eps, ...) rounded to
    float32 (~2e-8 relative error). Here the constant is created in the requested dtype directly.
    ``aten.eye`` (the dielectric's identity): a constant, instead of the default's float ``Range`` + compares.
    """
    from onnxscript import ir
    from onnxscript import opset18 as op

    def scalar_tensor(s: float, dtype: int = 1, layout: str = "", device: str = "", pin_memory: bool = False):
        numpy_dtype = ir.DataType(dtype if dtype not in (None, -1) else 1).numpy()
        return op.Constant(value=ir.tensor(np.array(s, dtype=numpy_dtype)))

    def eye(n: int, dtype: int = 1, layout: str = "", device: str = "", pin_memory: bool = False):
        numpy_dtype = ir.DataType(dtype if dtype not in (None, -1) else 1).numpy()
        return op.Constant(value=ir.tensor(np.eye(n, dtype=numpy_dtype)))

    return {torch.ops.aten.scalar_tensor.default: scalar_tensor, torch.ops.aten.eye.default: eye}


def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    return get_decompositions([aten.native_layer_norm, aten.native_layer_norm_backward])


_FULL = 2**62


def _is_full_slice(start, end, step) -> bool:
    return start in (0, None) and (end is None or (isinstance(end, int) and end >= _FULL)) and step in (1, None)


def simplify(graph_module) -> int:
    """Remove full slices (``x[:, None]`` traces as ``slice(x, 0, 0, 2**63-1)``) and their backward passes
    (``slice_backward``, which the exporter writes as zeros + ``ScatterND``): both are the identity.
    Returns the number of nodes removed."""
    aten = torch.ops.aten
    signatures = {aten.slice.Tensor: (("self", "dim", "start", "end", "step"), {"dim": 0, "start": None,
                                                                                  "end": None, "step": 1}),
                  aten.slice_backward.default: (("grad", "sizes", "dim", "start", "end", "step"), {})}
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target not in signatures:
            continue
        names, defaults = signatures[node.target]
        arguments = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
        if _is_full_slice(arguments["start"], arguments["end"], arguments["step"]):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return removed


def _shape(node) -> tuple[str, ...] | None:
    value = node.meta.get("val")
    return tuple(str(size) for size in value.shape) if isinstance(value, torch.Tensor) else None


def _broadcast(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...] | None:
    """The broadcast of two shapes (as ``_shape`` gives them), None where they do not broadcast."""
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b):
        if x != y and "1" not in (x, y):
            return None
        out.append(y if x == "1" else x)
    return tuple(out)


def drop_broadcast_expands(graph_module) -> int:
    """Let element-wise ops broadcast instead of reading a materialised ``expand``: autograd's backward of a sum
    expands the gradient (e.g. [n,k,8,1] -> [n,k,8,16]), a view in eager but a copy in onnxruntime (its ``Expand``
    of a size-1 innermost dim cost more than the two products that read it). Where broadcasting the expand's input
    with the other operand gives the expanded shape, the numbers are the same. Returns the number of inputs
    rewired."""
    aten = torch.ops.aten
    broadcasting = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor}
    rewired = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target != aten.expand.default:
            continue
        for user in list(node.users):
            if user.target not in broadcasting or len(user.args) != 2 or user.args[0] is user.args[1]:
                continue
            other = user.args[1] if user.args[0] is node else user.args[0]
            source = node.args[0]
            if isinstance(other, torch.fx.Node) and isinstance(source, torch.fx.Node) and _shape(other) \
                    and _shape(source) and _broadcast(_shape(source), _shape(other)) == _shape(node):
                user.replace_input_with(node, source)
                rewired += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return rewired


REMATERIALIZE_GAP = 40
"""Graph nodes between two uses of a gathered slot tensor beyond which the later use gathers again."""


def rematerialize_gathers(graph_module) -> int:
    """Gather again (``index_select`` from atoms and its ``view`` to slots) right before each use far from the
    previous one, typically in the backward pass, instead of keeping the slot tensor alive in between: the atom
    tensor it reads is k (~30) times smaller.

    onnxruntime runs a node soon after its inputs exist, so a copy that only read the atom tensor and the index
    would run early again. Each copy's index therefore also reads the latest other input of the copy's first use,
    ``index + 0 * sum(t[:1] == t[:1])`` (zero, also for NaN or an empty t), which holds it back until that input
    exists. Returns the number of copies added."""
    aten = torch.ops.aten
    graph = graph_module.graph
    order = {node: k for k, node in enumerate(graph.nodes)}
    added = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.index_select.default:
            continue
        value = node
        if len(node.users) == 1 and next(iter(node.users)).target in (aten.view.default, aten.reshape.default):
            value = next(iter(node.users))
        holder, last = value, order[value]
        for user in sorted(value.users, key=order.get):
            if order[user] - last > REMATERIALIZE_GAP:
                holder = _late_gather(graph, node, value, user, order)
                added += 1
            if holder is not value:
                user.replace_input_with(value, holder)
            last = order[user]
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    return added


def _late_gather(graph, gather, value, user, order):
    """A copy of ``gather`` (and of ``value``, its view, if not the gather itself) placed before ``user``, whose
    index also depends on ``user``'s latest other input."""
    aten = torch.ops.aten

    def call(target, *args, **kwargs):  # a new node just before user, also in the order
        node = graph.call_function(target, args, kwargs)
        order[node] = order[user] - 0.5
        return node

    source, dim, index = gather.args
    others = [a for a in user.all_input_nodes if a is not value and isinstance(a.meta.get("val"), torch.Tensor)]
    with graph.inserting_before(user):
        if others:
            index = call(aten.add.Tensor, index, _zero_after(call, max(others, key=order.get), torch.int64))
        copy = call(gather.target, source, dim, index, **gather.kwargs)
        copy.meta = dict(gather.meta)
        if value is not gather:
            copy = call(value.target, copy, *value.args[1:], **value.kwargs)
            copy.meta = dict(value.meta)
    return copy


def _zero_after(call, tensor, dtype: torch.dtype):
    """A scalar zero of ``dtype`` that onnxruntime can only compute once ``tensor`` exists:
    ``0 * sum(t[:1] == t[:1])`` (zero also for NaN or an empty t). ``call(target, *args, **kwargs)`` adds a node."""
    aten = torch.ops.aten
    first = call(aten.slice.Tensor, call(aten.reshape.default, tensor, [-1]), 0, 0, 1)
    same = call(aten._to_copy.default, call(aten.eq.Tensor, first, first), dtype=tensor.meta["val"].dtype)
    return call(aten._to_copy.default, call(aten.mul.Tensor, call(aten.sum.default, same), 0), dtype=dtype)


def widen_innermost_broadcasts(graph_module) -> int:
    """Products of a slot tensor with a per-head factor broadcast along the innermost dim ([n,k,..,H,1] x
    [n,k,..,H,D], attention weights times values and their gradients) read the factor widened to [n,k,..,H,D] by
    a product with the constant 0/1 matrix ``repeat_interleave(eye(H), D)`` [H, H*D]: onnxruntime's CPU ``Mul``
    broadcasting a size-1 innermost dim ran ~3x slower than an element-wise one, its ``Expand`` slower still,
    and the small ``MatMul`` costs a tenth of that. Each widened entry is ``a * 1`` plus ``H - 1`` terms
    ``a' * 0``: exactly ``a`` for finite factors. Only factors that are slot tensors (leading symbolic dims n and
    k) are rewritten, the other operand [n,k,...] or [n,1,...]. Returns the number of products rewritten."""
    aten = torch.ops.aten
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.mul.Tensor or len(node.args) != 2:
            continue
        if not all(isinstance(a, torch.fx.Node) and _shape(a) for a in node.args):
            continue
        shapes = [_shape(a) for a in node.args]
        if len(shapes[0]) != len(shapes[1]) or len(shapes[0]) < 4 or shapes[0][0] != shapes[1][0] \
                or shapes[0][0].isdigit():
            continue
        for factor, other in ((0, 1), (1, 0)):
            f, o = shapes[factor], shapes[other]
            if f[-1] == "1" and o[-1].isdigit() and int(o[-1]) > 1 and f[-2] == o[-2] and not f[1].isdigit() \
                    and o[1] in (f[1], "1") and all(size.isdigit() for size in f[2:]):
                heads, channels = int(f[-2]), int(o[-1])
                name = f"_widen_{heads}x{channels}"
                dtype = node.args[factor].meta["val"].dtype
                if not hasattr(graph_module, name):
                    graph_module.register_buffer(name, torch.eye(heads, dtype=dtype).repeat_interleave(channels, 1))
                with graph.inserting_before(node):
                    # held back until the other operand exists, so that the widened copy is not made (and kept)
                    # early, typically in the forward pass for a product of the backward
                    zero = _zero_after(lambda target, *a, **k: graph.call_function(target, a, k), node.args[other],
                                       dtype)
                    matrix = graph.call_function(aten.add.Tensor, (graph.get_attr(name), zero))
                    flat = graph.call_function(aten.reshape.default, (node.args[factor], [-1, heads]))
                    wide = graph.call_function(aten.mm.default, (flat, matrix))
                    slots = graph.call_function(aten.sym_size.int, (node.args[factor], 1))
                    wide = graph.call_function(aten.reshape.default,
                                               (wide, [-1, slots, *map(int, f[2:-1]), channels]))
                node.replace_input_with(node.args[factor], wide)
                rewritten += 1
                break
    graph.lint()
    graph_module.recompile()
    return rewritten


def trace(model: MTModel, dtype: torch.dtype, rewrite: bool = True):
    """The forward+backward aten graph of ``model`` (a ``torch.fx.GraphModule`` with symbolic sizes), with full
    slices removed and, with ``rewrite``, the exact rewrites for onnxruntime's CPU provider
    (``drop_broadcast_expands``, ``rematerialize_gathers``, ``widen_innermost_broadcasts``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    module = ForceStressModule(model).eval()
    args = example_inputs(dtype)
    with torch.enable_grad():
        graph_module = make_fx(module, tracing_mode="symbolic", decomposition_table=_decompositions(),
                               _allow_non_fake_inputs=True)(*args)
    simplify(graph_module)
    if rewrite:
        drop_broadcast_expands(graph_module)
        rematerialize_gathers(graph_module)
        widen_innermost_broadcasts(graph_module)
    return graph_module, args


def _resolve(model_or_checkpoint) -> tuple[MTModel, str]:
    if isinstance(model_or_checkpoint, MTModel):
        return model_or_checkpoint, "none"
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        path = os.fspath(model_or_checkpoint)
        model = load_checkpoint(path)
        return model, file_sha256(path)
    raise TypeError(f"export() takes an MTModel or a checkpoint path, got {type(model_or_checkpoint).__name__}")


def untrained_outputs(meta: dict) -> list[str]:
    """Outputs whose head no training touched: the outputs of the model's ``untrained_heads`` (recorded by the
    trainer; the energy head gives energy, forces and stress), and every output when the model does not record
    them (a fresh model, or one trained elsewhere: set ``model.metadata["untrained_heads"] = []`` there)."""
    if "untrained_heads" not in meta:
        return list(OUTPUT_NAMES)
    heads = set(meta["untrained_heads"])
    if "energy" in heads:
        heads |= {"forces", "stress"}
    return [name for name in OUTPUT_NAMES if name in heads]


def export_metadata(model: MTModel, precision: str, checkpoint_sha256: str = "none") -> dict[str, str]:
    """The ``metadata_props`` of an export of ``model`` (all values strings)."""
    import mtsim

    meta = dict(getattr(model, "metadata", {}) or {})
    provenance = meta.get("training_data", meta.get("provenance", UNTRAINED))
    return {
        KEY_FORMAT: FORMAT_NAME,
        KEY_VERSION: str(FORMAT_VERSION),
        "input_layout": INPUT_LAYOUT,
        "model_name": str(meta.get("model_name", meta.get("name", f"mtsim-{model.config.preset}"))),
        "model_preset": model.config.preset,
        "model_config": json.dumps(asdict(model.config), sort_keys=True),
        "cutoff": repr(float(model.config.cutoff)),
        "elements": ",".join(str(z) for z in range(1, MAX_Z + 1)),
        "heads": json.dumps(list(OUTPUT_NAMES)),
        "precision": precision,
        "units": json.dumps(UNITS, ensure_ascii=False),
        "parameter_count": str(model.num_parameters()),
        "training_data": provenance if isinstance(provenance, str) else json.dumps(provenance, sort_keys=True),
        "untrained_outputs": json.dumps(untrained_outputs(meta)),
        "source_checkpoint_sha256": checkpoint_sha256,
        "mtsim_version": getattr(mtsim, "__version__", "unknown"),
    }


def export(model_or_checkpoint, path: str | os.PathLike, precision: str = "float32", *,
           metadata: dict[str, str] | None = None, checkpoint_sha256: str | None = None,
           verbose: bool = False) -> dict[str, str]:
    """Write ``model_or_checkpoint`` (an ``MTModel`` or a checkpoint path) to ``path`` as an mtsim ONNX file.

    ``precision`` ("float32" or "float64") is the type of every float input, output and weight of the file.
    ``metadata`` entries are added to (or override) the written metadata; ``checkpoint_sha256`` records the
    source checkpoint of an in-memory model (computed automatically when a path is given). Runs
    ``check_graph`` on the result and raises ``ExportError`` (writing nothing) if the graph breaks the
    contract. Returns the metadata written.
    """
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    source, source_sha256 = _resolve(model_or_checkpoint)
    checkpoint_sha256 = checkpoint_sha256 or source_sha256
    dtype = _TORCH_DTYPES[precision]
    model = copy.deepcopy(source).to(device="cpu", dtype=dtype).eval().requires_grad_(False)

    start = time.perf_counter()
    graph_module, args = trace(model, dtype)
    traced = time.perf_counter()
    from torch.export import Dim

    dims = {name: Dim(name) for name in ("n", "e", "b", "kr", "ks")}
    dynamic_shapes = tuple(
        {axis: dims[size] for axis, size in enumerate(INPUT_SHAPES[name]) if isinstance(size, str)}
        for name in INPUT_NAMES
    )
    with _quiet(not verbose):
        program = torch.onnx.export(
            graph_module, args, dynamo=True, dynamic_shapes=dynamic_shapes, optimize=False,
            opset_version=OPSET, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            verbose=verbose, report=False, custom_translation_table=_custom_translations(),
        )
    proto = program.model_proto
    exported = time.perf_counter()

    proto.ir_version = IR_VERSION
    proto.producer_name = "mtsim"
    written = export_metadata(model, precision, checkpoint_sha256)
    written.update({str(k): str(v) for k, v in (metadata or {}).items()})
    del proto.metadata_props[:]
    for key, value in written.items():
        proto.metadata_props.add(key=key, value=value)
    check_graph(proto, precision)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"exported ONNX model is invalid: {err}") from None

    path = os.fspath(path)
    tmp = f"{path}.tmp"
    weight_bytes = sum(np.prod(init.dims) * (8 if precision == "float64" else 4) for init in proto.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    else:
        onnx.save_model(proto, tmp)
    os.replace(tmp, path)
    if verbose:
        print(f"traced in {traced - start:.1f} s, exported in {exported - traced:.1f} s, "
              f"{len(proto.graph.node)} nodes -> {path}")
    return written


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence the exporter's progress prints, its warnings and its logging (e.g. 'torchvision is not installed')."""
    if not enabled:
        yield
        return
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ----------------------------------------------------------------------------------------------- graph checks
def check_graph(model, precision: str | None = None) -> None:
    """Raise ``ExportError`` if the ONNX ``model`` (a ``ModelProto`` or a path) breaks the export rules:

    * a ``ScatterND`` with ``reduction="add"`` (racy on onnxruntime's CPU provider);
    * an input or output dim that the contract makes dynamic (n, e, b) is fixed, or a fixed dim has the wrong
      size (``torch.onnx.export`` silently falls back to static shapes);
    * wrong input/output names or order;
    * (with ``precision``) a float tensor of the other precision among inputs, outputs, initializers,
      ``Constant`` nodes and ``Cast`` targets.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    from mtsim.onnx_format import _all_nodes, _shape_of

    problems = []
    for node in _all_nodes(model):
        if node.op_type == "ScatterND":
            reduction = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "reduction"),
                             b"none")
            reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
            if reduction != "none":
                problems.append(
                    f"node {node.name!r} is ScatterND(reduction={reduction!r}), which races on onnxruntime's CPU "
                    f"provider with more than one thread; write the reduction with Tensor.scatter_add so that it "
                    f"becomes ScatterElements"
                )
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    names = tuple(v.name for v in inputs)
    if names != INPUT_NAMES:
        problems.append(f"inputs are {list(names)}, expected {list(INPUT_NAMES)}")
    if tuple(v.name for v in graph.output) != OUTPUT_NAMES:
        problems.append(f"outputs are {[v.name for v in graph.output]}, expected {list(OUTPUT_NAMES)}")
    for values, shapes, kind in ((inputs, INPUT_SHAPES, "input"), (graph.output, OUTPUT_SHAPES, "output")):
        for value in values:
            if value.name not in shapes:
                continue
            shape, expected = _shape_of(value), shapes[value.name]
            if len(shape) != len(expected):
                problems.append(f"{kind} {value.name!r} has rank {len(shape)}, expected shape {expected}")
                continue
            for got, want in zip(shape, expected):
                if isinstance(want, str) and not isinstance(got, str):
                    problems.append(f"{kind} {value.name!r} has a static dim {got} where {want!r} must be "
                                    f"dynamic (shape {shape}); the exporter specialised it")
                elif isinstance(want, int) and got != want:
                    problems.append(f"{kind} {value.name!r} has shape {shape}, expected {expected}")
    if precision is not None:
        problems += _precision_problems(model, precision)
    if problems:
        raise ExportError("exported ONNX graph breaks the contract:\n  " + "\n  ".join(problems))


def _precision_problems(model, precision: str) -> list[str]:
    import onnx

    want = _ONNX_FLOAT_TYPES[precision]
    other = {1: "float32", 11: "float64", 10: "float16", 16: "bfloat16"}
    bad_types = {t for t in other if t != want}
    problems = []
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        elem = value.type.tensor_type.elem_type
        if elem in bad_types:
            problems.append(f"{value.name!r} is {other[elem]}, the file is {precision}")
    for init in graph.initializer:
        if init.data_type in bad_types:
            problems.append(f"initializer {init.name!r} is {other[init.data_type]}, the file is {precision}")
    from mtsim.onnx_format import _all_nodes

    for node in _all_nodes(model):
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                if attribute.t.data_type in bad_types:
                    problems.append(f"Constant {node.name!r} is {other[attribute.t.data_type]}")
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in bad_types:
                problems.append(f"Cast {node.name!r} to {other[attribute.i]}")
            if node.op_type == "ConstantOfShape" and attribute.type == onnx.AttributeProto.TENSOR:
                if attribute.t.data_type in bad_types:
                    problems.append(f"ConstantOfShape {node.name!r} is {other[attribute.t.data_type]}")
    return problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
