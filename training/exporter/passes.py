"""Exact rewrites of the traced forward+backward aten graph (a ``torch.fx.GraphModule`` from ``make_fx`` with
symbolic sizes), run in the order of ``PASSES``.

Every pass needs a traced graph: each node carries its example value (``node.meta["val"]``, a fake tensor whose
sizes are ints where fixed and ``torch.SymInt`` where symbolic); nodes a pass adds carry none and are not matched
by a later pass. Every pass changes the graph, not its numbers (bitwise, ``tests/test_export.py``), returns the
number of rewrites it made and leaves nothing it matches behind (``GraphPass.left``, checked by ``run_passes``).
Shapes are matched with the predicates below on the sizes themselves, never on their printed form.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

aten = torch.ops.aten


# ------------------------------------------------------------------------------------------ shape predicates
def sizes(node) -> tuple | None:
    """The sizes of the tensor ``node`` computes (ints and ``torch.SymInt``), None for a non-tensor or a node
    without an example value."""
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def static_size(size) -> int | None:
    """The value of a size fixed at tracing, None for a symbolic one."""
    if isinstance(size, int):
        return size
    return size.node.maybe_as_int()


def is_symbolic(size) -> bool:
    return static_size(size) is None


def same_size(a, b) -> bool:
    """Both fixed and equal, or both symbolic with the same expression."""
    if is_symbolic(a) or is_symbolic(b):
        return is_symbolic(a) and is_symbolic(b) and a.node.expr == b.node.expr
    return static_size(a) == static_size(b)


def broadcast(a: tuple, b: tuple) -> tuple | None:
    """The broadcast of two shapes of equal rank, None where they do not broadcast."""
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b):
        if not same_size(x, y) and 1 not in (static_size(x), static_size(y)):
            return None
        out.append(y if static_size(x) == 1 else x)
    return tuple(out)


def same_shape(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(map(same_size, a, b))


# ------------------------------------------------------------------------------------------ the pass protocol
@dataclass(frozen=True)
class GraphPass:
    """One rewrite: ``rewrite(graph_module)`` edits the graph in place and returns the number of rewrites made;
    ``left(graph_module)`` counts what it would still rewrite (0 after the pass), None where that is not a
    fixed point of the pass."""

    name: str
    rewrite: Callable[[torch.fx.GraphModule], int]
    left: Callable[[torch.fx.GraphModule], int] | None = None


class GraphPassError(RuntimeError):
    """A graph pass was given a graph it cannot work on, or left behind what it should have rewritten."""


def check_traced(graph_module) -> None:
    """Raise ``GraphPassError`` unless every input of ``graph_module`` carries an example tensor (make_fx)."""
    bare = [node.name for node in graph_module.graph.nodes if node.op == "placeholder" and sizes(node) is None]
    if bare:
        raise GraphPassError(f"graph inputs {bare} carry no example value (meta['val']): trace with make_fx first")


def run_passes(graph_module, passes) -> dict[str, int]:
    """Run ``passes`` (``GraphPass``) in order; returns the rewrites each made (also kept in
    ``graph_module.meta["rewrites"]``). Raises ``GraphPassError`` if a pass leaves a match behind."""
    check_traced(graph_module)
    counts = {}
    for graph_pass in passes:
        counts[graph_pass.name] = graph_pass.rewrite(graph_module)
        left = graph_pass.left(graph_module) if graph_pass.left else 0
        if left:
            raise GraphPassError(f"{graph_pass.name} left {left} of its matches in the graph")
    graph_module.meta.setdefault("rewrites", {}).update(counts)
    return counts


def warn_idle(counts: dict[str, int]) -> list[str]:
    """Warn (``UserWarning``) about each pass that rewrote nothing: the model's layout no longer has what the pass
    was written for. Returns their names."""
    idle = [name for name, count in counts.items() if count == 0]
    for name in idle:
        warnings.warn(f"export pass {name} found nothing to rewrite in this model", stacklevel=2)
    return idle


# ---------------------------------------------------------------------------------------------------- passes
_FULL = 2**62
_SLICE_SIGNATURES = {
    aten.slice.Tensor: (("self", "dim", "start", "end", "step"), {"dim": 0, "start": None, "end": None, "step": 1}),
    aten.slice_backward.default: (("grad", "sizes", "dim", "start", "end", "step"), {}),
}


def _is_full_slice(node) -> bool:
    if node.op != "call_function" or node.target not in _SLICE_SIGNATURES:
        return False
    names, defaults = _SLICE_SIGNATURES[node.target]
    arguments = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    start, end, step = arguments["start"], arguments["end"], arguments["step"]
    return start in (0, None) and (end is None or (isinstance(end, int) and end >= _FULL)) and step in (1, None)


def remove_full_slices(graph_module) -> int:
    """Remove full slices (``x[:, None]`` traces as ``slice(x, 0, 0, 2**63-1)``) and their backward passes
    (``slice_backward``, which the exporter writes as zeros + ``ScatterND``): both are the identity.
    After: no full slice left. Returns the number of nodes removed."""
    removed = 0
    for node in list(graph_module.graph.nodes):
        if _is_full_slice(node):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return removed


_BROADCASTING = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor}


def _expand_source(expand, user):
    """The expand's input where ``user`` (an element-wise op reading the expand) gets the same numbers by
    broadcasting it with its other operand, else None (also for 0-d tensors)."""
    if user.target not in _BROADCASTING or len(user.args) != 2 or user.args[0] is user.args[1]:
        return None
    other = user.args[1] if user.args[0] is expand else user.args[0]
    source = expand.args[0]
    if not (isinstance(other, torch.fx.Node) and isinstance(source, torch.fx.Node)):
        return None
    if not sizes(other) or not sizes(source):
        return None
    return source if same_shape(broadcast(sizes(source), sizes(other)), sizes(expand)) else None


def _expands(graph_module):
    return [
        node for node in graph_module.graph.nodes if node.op == "call_function" and node.target == aten.expand.default
    ]


def _expand_reads(graph_module) -> int:
    """Element-wise reads of an ``expand`` that broadcasting its input can replace."""
    return sum(_expand_source(node, user) is not None for node in _expands(graph_module) for user in node.users)


def drop_broadcast_expands(graph_module) -> int:
    """Let element-wise ops broadcast instead of reading a materialised ``expand``: autograd's backward of a sum
    expands the gradient (e.g. [n,k,8,1] -> [n,k,8,16]), a view in eager but a copy in onnxruntime (its ``Expand``
    of a size-1 innermost dim cost more than the two products that read it). Where broadcasting the expand's input
    with the other operand gives the expanded shape, the numbers are the same. After: no such read left.
    Returns the number of inputs rewired."""
    rewired = 0
    for expand in _expands(graph_module):
        for user in list(expand.users):  # one at a time: a rewired input changes what its user's other reads see
            source = _expand_source(expand, user)
            if source is not None:
                user.replace_input_with(expand, source)
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
    exists; onnxruntime must run nodes in graph order (``mtsim.onnx_format.SESSION_OPTIONS``). After: the graph
    lints (no fixed point to check: the copies move later uses). Returns the number of copies added."""
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
    first = call(aten.slice.Tensor, call(aten.reshape.default, tensor, [-1]), 0, 0, 1)
    same = call(aten._to_copy.default, call(aten.eq.Tensor, first, first), dtype=tensor.meta["val"].dtype)
    return call(aten._to_copy.default, call(aten.mul.Tensor, call(aten.sum.default, same), 0), dtype=dtype)


