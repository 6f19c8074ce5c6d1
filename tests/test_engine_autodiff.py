"""engine/autodiff.py: GradOperation's return structure for every flag, zeros for unused inputs and weights,
integer inputs, sensitivities, gradients by name, float16/32, deep graphs without recursion, and errors
naming the weight, the function or the node without a gradient."""
from __future__ import annotations

import numpy as np
import pytest
from enginekit import RNG, A, B, C, W, run, two_input_net

from gradserve.engine import OPS, GraphBuilder, GraphError, NotDifferentiableError, grad, grad_operation
from gradserve.engine.optable import defop


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
