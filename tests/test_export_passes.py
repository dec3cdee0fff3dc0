"""The exporter's graph passes (mtsim.training.exporter.passes), each on a tiny traced graph: the rewrite happens,
nothing it matches is left, and the numbers are bitwise those of the graph before the pass."""

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")

from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from mtsim.training.exporter import PASSES, GraphPass, GraphPassError  # noqa: E402
from mtsim.training.exporter.passes import (  # noqa: E402
    REMATERIALIZE_GAP,
    broadcast,
    drop_broadcast_expands,
    is_symbolic,
    rematerialize_gathers,
    remove_full_slices,
    run_passes,
    same_size,
    sizes,
    static_size,
    warn_idle,
    widen_innermost_broadcasts,
)

aten = torch.ops.aten


def traced(function, *args):
    """``function`` traced as the exporter traces the model (symbolic sizes, constants allowed)."""
    with torch.enable_grad():
        return make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)


def count(graph_module, target) -> int:
    return sum(node.target == target for node in graph_module.graph.nodes)


def assert_same_numbers(before, after, *args):
    with torch.no_grad():
        for a, b in zip(before(*args), after(*args)):
            assert torch.equal(a, b)


def test_shape_predicates_on_symbolic_and_static_sizes():
    graph_module = traced(lambda x, y: (x * 2, y + 1), torch.zeros(5, 1, 3), torch.zeros(5, 7, 3))
    x, y = [sizes(node) for node in graph_module.graph.nodes if node.op == "placeholder"]
    assert is_symbolic(x[0]) and static_size(x[1]) == 1 and is_symbolic(x[2])
    assert same_size(x[0], y[0]) and same_size(x[2], y[2]) and not same_size(x[0], y[1])
    assert not same_size(x[1], y[1]) and same_size(x[1], 1)
    assert [same_size(a, b) for a, b in zip(broadcast(x, y), y)] == [True, True, True]
    assert broadcast(y, (y[0], y[2], y[1])) is None and broadcast(x, y[:2]) is None


def test_remove_full_slices():
    """x[:, None] and its backward (slice_backward) are identities and go."""

    def gradient(x):
        return torch.autograd.grad((x[:, None] ** 2).sum(), x)[0], x[0:2]

    graph_module = traced(gradient, torch.randn(5, 3, requires_grad=True))
    before = copy.deepcopy(graph_module)
    full = count(graph_module, aten.slice.Tensor) + count(graph_module, aten.slice_backward.default)
    assert full >= 2
    assert remove_full_slices(graph_module) == full - 1  # x[0:2] is not full and stays
    assert count(graph_module, aten.slice_backward.default) == 0 and count(graph_module, aten.slice.Tensor) == 1
    assert_same_numbers(before, graph_module, torch.randn(8, 3))


def test_drop_broadcast_expands():
    """a.expand_as(b) * b reads a itself, broadcast; an expand the other operand cannot broadcast stays."""

    def function(a, b, c):
        return a.expand_as(b) * b, a.expand_as(b) + c

    graph_module = traced(function, torch.randn(5, 7, 1), torch.randn(5, 7, 4), torch.randn(5, 7, 1))
    before = copy.deepcopy(graph_module)
    assert count(graph_module, aten.expand.default) == 2
    assert drop_broadcast_expands(graph_module) == 1
    assert count(graph_module, aten.expand.default) == 1  # a + c would be [n,k,1], not [n,k,m]
    assert_same_numbers(before, graph_module, torch.randn(3, 6, 1), torch.randn(3, 6, 9), torch.randn(3, 6, 1))


def test_rematerialize_gathers():
    """A gather used again more than REMATERIALIZE_GAP nodes later is gathered again next to that use."""

    def function(h, index):
        gathered = h.index_select(0, index)
        z = gathered * 2
        for _ in range(REMATERIALIZE_GAP + 5):
            z = z.sin()
        return z + gathered, gathered * 3

    graph_module = traced(function, torch.randn(5, 4), torch.tensor([0, 2, 4, 1, 1, 3, 0]))
    before = copy.deepcopy(graph_module)
    assert count(graph_module, aten.index_select.default) == 1
    assert rematerialize_gathers(graph_module) == 1
    assert count(graph_module, aten.index_select.default) == 2
    order = {node: k for k, node in enumerate(graph_module.graph.nodes)}
    late = max((n for n in graph_module.graph.nodes if n.target == aten.index_select.default), key=order.get)
    assert all(order[user] - order[late] <= 2 for user in late.users)  # right before its use
    assert_same_numbers(before, graph_module, torch.randn(9, 4), torch.tensor([8, 0, 3, 3, 7, 1, 2, 5, 6, 4]))
    assert (
        rematerialize_gathers(
            copy.deepcopy(traced(lambda h, i: h.index_select(0, i) * 2, torch.randn(5, 4), torch.tensor([0, 1, 1])))
        )
        == 0
    )


def test_widen_innermost_broadcasts():
    """A per-head factor [n,k,H,1] times [n,k,H,D] (n, k symbolic; H, D fixed) reads the factor widened by a
    0/1 matrix product; a product whose H is symbolic is left alone."""
    heads, channels = torch.randn(8, 1), torch.randn(8, 16)

    def function(x, y):
        factor = x[..., None, None] * heads  # [n,k,8,1]
        values = x[..., None, None] * channels  # [n,k,8,16]
        return factor * values, y * y.sum(-1, keepdim=True)  # y: [n,k,H,D], all symbolic

    graph_module = traced(function, torch.randn(5, 7), torch.randn(5, 7, 3, 4))
    before = copy.deepcopy(graph_module)
    assert count(graph_module, aten.mm.default) == 0
    assert widen_innermost_broadcasts(graph_module) == 1
    assert count(graph_module, aten.mm.default) == 1
    assert_same_numbers(before, graph_module, torch.randn(3, 6), torch.randn(3, 6, 2, 9))


def test_run_passes_counts_checks_and_warns():
    """run_passes records each pass's rewrites; a pass that finds nothing is counted 0 and export warns about it;
    a pass that leaves a match behind and an untraced graph are errors."""
    graph_module = traced(lambda x: x * 2, torch.randn(5, 3))
    counts = run_passes(graph_module, PASSES)
    assert counts == {p.name: 0 for p in PASSES} and graph_module.meta["rewrites"] == counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_idle(counts) == [p.name for p in PASSES]
    assert [str(w.message) for w in caught] == [
        f"export pass {p.name} found nothing to rewrite in this model" for p in PASSES
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_idle({"remove_full_slices": 3}) == []
    stubborn = GraphPass("stubborn", lambda gm: 0, lambda gm: 2)
    with pytest.raises(GraphPassError, match="stubborn left 2"):
        run_passes(graph_module, [stubborn])
    with pytest.raises(GraphPassError, match="no example value"):
        run_passes(torch.fx.symbolic_trace(torch.nn.ReLU()), PASSES)