def _per_head_factor(node) -> tuple[int, int] | None:
    """(factor, other): argument indices of a product ``node`` of a slot tensor factor [n,k,..,H,1] (n, k
    symbolic, the rest fixed) with [n,k,..,H,D] or [n,1,..,H,D] (D fixed > 1), else None."""
    if node.op != "call_function" or node.target != aten.mul.Tensor or len(node.args) != 2:
        return None
    shapes = [sizes(a) for a in node.args]
    if any(shape is None for shape in shapes):
        return None
    if (
        len(shapes[0]) != len(shapes[1])
        or len(shapes[0]) < 4
        or not same_size(shapes[0][0], shapes[1][0])
        or not is_symbolic(shapes[0][0])
    ):
        return None
    for factor, other in ((0, 1), (1, 0)):
        f, o = shapes[factor], shapes[other]
        channels = static_size(o[-1])
        if (
            static_size(f[-1]) == 1
            and channels is not None
            and channels > 1
            and same_size(f[-2], o[-2])
            and is_symbolic(f[1])
            and (same_size(o[1], f[1]) or static_size(o[1]) == 1)
            and not any(map(is_symbolic, f[2:]))
        ):
            return factor, other
    return None


def _per_head_products(graph_module) -> int:
    return sum(_per_head_factor(node) is not None for node in graph_module.graph.nodes)


