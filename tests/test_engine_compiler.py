"""engine/compiler.py: the optimizer's passes (CSE, dead code, constant folding, seeded ones), the
program's memory (intermediates freed, outputs never aliased), its element count and its input checks."""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
from enginekit import RNG, A, B, C, W, two_input_net

from gradserve.engine import GraphBuilder, InputError, compile_graph, compiler, grad_operation


def test_compiler_merges_common_subexpressions_and_drops_dead_code() -> None:
    g = GraphBuilder("twice")
    x, y = g.input("x", "float64", (2, 3)), g.input("y", "float64", (3, 3))
    g.op("Exp", x)
    net = g.build(g.op("MatMul", x, y) + g.op("MatMul", x, y))
    prog = compile_graph(grad_operation(net))
    ops = [n.op for n in prog.graph.nodes]
    assert ops.count("MatMul") == 1 and "Exp" not in ops
    yy = RNG.standard_normal((3, 3))
    np.testing.assert_allclose(prog(A, yy), 2 * np.ones((2, 3)) @ yy.T)


def test_compiler_folds_constants() -> None:
    g = GraphBuilder("fold")
    x = g.input("x", "float64", (2,))
    two, three = g.const(2.0, "float64"), g.const(3.0, "float64")
    prog = compile_graph(g.build(x * (two * three)))
    assert [n.op for n in prog.graph.nodes] == ["Const", "Mul"]
    np.testing.assert_allclose(prog(np.array([1.0, 2.0])), [6.0, 12.0])


