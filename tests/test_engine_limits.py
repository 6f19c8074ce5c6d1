"""Static measures of a compiled program (peak live bytes, cost) against hand counts and a measured run,
and runs stopped between steps by an interrupt callback."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from enginekit import measured_peak

from gradserve.engine import GraphBuilder, Interrupted, compile_graph, grad_operation
from gradserve.engine.compiler import STRAIGHT_AFTER

N = 1000
F64 = 8 * N
"""Bytes of one f64[N] tensor."""


def chain(ops: tuple[str, ...], n: int = N):
    """x -> ops[0] -> ops[1] -> ... as a compiled program."""
    b = GraphBuilder("chain")
    y = b.input("x", "float64", (n,))
    for op in ops:
        y = b.op(op, y)
    return compile_graph(b.build(y))


def test_a_chain_of_ufuncs_holds_the_input_and_one_buffer() -> None:
    # Exp: x, a. Sin writes into a (a dies there), Cos too. Peak: two f64[N], on the first run and on later ones.
    p = chain(("Exp", "Sin", "Cos"))
    assert p.peak_bytes == 2 * F64
    x = np.linspace(-1, 1, N)
    for _ in range(3):
        measured, out = measured_peak(p, [x])
        np.testing.assert_allclose(out, np.cos(np.sin(np.exp(x))))
        assert measured <= F64 + (64 << 10)
    assert p.flops == 3 * 2 * N


def test_a_value_read_late_stays_live_until_its_last_use() -> None:
    # a = Exp(x) is read by Sin and Cos, so x, a and b are live at once; Cos, a's last use, writes into a's buffer,
    # and Add into b's.
    b = GraphBuilder("fork")
    x = b.input("x", "float64", (N,))
    a = b.op("Exp", x)
    y = b.op("Add", b.op("Sin", a), b.op("Cos", a))
    p = compile_graph(b.build(y))
    assert p.peak_bytes == 3 * F64
    assert p.flops == 3 * 2 * N + 3 * N


def test_parameters_constants_and_copies_of_returned_inputs_count() -> None:
    # Returning the input x costs a copy of it; the f32[10, 10] parameter and the f64[N] constant stay live.
    b = GraphBuilder("resident")
    x = b.input("x", "float64", (N,))
    w = b.param("w", np.zeros((10, 10), np.float32))
    c = b.const(np.arange(N, dtype=np.float64))
    p = compile_graph(b.build((x, b.op("Add", x, c), w)))
    # x, c, x + c, w, then the copies of x and of w.
    assert p.peak_bytes == 3 * F64 + 400 + F64 + 400


def test_a_small_slice_keeps_its_large_base_alive() -> None:
    # s = a[0:1] is a view: a's buffer lives as long as s does, so Sin and Cos run beside it.
    b = GraphBuilder("slice")
    x = b.input("x", "float64", (N,))
    s = b.op("StridedSlice", b.op("Exp", x), begin=(0,), end=(1,), strides=(1,))
    p = compile_graph(b.build((s, b.op("Cos", b.op("Sin", x)))))
    # x, a (held by s), s itself (counted: it could be a copy), Sin's result (Cos writes into it); a is never
    # written into, since s looks into it.
    assert p.peak_bytes == 3 * F64 + 8


def test_views_add_no_bytes_and_no_cost() -> None:
    b = GraphBuilder("views")
    x = b.input("x", "float64", (N,))
    y = b.op("Transpose", b.op("BroadcastTo", x, shape=(4, N)), perm=(1, 0))
    p = compile_graph(b.build(b.op("Exp", y)))
    # x; the broadcast and transpose are views of x; Exp writes 4N elements.
    assert p.peak_bytes == F64 + 4 * F64
    assert p.flops == 1 + 1 + 2 * 4 * N


def test_selecting_from_a_broadcast_costs_what_is_selected() -> None:
    # A 2**30-element broadcast is a view; slicing 2 elements and gathering 3 rows cost only those.
    b = GraphBuilder("select")
    big = b.op("BroadcastTo", b.input("x", "float32", (1, 4)), shape=(1 << 28, 4))
    s = b.op("StridedSlice", big, begin=(0, 0), end=(1, 2), strides=(1, 1))
    g = b.op("Gather", big, b.input("i", "int32", (3,)), axis=0)
    p = compile_graph(b.build((s, g)))
    assert p.flops == 1 + 2 * 2 + (2 * 3 * 4 + 3)
    # x and i, the slice (counted as a copy, keeping x alive) and the gathered rows.
    assert p.peak_bytes == 16 + 12 + 8 + 48


@pytest.mark.parametrize(
    ("shapes", "flags", "flops"),
    [
        (((3, 4), (4, 5)), {}, 2 * 3 * 5 * 4),
        (((4, 3), (4, 5)), {"transpose_a": True}, 2 * 3 * 5 * 4),
        (((3, 4), (5, 4)), {"transpose_b": True}, 2 * 3 * 5 * 4),
        (((2, 1, 3, 4), (6, 4, 5)), {}, 2 * 12 * 3 * 5 * 4),
        (((3, 0), (0, 5)), {}, 3 * 5),
    ],
)
def test_products_cost_two_flops_per_multiply_add(shapes: tuple, flags: dict, flops: int) -> None:
    op = "MatMul" if all(len(s) == 2 for s in shapes) else "BatchMatMul"
    b = GraphBuilder("mm")
    a_, b_ = (b.input(f"x{i}", "float32", s) for i, s in enumerate(shapes))
    p = compile_graph(b.build(b.op(op, a_, b_, **flags)))
    assert p.flops == flops


def test_peak_bytes_matches_a_measured_run_with_large_intermediates() -> None:
    """tracemalloc sees NumPy's buffers: the run's own peak (inputs allocated before) is the static peak
    less the input's bytes, within 64 KiB for Python objects."""
    n = 1 << 20
    b = GraphBuilder("big")
    x = b.input("x", "float64", (n,))
    a = b.op("Exp", x)
    s = b.op("StridedSlice", a, begin=(0,), end=(2,), strides=(1,))
    y = b.op("Mul", b.op("Sin", a), b.op("Cos", x))
    z = b.op("ReduceSum", b.op("Add", y, b.op("Tanh", y)))
    p = compile_graph(b.build((s, z)))
    arr = np.linspace(-1, 1, n)
    measured, out = measured_peak(p, [arr])
    np.testing.assert_allclose(out[1], np.sum(np.sin(np.exp(arr)) * np.cos(arr) + np.tanh(np.sin(np.exp(arr)) * np.cos(arr))))
    slack = 64 << 10
    assert p.peak_bytes - arr.nbytes - slack <= measured <= p.peak_bytes - arr.nbytes + slack
    assert p.peak_bytes >= 4 * arr.nbytes


