"""Engine core: GradOperation structure, zeros and integer inputs, deep graphs, listings, the compiler's
passes and memory, structural hashing, and errors raised before any array exists."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from gradserve.engine import (
    OPS,
    GraphBuilder,
    GraphError,
    InputError,
    NotDifferentiableError,
    ShapeError,
    compile_graph,
    grad,
    grad_operation,
)
from gradserve.engine.optable import defop

RNG = np.random.default_rng(7)
A = RNG.standard_normal((2, 3))
B = RNG.standard_normal((2, 3))
W = RNG.standard_normal((3,))


def two_input_net(tuple_out: bool = False):  # type: ignore[no-untyped-def]
    """f(a, b) = a * b * w (and a second output sin(a) when ``tuple_out``), with an unused input c."""
    g = GraphBuilder("f")
    a, b = g.input("a", "float64", (2, 3)), g.input("b", "float64", (2, 3))
    g.input("c", "float64", (4,))
    w = g.param("w", W)
    g.param("unused", np.ones(2))
    out = a * b * w
    return g.build((out, g.op("Sin", a)) if tuple_out else out)


def run(graph, *args, **kw):  # type: ignore[no-untyped-def]
    return compile_graph(graph)(*args, **kw)


C = np.zeros(4)


def test_no_flags_gives_bare_gradient_of_first_input() -> None:
    out = run(grad_operation(two_input_net()), A, B, C)
    np.testing.assert_allclose(out, B * W)


def test_get_all_gives_tuple_over_inputs_with_zeros_for_unused() -> None:
    da, db, dc = run(grad_operation(two_input_net(), get_all=True), A, B, C)
    np.testing.assert_allclose(da, B * W)
    np.testing.assert_allclose(db, A * W)
    assert dc.shape == (4,) and dc.dtype == np.float64 and not dc.any()


def test_get_by_list_gives_tuple_over_weights_and_zeros_for_unused_weight() -> None:
    dw, du = run(grad_operation(two_input_net(), get_by_list=True, weights=["w", "unused"]), A, B, C)
    np.testing.assert_allclose(dw, (A * B).sum(axis=0))
    np.testing.assert_array_equal(du, np.zeros(2))


def test_single_weight_name_gives_bare_tensor() -> None:
    dw = run(grad_operation(two_input_net(), get_by_list=True, weights="w"), A, B, C)
    assert isinstance(dw, np.ndarray)
    np.testing.assert_allclose(dw, (A * B).sum(axis=0))


def test_both_flags_give_inputs_then_weights() -> None:
    (da, db, _), (dw,) = run(grad_operation(two_input_net(), get_all=True, get_by_list=True, weights=["w"]), A, B, C)
    np.testing.assert_allclose(da, B * W)
    np.testing.assert_allclose(dw, (A * B).sum(axis=0))


def test_tuple_output_without_sens_sums_the_outputs() -> None:
    out = run(grad_operation(two_input_net(tuple_out=True)), A, B, C)
    np.testing.assert_allclose(out, B * W + np.cos(A))


def test_tuple_output_with_sens_takes_one_sensitivity_per_output() -> None:
    s1, s2 = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    g = grad_operation(two_input_net(tuple_out=True), sens_param=True)
    assert [v.name for v in g.inputs] == ["a", "b", "c", "sens_0", "sens_1"]
    np.testing.assert_allclose(run(g, A, B, C, s1, s2), s1 * B * W + s2 * np.cos(A))


def test_gradient_of_integer_input_is_cast_to_its_dtype() -> None:
    g = GraphBuilder("int_in")
    i = g.input("i", "int32", (3,))
    y = g.input("y", "float32", (3,))
    net = g.build(g.op("Cast", i, dtype="float32") * y)
    di, dy = run(grad_operation(net, get_all=True), np.array([1, 2, 3], np.int32), np.array([2.7, -1.5, 0.2], np.float32))
    assert di.dtype == np.int32
    np.testing.assert_array_equal(di, [2, -1, 0])
    np.testing.assert_allclose(dy, [1, 2, 3])


def test_grad_by_names_mixes_inputs_and_parameters() -> None:
    db, dw = run(grad(two_input_net(), ["b", "w"]), A, B, C)
    np.testing.assert_allclose(db, A * W)
    np.testing.assert_allclose(dw, (A * B).sum(axis=0))


def test_float32_and_float16_graphs_compute_in_their_own_dtype() -> None:
    for dt in ("float16", "float32"):
        g = GraphBuilder("s")
        net = g.build(g.op("Sin", g.input("x", dt, (2,))))
        out = run(grad_operation(grad_operation(net)), np.array([0.5, 1.0], dt))
        assert out.dtype == np.dtype(dt)
        np.testing.assert_allclose(out, -np.sin([0.5, 1.0]), rtol=2e-3 if dt == "float16" else 1e-6)


def test_ten_thousand_node_chain_differentiates_without_recursion() -> None:
    """y = (...((x * c) + 1) * c + 1 ...) over 5,000 rounds: dy/dx = c ** 5000."""
    g = GraphBuilder("chain")
    x = g.input("x", "float64", (2,))
    v = x
    for _ in range(5000):
        v = v * 1.0001 + 1.0
    net = g.build(v)
    assert len(net.nodes) >= 10000
    out = run(grad_operation(net), np.array([0.5, -2.0]))
    np.testing.assert_allclose(out, [1.0001 ** 5000] * 2, rtol=1e-9)


def test_gradient_program_prints_as_a_listing() -> None:
    g = GraphBuilder("SinNet")
    net = g.build(g.op("Sin", g.input("x", "float64", (1,))))
    assert str(grad_operation(net)) == "\n".join([
        "graph grad_SinNet(x: f64[1])",
        "  %0: f64[1] = Sin(x)",
        "  %1: f64[1] = OnesLike(%0)",
        "  %2: f64[1] = Cos(x)",
        "  %3: f64[1] = Mul(%1, %2)",
        "  return %3",
    ])


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


def test_structural_hash_ignores_names_and_parameter_values_but_not_structure() -> None:
    def net(in_name: str, w: np.ndarray, transpose: bool):  # type: ignore[no-untyped-def]
        g = GraphBuilder("h")
        x = g.input(in_name, "float32", (3, 3))
        return g.build(g.op("MatMul", x, g.param("w", w), transpose_b=transpose))

    base = net("x", np.ones((3, 3), np.float32), False).structural_hash()
    assert net("x", np.zeros((3, 3), np.float32), False).structural_hash() == base
    assert net("x", np.ones((3, 3), np.float32), True).structural_hash() != base
    assert net("other", np.ones((3, 3), np.float32), False).structural_hash() != base


def test_shape_error_names_op_node_and_shapes() -> None:
    g = GraphBuilder("bad")
    a, b = g.input("a", "float32", (2, 3)), g.input("b", "float32", (4, 5))
    with pytest.raises(ShapeError, match=r"MatMul 'matmul_3': inner dimensions 3 and 4 differ for shapes \(2, 3\) and \(4, 5\)"):
        g.add_node("MatMul", [a, b], name="matmul_3")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda g, x: g.op("MatMull", x, x), r"unknown op 'MatMull'; did you mean MatMul"),
        (lambda g, x: g.op("Sin", x, x), r"Sin 'sin_0': takes 1 inputs \(x\), got 2"),
        (lambda g, x: g.op("ReduceSum", x, axes=(0,)), r"unknown attribute\(s\) \['axes'\]"),
        (lambda g, x: g.op("ReduceSum", x, keep_dims=1), r"attribute 'keep_dims' must be bool"),
        (lambda g, x: g.op("Reshape", x), r"missing required attribute 'shape'"),
        (lambda g, x: g.op("Add", x, GraphBuilder("other").input("y", "float32", (2,))), r"input 'y' is not defined in graph 'g'"),
        (lambda g, x: g.input("x", "float32", (1,)), r"value name 'x' is defined twice"),
        (lambda g, x: g.op("Sin", g.op("Cast", x, dtype="int32")), r"x must be a float dtype, got int32"),
    ],
)
def test_bad_graphs_fail_at_build_time(build, message: str) -> None:  # type: ignore[no-untyped-def]
    g = GraphBuilder("g")
    x = g.input("x", "float32", (2,))
    with pytest.raises(GraphError, match=message):
        build(g, x)


def test_run_time_inputs_are_checked() -> None:
    prog = compile_graph(grad_operation(two_input_net()))
    with pytest.raises(InputError, match=r"takes 3 inputs \['a', 'b', 'c'\], got 2"):
        prog(A, B)
    with pytest.raises(InputError, match=r"input 'b' expects float64\[2, 3\], got float32\[2, 3\]"):
        prog(A, B.astype(np.float32), C)
    with pytest.raises(InputError, match=r"no parameter 'v'"):
        prog(A, B, C, params={"v": W})


def test_grad_operation_errors_name_the_weight_and_function() -> None:
    with pytest.raises(GraphError, match=r"weight 'nope' is not a parameter"):
        grad_operation(two_input_net(), get_by_list=True, weights=["nope"])
    g = GraphBuilder("outer")
    x = g.input("x", "float64", (1,))
    with pytest.raises(GraphError, match=r"function 'missing'"):
        g.op("GradOperation", x, fn="missing")


@pytest.fixture
def opaque_op():  # type: ignore[no-untyped-def]
    defop("TestOpaque", ("x",), lambda t: t[0], lambda x: x, None)
    yield "TestOpaque"
    del OPS["TestOpaque"]


def test_op_without_vjp_raises_not_differentiable_naming_the_node(opaque_op: str) -> None:
    g = GraphBuilder("n")
    x = g.input("x", "float64", (2,))
    net = g.build(g.op("Sin", g.add_node(opaque_op, [x], name="blackbox")[0]))
    with pytest.raises(NotDifferentiableError, match=r"TestOpaque 'blackbox' has no gradient"):
        grad_operation(net)
    stopped = GraphBuilder("n")
    x = stopped.input("x", "float64", (2,))
    net = stopped.build(stopped.add_node(opaque_op, [x], stop_gradient=True)[0] + x)
    np.testing.assert_array_equal(run(grad_operation(net), np.ones(2)), np.ones(2))


def test_listing_shows_each_library_function_once() -> None:
    lib: dict = {}
    for name in ("sin", "cos"):
        g = GraphBuilder(name, library=lib)
        lib[name] = g.build(g.op(name.capitalize(), g.input("x", "float64", (1,))))
    g = GraphBuilder("both", library=lib)
    x = g.input("x", "float64", (1,))
    (ds,) = g.op("GradOperation", x, fn="sin")
    (dc,) = g.op("GradOperation", x, fn="cos")
    text = str(g.build(ds + dc))
    assert text.count("where sin =") == 1 and text.count("where cos =") == 1
    assert "GradOperation[fn='cos'" in text


def test_structural_hash_tells_apart_constants_that_print_alike() -> None:
    def scaled(c: float) -> str:
        g = GraphBuilder("scale")
        return g.build(g.input("x", "float64", (2,)) * c).structural_hash()

    base = scaled(0.1)
    assert scaled(0.1000000001) != base
    with np.printoptions(precision=2):
        assert scaled(0.1) == base


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