def test_program_frees_intermediates_after_last_use() -> None:
    n, depth = 1_000_000, 40
    g = GraphBuilder("deep")
    v = g.input("x", "float64", (n,))
    for _ in range(depth):
        v = g.op("Sin", v)
    prog = compile_graph(g.build(v))
    x = np.full(n, 0.5)
    tracemalloc.start()
    try:
        out = prog(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (n,)
    assert peak < 4 * x.nbytes, f"peak {peak / 1e6:.0f} MB for {depth} steps of {x.nbytes / 1e6:.0f} MB"


def test_program_elements_count_what_each_step_reads_and_writes_after_optimization() -> None:
    g = GraphBuilder("f")
    x, y = g.input("x", "float32", (2, 3)), g.input("y", "float32", (3, 4))
    g.op("Cos", x)  # dead: not counted
    h = g.op("MatMul", x * g.const(np.float32(2.0)), y)
    prog = compile_graph(g.build(h))
    # Mul reads x (6) and a folded scalar constant (1), writes 6; MatMul reads 6 + 12, writes 8.
    assert prog.elements == (6 + 1 + 6) + (6 + 12 + 8)


def test_run_time_inputs_are_checked() -> None:
    prog = compile_graph(grad_operation(two_input_net()))
    with pytest.raises(InputError, match=r"takes 3 inputs \['a', 'b', 'c'\], got 2"):
        prog(A, B)
    with pytest.raises(InputError, match=r"input 'b' expects float64\[2, 3\], got float32\[2, 3\]"):
        prog(A, B.astype(np.float32), C)
    with pytest.raises(InputError, match=r"no parameter 'v'"):
        prog(A, B, C, params={"v": W})


def test_outputs_never_alias_inputs_or_parameters() -> None:
    g = GraphBuilder("id")
    x = g.input("x", "float64", (2,))
    prog = compile_graph(g.build((x, g.param("w", np.ones(2)))))
    arg = np.array([1.0, 2.0])
    out_x, out_w = prog(arg)
    out_x[0] = 5.0
    out_w[0] = 5.0
    np.testing.assert_array_equal(arg, [1.0, 2.0])
    np.testing.assert_array_equal(prog(arg)[1], [1.0, 1.0])


def test_multiplying_by_seeded_ones_costs_nothing() -> None:
    """d sum(sin(x))/dx for a large x compiles to Cos alone: the forward Sin and the ones are gone."""
    g = GraphBuilder("big")
    net = g.build(g.op("Sin", g.input("x", "float32", (300, 300))))
    prog = compile_graph(grad_operation(net))
    assert [n.op for n in prog.graph.nodes] == ["Cos"]
    x = np.linspace(-3, 3, 90000, dtype=np.float32).reshape(300, 300)
    np.testing.assert_allclose(prog(x), np.cos(x), rtol=1e-6)
    small = compile_graph(grad_operation(grad_operation(sin_like_small())))
    np.testing.assert_allclose(small(np.array([0.5])), [-np.sin(0.5)])


def sin_like_small():  # type: ignore[no-untyped-def]
    g = GraphBuilder("small")
    return g.build(g.op("Sin", g.input("x", "float64", (1,))))


def _step_of(prog, op: str) -> tuple:
    """The (forward, input slots, output slots, freed slots, out= slot) of the program's only step of ``op``."""
    (step,) = [s for n, s in zip(prog._plan_nodes, prog._steps) if n.op == op]
    return step


def test_a_step_writes_into_a_buffer_that_died_at_an_earlier_step() -> None:
    # a = Exp(x) dies at a ReduceSum (no out=); Cos(x), whose input never dies, then writes into a's buffer; likewise
    # MatMul(x, w) into the buffer of Tanh(x), dead at the second sum. The results are the closed forms, on every run.
    g = GraphBuilder("pool")
    x, w = g.input("x", "float64", (3, 3)), g.input("w", "float64", (3, 3))
    s = g.op("ReduceSum", g.op("Exp", x), axis=(), keep_dims=False)
    c = g.op("Cos", x)
    s2 = g.op("ReduceSum", g.op("Tanh", x), axis=(), keep_dims=False)
    prog = compile_graph(g.build((s, s2, g.op("Sin", g.op("Mul", c, g.op("MatMul", x, w))))))
    assert _step_of(prog, "Cos")[4] == _step_of(prog, "Exp")[2][0]
    assert _step_of(prog, "MatMul")[4] == _step_of(prog, "Tanh")[2][0]
    xx, ww = RNG.standard_normal((3, 3)), RNG.standard_normal((3, 3))
    product = [[np.cos(xx[i, j]) * sum(xx[i, k] * ww[k, j] for k in range(3)) for j in range(3)] for i in range(3)]
    for _ in range(12):  # the step loop, then the straight-line plan
        total, total2, out = prog(xx, ww)
        np.testing.assert_allclose(total, sum(np.exp(v) for v in xx.ravel()), rtol=1e-12)
        np.testing.assert_allclose(total2, sum(np.tanh(v) for v in xx.ravel()), rtol=1e-12)
        np.testing.assert_allclose(out, np.sin(np.array(product)), rtol=1e-12)
    assert prog.peak_bytes == 4 * 72 + 2 * 8  # x, w, the buffers of Cos and of MatMul, the sums


@pytest.mark.parametrize(("transpose_a", "transpose_b"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_product_over_an_inner_dimension_of_one_is_the_outer_product(transpose_a: bool, transpose_b: bool) -> None:
    g = GraphBuilder("outer")
    u = g.input("u", "float32", (1, 5) if transpose_a else (5, 1))
    v = g.input("v", "float32", (4, 1) if transpose_b else (1, 4))
    prog = compile_graph(g.build(g.op("Exp", g.op("MatMul", u, v, transpose_a=transpose_a, transpose_b=transpose_b))))
    uu = RNG.standard_normal(u.shape).astype(np.float32)
    vv = RNG.standard_normal(v.shape).astype(np.float32)
    expected = [[np.exp(np.float64(a) * np.float64(b)) for b in vv.ravel()] for a in uu.ravel()]
    for _ in range(10):
        np.testing.assert_allclose(prog(uu, vv), expected, rtol=1e-6)


def test_negations_are_carried_as_signs_with_the_same_results() -> None:
    # (-x) * y, y / -x, a + -b, -a + b, a - -b, --x, -x + -x, x + -x and exp(-x), each the closed form; a Neg is left
    # only where an output or Exp reads a negation: -(x * y), -(y / x) and -x, none for the rest (-x + -x is the one
    # step x * -2, the sum pass's).
    g = GraphBuilder("signs")
    x, y = g.input("x", "float64", (4,)), g.input("y", "float64", (4,))
    nx, ny = g.op("Neg", x), g.op("Neg", y)
    prod = g.op("Mul", nx, y)
    outs = (prod, g.op("RealDiv", y, nx), g.op("Add", x, ny), g.op("Add", nx, y), g.op("Sub", x, ny), g.op("Neg", nx),
            g.op("Add", nx, nx), g.op("Add", x, nx), g.op("Exp", nx))
    prog = compile_graph(g.build(outs))
    assert sorted(n.inputs[0].name for n in prog.graph.nodes if n.op == "Neg") == sorted(
        n.outputs[0].name for n in prog.graph.nodes if n.op in ("Mul", "RealDiv") and n.inputs[1].type.shape
    ) + ["x"]
    assert [n.attrs["value"].item() for n in prog.graph.nodes if n.op == "Const"] == [-2.0]
    xx, yy = np.array([1.5, -2.0, 0.25, 3.0]), np.array([0.5, 4.0, -1.0, 2.0])
    expected = [[f(a, b) for a, b in zip(xx.tolist(), yy.tolist())] for f in (
        lambda a, b: -a * b, lambda a, b: b / -a, lambda a, b: a - b, lambda a, b: b - a, lambda a, b: a + b,
        lambda a, b: a, lambda a, b: -2 * a, lambda a, b: 0.0, lambda a, b: float(np.exp(-a)))]
    for _ in range(10):
        for got, want in zip(prog(xx, yy), expected):
            np.testing.assert_array_equal(got, want)


def test_the_fourth_derivative_of_sin_runs_without_negations() -> None:
    # d4/dx4 sin(x) = sin(x): reverse mode's -sin and -cos cancel in pairs.
    g = GraphBuilder("sin")
    x = g.input("x", "float64", (5,))
    net = g.build(g.op("ReduceSum", g.op("Sin", x), axis=(), keep_dims=False))
    for _ in range(4):
        net = grad_operation(net)
    prog = compile_graph(net)
    assert "Neg" not in [n.op for n in prog.graph.nodes]
    xx = np.linspace(-2, 2, 5)
    np.testing.assert_allclose(prog(xx), np.sin(xx), rtol=1e-12, atol=1e-15)


def test_a_negation_read_by_a_multi_output_op_is_computed_for_all_its_outputs() -> None:
    # TopK(-x): the k smallest of x, negated, with their positions.
    g = GraphBuilder("topk")
    x = g.input("x", "float64", (2, 5))
    values, indices = g.op("TopK", g.op("Neg", x), k=2)
    prog = compile_graph(g.build((g.op("Exp", values), indices)))
    xx = np.array([[3.0, -1.0, 2.0, 0.5, 4.0], [1.0, 1.5, -2.0, -3.0, 0.0]])
    for _ in range(10):
        got, idx = prog(xx)
        np.testing.assert_array_equal(idx, [[1, 3], [3, 2]])
        np.testing.assert_allclose(got, np.exp([[1.0, -0.5], [3.0, 2.0]]), rtol=1e-15)


def _unsummed(monkeypatch: pytest.MonkeyPatch, graph):  # type: ignore[no-untyped-def]
    """``graph`` compiled without the sum pass: the plan the pass is checked against."""
    with monkeypatch.context() as m:
        m.setattr(compiler, "_sums", lambda g: (g, False))
        return compile_graph(graph)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_sum_of_repeated_terms_takes_fewer_steps_with_the_same_results(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    # x + y + y + y - z - z - (-b) + y, with b broadcast over rows: (y * 2 - z) * 2 + (x + b) in 5 steps instead of 7;
    # -x - y, as short either way, is kept; each the closed form on every run (step loop, then straight line).
    g = GraphBuilder("sums")
    x, y, z = (g.input(k, dtype, (4, 3)) for k in "xyz")
    b = g.input("b", dtype, (3,))
    s = g.op("Add", g.op("Sub", g.op("Sub", g.op("Add", g.op("Add", g.op("Add", x, y), y), y), z), z), g.op("Neg", g.op("Neg", b)))
    net = g.build((g.op("Exp", g.op("Add", s, y)), g.op("Sub", g.op("Neg", x), y)))
    prog, plain = compile_graph(net), _unsummed(monkeypatch, net)
    assert len(prog._steps) == 8 and len(plain._steps) == 10
    xx, yy, zz = (RNG.standard_normal((4, 3)).astype(dtype) for _ in range(3))
    bb = RNG.standard_normal(3).astype(dtype)
    want = [np.exp(4 * yy.astype(np.float64) - 2 * zz + xx + bb), -xx.astype(np.float64) - yy]
    for _ in range(12):
        got = prog(xx, yy, zz, bb)
        for a, ref, w in zip(got, plain(xx, yy, zz, bb), want):
            assert a.dtype == dtype and a.shape == (4, 3)
            np.testing.assert_allclose(a, w, rtol=1e-5 if dtype == "float32" else 1e-14)
            np.testing.assert_allclose(a, ref, rtol=1e-5 if dtype == "float32" else 1e-14)


def test_a_sum_whose_terms_cancel_or_whose_shape_would_shrink_is_left_as_it_was() -> None:
    # x + Y - Y broadcasts x over Y's rows and gives NaN where Y is infinite: dropping Y would change both.
    g = GraphBuilder("cancel")
    x, y = g.input("x", "float64", (3,)), g.input("y", "float64", (2, 3))
    prog = compile_graph(g.build(g.op("Sub", g.op("Add", x, y), y)))
    assert [n.op for n in prog.graph.nodes] == ["Add", "Sub"]
    yy = np.array([[1.0, np.inf, 2.0], [0.5, 0.25, -np.inf]])
    with np.errstate(invalid="ignore"):
        got = prog(np.array([1.0, 2.0, 3.0]), yy)
    np.testing.assert_array_equal(got, [[1.0, np.nan, 3.0], [1.0, 2.0, np.nan]])


def test_a_sum_read_twice_is_computed_once_and_its_buffer_stays_live() -> None:
    # s = x + x + x + y is read by two sums and a product: s is computed once as x * 3 + y, the sums as y * 3 + s and
    # x * -3 + s, and no step writes into s's buffer while another still reads it.
    g = GraphBuilder("shared")
    x, y = g.input("x", "float64", (5,)), g.input("y", "float64", (5,))

    def thrice(a, op, b):  # type: ignore[no-untyped-def]
        return g.op(op, g.op(op, g.op(op, a, b), b), b)

    s = g.op("Add", thrice(x, "Add", x), y)
    prog = compile_graph(g.build((thrice(s, "Add", y), thrice(s, "Sub", x), g.op("Mul", s, s))))
    assert [n.op for n in prog.graph.nodes if n.op != "Const"] == ["Mul", "Add", "Mul", "Add", "Mul", "Add", "Mul"]
    xx, yy = RNG.standard_normal(5), RNG.standard_normal(5)
    for _ in range(12):
        a, b, c = prog(xx, yy)
        np.testing.assert_allclose(a, 4 * xx + 4 * yy, rtol=1e-14)
        np.testing.assert_allclose(b, xx + yy, rtol=1e-14)
        np.testing.assert_allclose(c, (4 * xx + yy) ** 2, rtol=1e-14)


def test_a_long_chain_of_sums_is_flattened_in_bounded_pieces() -> None:
    # 300 terms, each added twice: the sums are regrouped 64 terms at a time, and the result is twice their total.
    g = GraphBuilder("long")
    xs = [g.input(f"x{i}", "float64", (2,)) for i in range(300)]
    acc = xs[0]
    for i, v in enumerate(xs):
        acc = g.op("Add", g.op("Add", acc, v), v) if i else g.op("Add", acc, v)
    prog = compile_graph(g.build(acc))
    assert len(prog._steps) < 599
    vals = [RNG.standard_normal(2) for _ in xs]
    np.testing.assert_allclose(prog(*vals), 2 * np.sum(vals, axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_higher_derivatives_with_regrouped_sums_match_pytorch_and_the_plain_plan(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    g = GraphBuilder("f")
    x = g.input("x", dtype, (7,))
    net = g.build(g.op("ReduceSum", g.op("Sin", g.op("Tanh", x)), axis=(), keep_dims=False))
    xx = np.linspace(-2, 2, 7).astype(dtype)
    tx = torch.tensor(xx.astype(np.float64), requires_grad=True)
    y = torch.sin(torch.tanh(tx))
    for order in range(1, 6):
        net = grad_operation(net)
        prog, plain = compile_graph(net), _unsummed(monkeypatch, net)
        (y,) = torch.autograd.grad(y.sum(), tx, create_graph=True)
        tol = 2e-5 if dtype == "float32" else 1e-13
        np.testing.assert_allclose(prog(xx), y.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(prog(xx), plain(xx), rtol=tol, atol=tol)
        assert len(prog._steps) <= len(plain._steps)
        if order == 4:  # the sums of the 4th derivative, regrouped and factored over three rounds (68 steps with signs alone)
            assert (len(plain._steps), len(prog._steps)) == (66, 46)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_products_of_a_common_factor_in_a_sum_are_one_product(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    # x*y + z*y - (w*y + w*y) + y*v is (x + z - 2w + v) * y: one Mul of the shared y instead of four; p = x*u, also an
    # output, and q = z*u stay as they are, as p is read outside the sum.
    g = GraphBuilder("factor")
    x, y, z, w, v, u = (g.input(k, dtype, (3, 4)) for k in "xyzwvu")
    wy = g.op("Mul", w, y)
    s = g.op("Add", g.op("Sub", g.op("Add", g.op("Mul", x, y), g.op("Mul", z, y)), g.op("Add", wy, wy)), g.op("Mul", y, v))
    p = g.op("Mul", x, u)
    net = g.build((s, g.op("Add", g.op("Add", p, g.op("Mul", z, u)), x), p))
    prog, plain = compile_graph(net), _unsummed(monkeypatch, net)
    products = [n for n in prog.graph.nodes if n.op == "Mul" and n.inputs[1].type.shape]
    assert len(products) == 3 and sum(y.name in (n.inputs[0].name, n.inputs[1].name) for n in products) == 1
    xx, yy, zz, ww, vv, uu = (RNG.standard_normal((3, 4)).astype(dtype) for _ in range(6))
    want = [(xx.astype(np.float64) + zz - 2 * ww + vv) * yy, xx.astype(np.float64) * uu + zz * uu + xx, xx.astype(np.float64) * uu]
    tol = 1e-5 if dtype == "float32" else 1e-14
    for _ in range(12):
        for got, ref, expected in zip(prog(xx, yy, zz, ww, vv, uu), plain(xx, yy, zz, ww, vv, uu), want):
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def test_float16_products_are_not_factored_where_the_sum_of_factors_overflows() -> None:
    # a*y + b*y + c*y with a = b = c = 30000 and y = 1e-3: each product is 30, the sum 90; (a + b + c) * y would be
    # 90000 * y, whose first sum is inf in float16 (largest 65504), so float16 products stay as they are.
    g = GraphBuilder("f16")
    a, b, c, y = (g.input(k, "float16", (4,)) for k in "abcy")
    net = g.build(g.op("Add", g.op("Add", g.op("Mul", a, y), g.op("Mul", b, y)), g.op("Mul", c, y)))
    prog = compile_graph(net)
    big, small = np.full(4, 30000, np.float16), np.full(4, 1e-3, np.float16)
    want = big * small + big * small + big * small  # NumPy's float16, step by step as the graph says
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(prog(big, big, big, small), want)


def test_products_by_one_matrix_in_a_sum_are_one_product() -> None:
    # a @ W + b @ W - c @ W is (a + b - c) @ W, one MatMul; d @ W with W transposed is a different product and stays.
    g = GraphBuilder("mm")
    a, b, c, d = (g.input(k, "float64", (5, 3)) for k in "abcd")
    w = g.param("w", np.arange(9.0).reshape(3, 3) / 7)
    s = g.op("Sub", g.op("Add", g.op("MatMul", a, w), g.op("MatMul", b, w)), g.op("MatMul", c, w))
    prog = compile_graph(g.build(g.op("Add", s, g.op("MatMul", d, w, transpose_b=True))))
    assert [n.op for n in prog.graph.nodes].count("MatMul") == 2
    aa, bb, cc, dd = (RNG.standard_normal((5, 3)) for _ in range(4))
    ww = np.arange(9.0).reshape(3, 3) / 7
    for _ in range(12):
        np.testing.assert_allclose(prog(aa, bb, cc, dd), aa @ ww + bb @ ww - cc @ ww + dd @ ww.T, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_an_outer_product_is_right_in_a_reused_buffer_of_either_order(dtype: str) -> None:
    # exp(x.T) is a fresh array in Fortran order; it dies at its sum, and the float64 outer product u @ v then writes into
    # it (np.dot takes only a C-ordered buffer, so the product is a broadcast multiply there); int32 never goes to BLAS.
    g = GraphBuilder("outer_into")
    x = g.input("x", "float64", (3, 5))
    u, v = g.input("u", dtype, (5, 1)), g.input("v", dtype, (1, 3))
    e = g.op("Exp", g.op("Transpose", x, perm=(1, 0)))
    total = g.op("ReduceSum", e, axis=(), keep_dims=False)
    prod = g.op("MatMul", u, v) if dtype != "float64" else g.op("Exp", g.op("MatMul", u, v))
    prog = compile_graph(g.build((total, prod)))
    xx = RNG.standard_normal((3, 5))
    uu, vv = (RNG.integers(-5, 5, s).astype(dtype) for s in ((5, 1), (1, 3)))
    want = [[a * b for b in vv.ravel().tolist()] for a in uu.ravel().tolist()]
    for _ in range(12):
        t, p = prog(xx, uu, vv)
        np.testing.assert_allclose(t, np.exp(xx).sum(), rtol=1e-12)
        np.testing.assert_array_equal(p, np.exp(np.array(want)) if dtype == "float64" else want)


@pytest.mark.parametrize("seed", range(6))
def test_random_sums_and_products_match_numpy_and_the_plain_plan(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    # Random graphs of Add, Sub, Neg and Mul over four inputs (reused, shared and repeated terms, products of a shared
    # factor, values read by several nodes and outputs): the regrouped plan gives what NumPy gives for the same formulas.
    rng = np.random.default_rng(seed)
    g = GraphBuilder("random")
    ins = [g.input(f"x{i}", "float64", (3,)) for i in range(4)]
    data = [rng.uniform(0.5, 1.5, 3) for _ in ins]
    values, arrays = list(ins), list(data)
    for _ in range(120):
        op = rng.choice(["Add", "Add", "Sub", "Sub", "Neg", "Mul"])
        i, j = (len(values) - 1 - int(k) for k in rng.integers(0, min(len(values), 8), 2))
        if op == "Mul":  # a product of an input and a recent value keeps magnitudes bounded
            i = int(rng.integers(0, len(ins)))
        a, b = arrays[i], arrays[j]
        values.append(g.op(op, values[i]) if op == "Neg" else g.op(op, values[i], values[j]))
        arrays.append({"Add": lambda: a + b, "Sub": lambda: a - b, "Neg": lambda: -a, "Mul": lambda: a * b}[op]())
    picks = [-1, -2, -5, len(ins) + 40]
    net = g.build(tuple(values[k] for k in picks))
    prog, plain = compile_graph(net), _unsummed(monkeypatch, net)
    assert len(prog._steps) <= len(plain._steps)
    scale = max(float(np.max(np.abs(arrays[k]))) for k in picks)
    for _ in range(12):
        for got, ref, k in zip(prog(*data), plain(*data), picks):
            np.testing.assert_allclose(got, arrays[k], rtol=1e-9, atol=1e-12 * scale)
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_doublings_and_negations_are_carried_through_products_to_a_small_output(dtype: str) -> None:
    # -((x*x + x*x) @ w) - (x*x + x*x) @ v: the doubling and the negation pass through the products, the two products
    # of the one doubled square are one product by w + v, and only the 64x1 result is scaled (by -2), as a second
    # derivative's are; with signs alone, x*x + x*x and the negation would be computed.
    g = GraphBuilder("scaled")
    x = g.input("x", dtype, (64, 8))
    w, v = (g.param(k, np.linspace(-1, 1, 8, dtype=dtype).reshape(8, 1) * s) for k, s in (("w", 1), ("v", 0.5)))
    sq = g.op("Mul", x, x)
    twice = g.op("Add", sq, sq)
    prog = compile_graph(g.build(g.op("Sub", g.op("Neg", g.op("MatMul", twice, w)), g.op("MatMul", twice, v))))
    assert [n.op for n in prog.graph.nodes if n.op != "Const"] == ["Mul", "Add", "MatMul", "Mul"]
    assert prog.graph.nodes[-1].outputs[0].type.shape == (64, 1)
    xx = RNG.standard_normal((64, 8)).astype(dtype)
    ww = np.linspace(-1, 1, 8).reshape(8, 1)
    want = -2 * (xx.astype(np.float64) ** 2) @ ww - 2 * (xx.astype(np.float64) ** 2) @ (ww * 0.5)
    for _ in range(12):
        np.testing.assert_allclose(prog(xx), want, rtol=1e-5 if dtype == "float32" else 1e-13, atol=1e-5 if dtype == "float32" else 1e-13)


def test_a_product_that_is_also_an_output_stays_when_a_sum_reads_it_twice() -> None:
    # p = x*y is an output and read twice by s = p + q + p + q: factoring s as (2x + 2z) * y must not drop p's node.
    g = GraphBuilder("out_product")
    x, y, z = (g.input(k, "float64", (3,)) for k in "xyz")
    p, q = g.op("Mul", x, y), g.op("Mul", z, y)
    prog = compile_graph(g.build((g.op("Add", g.op("Add", g.op("Add", p, q), p), q), p)))
    xx, yy, zz = (RNG.standard_normal(3) for _ in range(3))
    for _ in range(12):
        s, pp = prog(xx, yy, zz)
        np.testing.assert_allclose(s, xx * yy + zz * yy + xx * yy + zz * yy, rtol=1e-14)
        np.testing.assert_allclose(pp, xx * yy, rtol=1e-15)


def test_scalings_read_twice_by_a_sum_keep_the_sums_they_scale() -> None:
    # (u + w) * 3 and z * 3, each read twice by one sum: the sum u + w that the first scales is still computed.
    g = GraphBuilder("scaled_twice")
    u, w, z = (g.input(k, "float64", (3,)) for k in "uwz")
    three = g.const(3.0, "float64")
    p1, p2 = g.op("Mul", g.op("Add", u, w), three), g.op("Mul", z, three)
    prog = compile_graph(g.build(g.op("Add", g.op("Add", g.op("Add", p1, p2), p1), p2)))
    uu, ww, zz = (RNG.standard_normal(3) for _ in range(3))
    for _ in range(12):
        np.testing.assert_allclose(prog(uu, ww, zz), (uu + ww) * 3 + zz * 3 + (uu + ww) * 3 + zz * 3, rtol=1e-14)


def test_a_sum_whose_terms_partly_cancel_keeps_the_nan_of_an_infinite_term() -> None:
    # ((x + x + x) + y - x) + y: x's coefficient 3 - 1 = 2 hides inf - inf, so the sum is left as it was.
    g = GraphBuilder("partly")
    x, y = g.input("x", "float64", (3,)), g.input("y", "float64", (3,))
    t = g.op("Add", g.op("Add", g.op("Add", x, x), x), y)
    prog = compile_graph(g.build(g.op("Add", g.op("Sub", t, x), y)))
    xx, yy = np.array([np.inf, 1.5, -np.inf]), np.array([1.0, 2.0, 3.0])
    with np.errstate(invalid="ignore"):
        want = xx + xx + xx + yy - xx + yy
        got = prog(xx, yy)
    np.testing.assert_array_equal(got, want)


def test_a_sum_is_not_scaled_past_its_dtype() -> None:
    # float16 (max 65504): (x * 300) * 300 + y must not scale x by 90000 (inf), and 4a + b * 0.5 must not compute
    # (8a + b) * 0.5 (8a overflows where 4a does not); both are NumPy's values for the same formulas.
    g = GraphBuilder("half")
    x, y = g.input("x", "float16", (2,)), g.input("y", "float16", (2,))
    c, h = g.const(np.float16(300), "float16"), g.const(np.float16(0.5), "float16")
    first = g.op("Add", g.op("Mul", g.op("Mul", x, c), c), y)
    second = g.op("Add", g.op("Add", g.op("Add", g.op("Add", x, x), x), x), g.op("Mul", y, h))
    prog = compile_graph(g.build((first, second)))
    xx, yy = np.array([1e-3, 9000.0], np.float16), np.array([1.0, 2.0], np.float16)
    with np.errstate(over="ignore"):
        a, b = prog(xx, yy)
        np.testing.assert_array_equal(a, xx * np.float16(300) * np.float16(300) + yy)  # [91, inf]
    np.testing.assert_array_equal(b, xx + xx + xx + xx + yy * np.float16(0.5))


def test_a_doubled_divisor_is_divided_by_not_carried_as_a_halving() -> None:
    # (a / (b + b)) @ w in float16 (max 65504): carrying the doubling as (a / b) @ w * 0.5 overflowed a / b = 120000.
    g = GraphBuilder("halved")
    a, b = g.input("a", "float16", (4, 2)), g.input("b", "float16", (4, 2))
    ww = np.full((2, 1), 0.25, np.float16)
    prog = compile_graph(g.build(g.op("MatMul", g.op("RealDiv", a, g.op("Add", b, b)), g.param("w", ww))))
    aa, bb = np.full((4, 2), 60000, np.float16), np.full((4, 2), 0.5, np.float16)
    np.testing.assert_allclose(prog(aa, bb), (aa / (bb + bb)) @ ww, rtol=1e-3)


def test_a_doubled_difference_of_negations_keeps_the_sign_of_its_zero() -> None:
    # -x - -x is +0 (not -(x - x) = -0), so y / ((-x - -x) + (-x - -x)) is +inf for y > 0, as NumPy gives.
    g = GraphBuilder("zero")
    x, y = g.input("x", "float64", (3,)), g.input("y", "float64", (3,))
    nx = g.op("Neg", x)
    z = g.op("Sub", nx, nx)
    prog = compile_graph(g.build(g.op("RealDiv", y, g.op("Add", z, z))))
    xx, yy = np.array([1.5, -2.0, 0.0]), np.array([1.0, -3.0, 2.0])
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(prog(xx, yy), yy / ((-xx - -xx) + (-xx - -xx)))


@pytest.mark.parametrize(("transpose_a", "transpose_b"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_bound_product_gives_the_sums_of_products_of_its_transposed_operands_on_every_run(transpose_a: bool, transpose_b: bool) -> None:
    # MatMul's forward is bound to its flags once (OpDef.bind), in the step loop and in the straight-line plan alike.
    g = GraphBuilder("bound")
    a = g.input("a", "float64", (3, 2) if transpose_a else (2, 3))
    b = g.input("b", "float64", (4, 3) if transpose_b else (3, 4))
    graph = g.build(g.op("Neg", g.op("MatMul", a, b, transpose_a=transpose_a, transpose_b=transpose_b)))
    aa, bb = RNG.standard_normal(a.shape), RNG.standard_normal(b.shape)
    ta, tb = (aa.T if transpose_a else aa), (bb.T if transpose_b else bb)
    product = [[-sum(ta[i, k] * tb[k, j] for k in range(3)) for j in range(4)] for i in range(2)]
    for prog in (compile_graph(graph), pickle.loads(pickle.dumps(compile_graph(graph)))):  # as a plan crosses processes
        for _ in range(12):  # the step loop, then the straight-line plan
            np.testing.assert_allclose(prog(aa, bb), product, rtol=1e-12)


class _Tagged(np.ndarray):
    """An ndarray subclass, as a caller's array type may be."""


def test_arrays_of_a_subclass_are_computed_as_plain_arrays_and_give_plain_arrays() -> None:
    # Results of rank >= 1 are returned as the steps make them, so inputs and parameters of a subclass are taken as
    # plain ndarrays first: every result is exactly an ndarray, on every run, as before the plan stopped converting.
    g = GraphBuilder("plain")
    x = g.input("x", "float64", (2, 3))
    w = g.param("w", np.ones((2, 3)))
    prog = compile_graph(g.build((g.op("Mul", x, w), g.op("Exp", x))))
    xx, ww = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    for _ in range(12):  # the step loop, then the straight-line plan
        product, exp = prog(xx.view(_Tagged), params={"w": ww.view(_Tagged)})
        assert type(product) is np.ndarray and type(exp) is np.ndarray
        np.testing.assert_allclose(product, xx * ww, rtol=1e-15)
        np.testing.assert_allclose(exp, np.exp(xx), rtol=1e-15)


def test_an_equal_dtype_that_is_another_object_is_taken_and_a_byte_swapped_one_refused() -> None:
    # The plan compares dtypes by identity first; an equal one (here with metadata) passes the full check instead.
    g = GraphBuilder("dtypes")
    x = g.input("x", "float32", (3,))
    prog = compile_graph(g.build(g.op("Exp", x)))
    xx = RNG.standard_normal(3).astype(np.float32)
    tagged = np.dtype(np.float32, metadata={"unit": "m"})
    assert tagged == np.float32 and tagged is not np.dtype(np.float32)
    for _ in range(12):  # the step loop, then the straight-line plan
        np.testing.assert_array_equal(prog(xx.astype(tagged)), np.exp(xx))
        with pytest.raises(InputError, match=r"input 'x' expects float32\[3\], got float32\[3\] in another byte order \(>f4\)"):
            prog(xx.astype(">f4"))
