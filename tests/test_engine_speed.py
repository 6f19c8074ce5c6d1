"""What the engine's speed work must not change: the generated straight-line plan gives the step loop's results,
rebuilt graphs share one read-only copy of each weight, and copies of checked nodes keep their types."""
from __future__ import annotations

import gc
import pickle
import weakref

import numpy as np
import pytest

from gradserve.engine import GraphBuilder, GraphError, InputError, compile_graph, grad_operation, jvp, vjp


def _mlp(rng: np.random.Generator, batch: int = 5):  # type: ignore[no-untyped-def]
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", (batch, 3))
    w0 = b.param("w0", rng.standard_normal((3, 4)).astype(np.float32))
    w1 = b.param("w1", rng.standard_normal((4, 2)).astype(np.float32))
    h = b.op("Tanh", b.op("MatMul", x, w0))
    parts = b.op("Split", b.op("MatMul", h, w1), axis=1, output_num=2)
    d = parts[0] * parts[1] - b.op("Sin", parts[0])
    return b.build(b.op("ReduceMean", d * d))


def _mlp_by_hand(x: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> list[np.ndarray]:
    """The loss's gradients with respect to w0 and w1, written out."""
    h = np.tanh(x @ w0)
    o = h @ w1
    p, q = o[:, :1], o[:, 1:]
    d = p * q - np.sin(p)
    gd = 2 * d / d.size
    go = np.concatenate([gd * (q - np.cos(p)), gd * p], axis=1)
    return [x.T @ ((go @ w1.T) * (1 - h * h)), h.T @ go]


def test_later_runs_use_the_straight_line_plan_and_agree_with_the_first() -> None:
    rng = np.random.default_rng(0)
    net = _mlp(rng)
    prog = compile_graph(grad_operation(net, get_by_list=True, weights=["w0", "w1"]))
    ws = [net.param(n).data for n in ("w0", "w1")]
    for _ in range(4):
        x = rng.standard_normal((5, 3)).astype(np.float32)
        got = [prog(x) for _ in range(3)]
        want = _mlp_by_hand(x, *ws)
        for run in got:
            for a, b in zip(run, want):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(run, got[0]):
                np.testing.assert_array_equal(a, b)
    assert prog._straight is not None


def test_a_program_pickled_after_its_straight_line_plan_runs_alike_and_makes_its_own() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = GraphBuilder("sin_tanh")
    x = b.input("x", "float32", (5, 3))
    loss = b.op("ReduceMean", b.op("Sin", b.op("Tanh", b.op("MatMul", x, b.param("w", w)))))
    prog = compile_graph(grad_operation(b.build(loss), get_by_list=True, weights=["w"]))
    for _ in range(10):
        prog(rng.standard_normal((5, 3)).astype(np.float32))
    assert prog._straight is not None
    copy = pickle.loads(pickle.dumps(prog))
    for _ in range(2):
        xv = rng.standard_normal((5, 3)).astype(np.float32)
        h = np.tanh(xv @ w)
        (got,) = copy(xv)
        np.testing.assert_allclose(got, xv.T @ (np.cos(h) * (1 - h * h) / h.size), rtol=1e-5, atol=1e-6)
    assert copy._straight is not None and copy._straight is not prog._straight


def test_buffers_written_in_place_are_never_returned_twice_or_inputs() -> None:
    # y = cos(sin(x)) + 1 reuses Sin's buffer for Cos and Add; the input and the returned arrays stay untouched.
    b = GraphBuilder("inplace")
    x = b.input("x", "float64", (6,))
    s = b.op("Sin", x)
    y = b.op("Cos", s) + 1.0
    prog = compile_graph(b.build((y, b.op("Exp", x))))
    arr = np.linspace(0, 1, 6)
    keep = arr.copy()
    first = prog(arr)
    second = prog(arr)
    np.testing.assert_array_equal(arr, keep)
    np.testing.assert_allclose(first[0], np.cos(np.sin(keep)) + 1)
    np.testing.assert_allclose(first[1], np.exp(keep))
    assert not np.shares_memory(first[0], second[0]) and not np.shares_memory(first[0], first[1])
    np.testing.assert_array_equal(first[0], second[0])


def test_every_graph_of_one_network_holds_the_same_read_only_weights() -> None:
    rng = np.random.default_rng(1)
    given = rng.standard_normal((3, 4)).astype(np.float32)
    net = _mlp(rng)
    w0 = net.param("w0").data
    assert not np.shares_memory(w0, given) and not w0.flags.writeable
    derived = [
        grad_operation(net, get_by_list=True, weights=["w0", "w1"]),
        grad_operation(net, get_all=True),
        vjp(net, (0,)),
        jvp(net, (0,)),
        grad_operation(grad_operation(net, get_all=True), get_by_list=True, weights=["w0"]),
    ]
    progs = [compile_graph(g) for g in derived]
    for g in [*derived, *(p.graph for p in progs)]:
        assert g.param("w0").data is w0
    assert not w0.flags.writeable


def test_a_writable_array_is_copied_once_and_a_read_only_one_shared() -> None:
    b = GraphBuilder("p")
    writable = np.ones(3, np.float32)
    frozen = np.zeros(3, np.float32)
    frozen.setflags(write=False)
    b.param("a", writable)
    b.param("b", frozen)
    b.param("c", [1.0, 2.0])
    g = b.build(b.op("Add", b.get_param("a"), b.get_param("b")))
    writable[0] = 5.0
    assert g.param("a").data[0] == 1.0 and not g.param("a").data.flags.writeable
    assert g.param("b").data is frozen
    assert g.param("c").data.dtype == np.float64 and not g.param("c").data.flags.writeable


def test_copies_of_checked_nodes_keep_types_names_and_marks() -> None:
    rng = np.random.default_rng(2)
    net = _mlp(rng)
    g = grad_operation(net, get_all=True)
    forward_ops = [n.op for n in net.nodes]
    assert [n.op for n in g.nodes[: len(forward_ops)]] == forward_ops
    for a, b in zip(net.nodes, g.nodes):
        assert a.name == b.name and a.attrs == b.attrs
        assert [v.type for v in a.outputs] == [v.type for v in b.outputs]


def test_transforms_leave_the_garbage_collector_as_they_found_it() -> None:
    rng = np.random.default_rng(3)
    net = _mlp(rng)
    assert gc.isenabled()
    compile_graph(grad_operation(net, get_all=True))
    assert gc.isenabled()
    with pytest.raises(GraphError, match="weight 'nope' is not a parameter"):
        grad_operation(net, get_by_list=True, weights=["nope"])
    assert gc.isenabled()
    gc.disable()
    try:
        compile_graph(vjp(net, (0,)))
        assert not gc.isenabled()
    finally:
        gc.enable()


class _Cycle:
    """Cyclic garbage, as a caller's code may leave before a compile (only the cyclic collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def test_cyclic_garbage_made_before_a_transform_is_freed_by_the_young_collections_after_it() -> None:
    rng = np.random.default_rng(3)
    net = _mlp(rng)
    gc.collect()
    cycle = _Cycle()
    freed = weakref.ref(cycle)
    del cycle
    compile_graph(grad_operation(net, get_all=True))
    kept: list[list[int]] = [[] for _ in range(30 * gc.get_threshold()[0])]  # live: young collections only, no full one
    assert freed() is None, "a server loop that compiles between requests would keep such garbage without bound"
    del kept


def test_calls_after_the_straight_line_plan_still_check_inputs_and_parameters() -> None:
    rng = np.random.default_rng(3)
    net = _mlp(rng)
    prog = compile_graph(grad_operation(net, get_by_list=True, weights=["w0", "w1"]))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    ws = [rng.standard_normal(net.param(n).data.shape).astype(np.float32) for n in ("w0", "w1")]
    for _ in range(10):
        prog(x)
    assert prog._straight is not None
    for a, b in zip(prog(x, params={"w0": ws[0], "w1": ws[1]}), _mlp_by_hand(x, *ws)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(prog(x), _mlp_by_hand(x, net.param("w0").data, net.param("w1").data)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"input 'x' expects float32\[5, 3\], got float64\[5, 3\]"):
        prog(x.astype(np.float64))
    with pytest.raises(InputError, match=r"input 'x' expects float32\[5, 3\], got float32\[3, 5\]"):
        prog(x.T.copy())
    with pytest.raises(InputError, match="not an ndarray"):
        prog(x.tolist())
    with pytest.raises(InputError, match="takes 1 inputs"):
        prog(x, x)
    with pytest.raises(InputError, match=r"parameter 'w1' expects float32\[4, 2\], got float32\[2, 4\]"):
        prog(x, params={"w1": ws[1].T.copy()})
    with pytest.raises(InputError, match="has no parameter 'w9'"):
        prog(x, params={"w9": ws[1]})


def test_compiling_shares_unchanged_nodes_and_leaves_the_source_graph_as_it_was() -> None:
    rng = np.random.default_rng(4)
    g = grad_operation(_mlp(rng), get_by_list=True, weights=["w0", "w1"])
    before = str(g)
    nodes = g.nodes
    prog = compile_graph(g)
    assert str(g) == before and g.nodes is nodes
    kept = {id(n) for n in nodes}
    assert any(id(n) in kept for n in prog.graph.nodes)  # the forward part is shared, not copied
    names = [v.name for n in prog.graph.nodes for v in n.outputs]
    assert len(names) == len(set(names))
    b = GraphBuilder("plain")
    x = b.input("x", "float32", (2,))
    plain = b.build(b.op("Sin", x))
    assert compile_graph(plain).graph.nodes == plain.nodes