def one_op(op: str, shapes: tuple[tuple[int, ...], ...], **attrs: object):
    """A program applying ``op`` to float64 inputs of ``shapes`` (int64 ids for UnsortedSegmentSum's second)."""
    b = GraphBuilder(op)
    xs = [b.input(f"x{i}", "int64" if op == "UnsortedSegmentSum" and i else "float64", s) for i, s in enumerate(shapes)]
    return compile_graph(b.build(b.op(op, *xs, **attrs)))


BIG = (512, 512)
"""2 MiB of float64: large enough for NumPy's own temporaries to show, and to dwarf Python objects."""


@pytest.mark.parametrize(
    ("op", "shapes", "attrs"),
    [
        ("Exp", (BIG,), {}), ("Rsqrt", (BIG,), {}), ("Sigmoid", (BIG,), {}), ("GeLU", (BIG,), {}),
        ("Softmax", (BIG,), {}), ("LogSoftmax", (BIG,), {}), ("SoftmaxCrossEntropyWithLogits", (BIG, BIG), {}),
        ("LayerNorm", (BIG, BIG[1:], BIG[1:]), {}), ("UnsortedSegmentSum", (BIG, (512,)), {"num_segments": 512}),
        ("MatMul", (BIG, BIG), {"transpose_a": True}), ("Pow", (BIG, BIG), {}), ("Tile", (BIG,), {"multiples": (2, 1)}),
        ("Reshape", (BIG,), {"shape": (-1,)}), ("Concat", (BIG, BIG), {"axis": 1}),
    ],
)
def test_one_step_never_holds_more_than_its_static_peak(op: str, shapes: tuple, attrs: dict) -> None:
    """Measured with tracemalloc (inputs allocated before), a run's own peak is at most peak_bytes less the
    inputs, plus 64 KiB for Python objects: op temporaries are counted through OpDef.scratch."""
    p = one_op(op, shapes, **attrs)
    rng = np.random.default_rng(0)
    args = [rng.integers(0, 512, s) if v.dtype == np.int64 else rng.uniform(0.5, 2.0, s) for s, v in zip(shapes, p.graph.inputs)]
    given = sum(a.nbytes for a in args)
    measured, _ = measured_peak(p, args)
    assert measured <= p.peak_bytes - given + (64 << 10), (measured, p.peak_bytes - given)