def widen_innermost_broadcasts(graph_module) -> int:
    """Products of a slot tensor with a per-head factor broadcast along the innermost dim ([n,k,..,H,1] x
    [n,k,..,H,D], attention weights times values and their gradients) read the factor widened to [n,k,..,H,D] by
    a product with the constant 0/1 matrix ``repeat_interleave(eye(H), D)`` [H, H*D]: onnxruntime's CPU ``Mul``
    broadcasting a size-1 innermost dim ran ~3x slower than an element-wise one, its ``Expand`` slower still,
    and the small ``MatMul`` costs a tenth of that. Each widened entry is ``a * 1`` plus ``H - 1`` terms
    ``a' * 0``: exactly ``a`` for finite factors. Only factors that are slot tensors (leading symbolic dims n and
    k) are rewritten, the other operand [n,k,...] or [n,1,...]. After: no such product left.
    Returns the number of products rewritten."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        match = _per_head_factor(node)
        if match is None:
            continue
        factor, other = match
        f, o = sizes(node.args[factor]), sizes(node.args[other])
        heads, channels = static_size(f[-2]), static_size(o[-1])
        name = f"_widen_{heads}x{channels}"
        dtype = node.args[factor].meta["val"].dtype
        if not hasattr(graph_module, name):
            graph_module.register_buffer(name, torch.eye(heads, dtype=dtype).repeat_interleave(channels, 1))
        with graph.inserting_before(node):
            # held back until the other operand exists, so that the widened copy is not made (and kept) early,
            # typically in the forward pass for a product of the backward
            zero = _zero_after(lambda target, *a, **k: graph.call_function(target, a, k), node.args[other], dtype)
            matrix = graph.call_function(aten.add.Tensor, (graph.get_attr(name), zero))
            flat = graph.call_function(aten.reshape.default, (node.args[factor], [-1, heads]))
            wide = graph.call_function(aten.mm.default, (flat, matrix))
            slots = graph.call_function(aten.sym_size.int, (node.args[factor], 1))
            wide = graph.call_function(aten.reshape.default, (wide, [-1, slots, *map(static_size, f[2:-1]), channels]))
        node.replace_input_with(node.args[factor], wide)
        rewritten += 1
    graph.lint()
    graph_module.recompile()
    return rewritten


CLEANUP = (GraphPass("remove_full_slices", remove_full_slices, lambda gm: sum(map(_is_full_slice, gm.graph.nodes))),)
"""Passes every export runs: they remove what the ONNX exporter would write badly."""
REWRITES = (
    GraphPass("drop_broadcast_expands", drop_broadcast_expands, _expand_reads),
    GraphPass("rematerialize_gathers", rematerialize_gathers),
    GraphPass("widen_innermost_broadcasts", widen_innermost_broadcasts, _per_head_products),
)
"""Passes for onnxruntime's speed and memory on the CPU (``trace(rewrite=False)`` leaves them out)."""
PASSES = CLEANUP + REWRITES
"""Every pass, in the order the exporter runs them."""
