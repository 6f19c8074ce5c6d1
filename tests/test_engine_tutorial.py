"""The GradOperation tutorial's examples built directly with the engine API, against its printed numbers,
and higher-order derivatives beyond it against closed forms and finite differences."""
from __future__ import annotations

import numpy as np
import pytest

from gradserve.engine import GraphBuilder, compile_graph, grad_operation

X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
Y = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)
SENS = np.array([[0.1, 0.6, 0.2], [0.8, 1.3, 1.1]], np.float32)


def tutorial_net():  # type: ignore[no-untyped-def]
    """out = MatMul(x * z, y) with the weight z = [1.0]."""
    b = GraphBuilder("Net")
    x, y = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    z = b.param("z", np.array([1.0], np.float32))
    return b.build(b.op("MatMul", x * z, y))


def two_matmuls(stop: str | None):  # type: ignore[no-untyped-def]
    """out1 + out2 with out2 = MatMul(x, y) stopped by the op, by the node mark, or not at all."""
    b = GraphBuilder("Net2")
    x, y = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    out1 = b.op("MatMul", x, y)
    out2 = b.add_node("MatMul", [x, y], stop_gradient=stop == "mark")[0]
    if stop == "op":
        out2 = b.op("StopGradient", out2)
    return b.build(out1 + out2)


def run(graph, *args):  # type: ignore[no-untyped-def]
    return compile_graph(graph)(*args)


def test_gradient_wrt_x_matches_tutorial() -> None:
    out = run(grad_operation(tutorial_net()), X, Y)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[4.51, 2.7, 3.6000001], [4.51, 2.7, 3.6000001]], rtol=1e-6)


def test_gradient_wrt_weight_matches_tutorial() -> None:
    (dz,) = run(grad_operation(tutorial_net(), get_by_list=True, weights=["z"]), X, Y)
    np.testing.assert_allclose(dz, [21.536001], rtol=1e-6)


def test_sens_param_matches_tutorial() -> None:
    out = run(grad_operation(tutorial_net(), sens_param=True), X, Y, SENS)
    np.testing.assert_allclose(out, [[2.211, 0.51, 1.49], [5.5880003, 2.68, 4.0699997]], rtol=1e-6)


@pytest.mark.parametrize("stop", ["op", "mark"])
def test_stop_gradient_removes_the_stopped_branch(stop: str) -> None:
    out = run(grad_operation(two_matmuls(stop)), X, Y)
    np.testing.assert_allclose(out, [[4.51, 2.7, 3.6000001]] * 2, rtol=1e-6)


def test_without_stop_gradient_both_branches_count() -> None:
    out = run(grad_operation(two_matmuls(None)), X, Y)
    np.testing.assert_allclose(out, [[9.02, 5.4, 7.2000003]] * 2, rtol=1e-6)


def sin_net(dtype: str = "float64"):  # type: ignore[no-untyped-def]
    b = GraphBuilder("SinNet")
    return b.build(b.op("Sin", b.input("x", dtype, (1,))))


def test_second_derivative_of_sin_matches_tutorial_in_float64() -> None:
    out = run(grad_operation(grad_operation(sin_net())), np.array([3.1415926]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [-5.35897932e-08], rtol=1e-8)


def test_third_derivative_of_sin_is_minus_cos() -> None:
    xs = np.array([0.3])
    third = grad_operation(grad_operation(grad_operation(sin_net())))
    np.testing.assert_allclose(run(third, xs), -np.cos(xs), rtol=1e-12)


def test_nested_grad_node_in_a_library_gives_the_same_orders() -> None:
    """The first derivative written as a GradOperation node over the library graph sin, then differentiated."""
    b = GraphBuilder("Grad", library={"sin": sin_net()})
    x = b.input("x", "float64", (1,))
    (d1,) = b.op("GradOperation", x, fn="sin")
    first_via_node = b.build(d1)
    xs = np.array([0.7])
    np.testing.assert_allclose(run(first_via_node, xs), np.cos(xs), rtol=1e-12)
    np.testing.assert_allclose(run(grad_operation(first_via_node), xs), -np.sin(xs), rtol=1e-12)
    np.testing.assert_allclose(run(grad_operation(grad_operation(first_via_node)), xs), -np.cos(xs), rtol=1e-12)


def test_mixed_second_derivative_d_dz_of_d_out_dx() -> None:
    """d/dz sum(d sum(out)/dx) = d/dz [z * sum(ones @ y.T)] = 2 * sum(y), derived by hand."""
    first = grad_operation(tutorial_net())
    (dz,) = run(grad_operation(first, get_by_list=True, weights=["z"]), X, Y)
    np.testing.assert_allclose(dz, [2 * Y.astype(np.float64).sum()], rtol=1e-5)


def test_hessian_of_tanh_mlp_loss_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((5, 3))
    w1 = rng.standard_normal((3, 4)) * 0.7
    w2 = rng.standard_normal((4, 2)) * 0.7
    b = GraphBuilder("mlp")
    x = b.input("x", "float64", (5, 3))
    h = b.op("Tanh", b.op("MatMul", x, b.param("w1", w1)))
    o = b.op("MatMul", h, b.param("w2", w2))
    loss = b.op("ReduceSum", o * o)
    net = b.build(loss)
    first = grad_operation(net, get_by_list=True, weights=["w1"])
    grad_prog = compile_graph(first)
    hvp = compile_graph(grad_operation(first, get_by_list=True, weights=["w1"], sens_param=True))
    eps = 1e-5
    for i in range(w1.size):
        e = np.zeros(w1.size)
        e[i] = 1.0
        e = e.reshape(w1.shape)
        (col,) = hvp(xs, e)
        (gp,) = grad_prog(xs, params={"w1": w1 + eps * e})
        (gm,) = grad_prog(xs, params={"w1": w1 - eps * e})
        np.testing.assert_allclose(col, (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-7)