def test_interrupt_stops_between_steps() -> None:
    p = chain(("Exp", "Sin", "Cos", "Tanh", "Neg"))
    calls: list[int] = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Interrupted, match="interrupted after 3 of 5 steps"):
        p(np.ones(N), interrupt=stop_after_three)
    assert len(calls) == 4
    x = np.linspace(0, 1, N)
    want = -np.tanh(np.cos(np.sin(np.exp(x))))
    np.testing.assert_allclose(p.run([x], None, lambda: False), want)
    np.testing.assert_allclose(p(x, interrupt=lambda: False), want)
    with pytest.raises(Interrupted, match="after 0 of 5 steps"):
        p.run([x], interrupt=lambda: True)


def test_interrupt_stops_between_steps_of_the_straight_line_plan_too() -> None:
    """A server worker always passes an interrupt: after STRAIGHT_AFTER runs it gets the generated plan, which still asks
    before every step and says how many were done."""
    p = chain(("Exp", "Sin", "Cos", "Tanh", "Neg"))
    x = np.linspace(0, 1, N)
    want = -np.tanh(np.cos(np.sin(np.exp(x))))
    for _ in range(STRAIGHT_AFTER + 2):
        np.testing.assert_allclose(p.run([x], None, lambda: False), want)
    assert p._straight_checked is not None and p._straight is None
    for k in range(6):
        asked: list[int] = []

        def stop_at_k() -> bool:
            asked.append(1)
            return len(asked) > k

        if k == 5:
            np.testing.assert_allclose(p(x, interrupt=stop_at_k), want)
        else:
            with pytest.raises(Interrupted, match=f"interrupted after {k} of 5 steps"):
                p(x, interrupt=stop_at_k)
        assert len(asked) == min(k + 1, 5)


def test_a_graph_and_the_gradients_made_from_it_are_freed_together() -> None:
    """GradOperation over a library function caches its result on the source graph; once the caller drops
    the network, both are garbage (a weak-key table kept them forever: the result shares the library
    that holds its source, so a server decoding networks grew without bound)."""
    library: dict = {}
    f = GraphBuilder("f", library)
    fx = f.input("x", "float64", (3,))
    library["f"] = f.build(f.op("Sin", fx))
    b = GraphBuilder("main", library)
    grads = b.op("GradOperation", b.input("x", "float64", (3,)), fn="f")
    main = b.build(grads[0])
    first = grad_operation(library["f"])
    assert grad_operation(library["f"]) is first, "the gradient is cached while its source lives"
    refs = [weakref.ref(g) for g in (library["f"], main, first)]
    del library, f, fx, b, grads, main, first
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
