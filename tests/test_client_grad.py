"""GradOperation through the client: every flag combination, MindSpore's structure rules, sens, nesting, errors.

Oracles: hand-derived gradients of small formulas, and central finite differences of the traced forward pass."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor
from gradserve import dtype as mstype
from gradserve.client import trace_count

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32)
Y = np.array([[2.0, 1.0, -1.0], [0.5, -2.0, 3.0]], np.float32)
W = np.array([1.5, -0.5, 2.0], np.float32)
S = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]], np.float32)


class MulNet(nn.Cell):
    """out = x * y * w."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(W), name="w")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return x * y * self.w


class Wrap(nn.Cell):
    """Applies a gradient function inside construct (the nested, traced path), after the traced inputs
    passing ``consts`` (values a top-level Cell cannot take as inputs, such as tuples of sens)."""

    def __init__(self, grad_fn: Any, consts: tuple[Any, ...]) -> None:
        super().__init__()
        self.grad_fn = grad_fn
        self.consts = consts

    def construct(self, *args: Any) -> Any:
        return self.grad_fn(*args, *self.consts)


def call(mode: str, grad_fn: Any, *args: Any, consts: tuple[Any, ...] = ()) -> Any:
    """Call a gradient function at top level, or from inside a traced Cell."""
    return grad_fn(*args, *consts) if mode == "top" else Wrap(grad_fn, consts)(*args)


def assert_tree(got: Any, want: Any) -> None:
    """Same nesting of tuples, and every leaf close to the expected array."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"expected a tuple of {len(want)}, got {got!r}"
        for g, w in zip(got, want):
            assert_tree(g, w)
    else:
        assert isinstance(got, Tensor), f"expected a Tensor, got {got!r}"
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-6, atol=1e-6)


MODES = ["top", "nested"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("get_all,get_by_list,sens_param", list(itertools.product([False, True], repeat=3)))
def test_every_flag_combination(mode: str, get_all: bool, get_by_list: bool, sens_param: bool) -> None:
    net = MulNet()
    s = S if sens_param else np.ones_like(S)
    dx, dy, dw = s * Y * W, s * X * W, (s * X * Y).sum(axis=0)
    grad_fn = ops.GradOperation(get_all, get_by_list, sens_param)(net, ParameterTuple(net.trainable_params()))
    args = (Tensor(X), Tensor(Y)) + ((Tensor(S),) if sens_param else ())
    want: Any = dx
    if get_all and get_by_list:
        want = ((dx, dy), (dw,))
    elif get_all:
        want = (dx, dy)
    elif get_by_list:
        want = (dw,)
    assert_tree(call(mode, grad_fn, *args), want)


@pytest.mark.parametrize("mode", MODES)
def test_weights_structure_bare_parameter_list_and_none(mode: str) -> None:
    net = MulNet()
    dw = (X * Y).sum(axis=0)
    x, y = Tensor(X), Tensor(Y)
    assert_tree(call(mode, ops.GradOperation(get_by_list=True)(net, net.w), x, y), dw)
    assert_tree(call(mode, ops.GradOperation(get_by_list=True)(net, [net.w]), x, y), (dw,))
    assert_tree(call(mode, ops.GradOperation(get_all=True, get_by_list=True)(net, net.w), x, y), ((Y * W, X * W), dw))
    # no weights: every Parameter of the Cell (MindSpore's test_pynative_requires_grad_without_params)
    assert_tree(call(mode, ops.GradOperation(get_by_list=True)(net), x, y), (dw,))
    assert_tree(call(mode, ops.GradOperation(get_all=True, get_by_list=True)(net), x, y), ((Y * W, X * W), (dw,)))


def test_bad_weights_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="weights must be a Parameter"):
        ops.GradOperation(get_by_list=True)(MulNet(), [Tensor(W)])
    with pytest.raises(TypeError, match="get_all must be a bool"):
        ops.GradOperation(get_all=1)  # type: ignore[arg-type]


class ScalarsNet(nn.Cell):
    """Python scalars and None among the inputs: out = x * a + y * y (b is None)."""

    def construct(self, a: float, x: Tensor, b: None, y: Tensor) -> Tensor:
        assert b is None
        return x * a + y * y


@pytest.mark.parametrize("mode", MODES)
def test_python_scalars_and_none_are_skipped_so_positions_shift(mode: str) -> None:
    x, y = Tensor(X), Tensor(Y)
    got = call(mode, ops.GradOperation(get_all=True)(ScalarsNet()), 3.0, x, None, y)
    assert_tree(got, (np.full_like(X, 3.0), 2 * Y))
    assert call(mode, ops.GradOperation()(ScalarsNet()), 3.0, x, None, y) == ()


@pytest.mark.parametrize("mode", MODES)
def test_unused_input_gets_zeros_of_its_shape_and_dtype(mode: str) -> None:
    def f(x: Tensor, unused: Tensor) -> Tensor:
        return ops.sin(x)

    dx, du = call(mode, ops.GradOperation(get_all=True)(f), Tensor(X), Tensor(np.ones((4,), np.float64)))
    np.testing.assert_allclose(dx.asnumpy(), np.cos(X), rtol=1e-6)
    assert du.dtype == mstype.float64 and du.shape == (4,) and not du.asnumpy().any()


@pytest.mark.parametrize("mode", MODES)
def test_integer_inputs(mode: str) -> None:
    def f(x: Tensor, k: Tensor) -> Tensor:
        return x * k  # k is promoted to float32 by a Cast, whose gradient MindSpore casts back to int32

    x = np.array([1.0, 2.0, -3.0], np.float32)
    k = np.array([4, 5, 6], np.int32)
    dx, dk = call(mode, ops.GradOperation(get_all=True)(f), Tensor(x), Tensor(k))
    assert dx.dtype == mstype.float32 and dk.dtype == mstype.int32
    np.testing.assert_array_equal(dx.asnumpy(), k.astype(np.float32))
    np.testing.assert_array_equal(dk.asnumpy(), x.astype(np.int32))


class TwoOutputs(nn.Cell):
    """(x * y, sin(x))."""

    def construct(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x * y, ops.Sin()(x)


class NestedOutputs(nn.Cell):
    """((x * y, x), sin(x))."""

    def construct(self, x: Tensor, y: Tensor) -> Any:
        return (x * y, x), ops.sin(x)


@pytest.mark.parametrize("mode", MODES)
def test_tuple_outputs_sum_without_sens_and_take_tuple_sens(mode: str) -> None:
    x, y = Tensor(X), Tensor(Y)
    assert_tree(call(mode, ops.GradOperation()(TwoOutputs()), x, y), Y + np.cos(X))
    s2 = np.full_like(X, -2.0)
    got = call(mode, ops.GradOperation(sens_param=True)(TwoOutputs()), x, y, consts=((Tensor(S), Tensor(s2)),))
    assert_tree(got, S * Y + s2 * np.cos(X))
    sens = ((Tensor(S), Tensor(s2)), Tensor(S))
    got = call(mode, ops.GradOperation(get_all=True, sens_param=True)(NestedOutputs()), x, y, consts=(sens,))
    assert_tree(got, (S * Y + s2 + S * np.cos(X), S * X))


@pytest.mark.parametrize("mode", MODES)
def test_sens_errors_name_what_is_wrong(mode: str) -> None:
    x, y = Tensor(X), Tensor(Y)
    two = ops.GradOperation(sens_param=True)(TwoOutputs())
    with pytest.raises(TypeError, match=r"returns a tuple of 2 outputs, so sens must be a tuple of 2 Tensors.*got a single Tensor"):
        call(mode, two, x, y, Tensor(S))
    with pytest.raises(TypeError, match=r"tuple of 2 Tensors.*got a tuple of length 1"):
        call(mode, two, x, y, consts=((Tensor(S),),))
    one = ops.GradOperation(sens_param=True)(MulNet())
    with pytest.raises(ValueError, match=r"sens has shape \(3,\).*output it scales has shape \(2, 3\)"):
        call(mode, one, x, y, Tensor(W))
    with pytest.raises(ValueError, match=r"dtype Float64.*dtype Float32"):
        call(mode, one, x, y, Tensor(S.astype(np.float64)))
    with pytest.raises(TypeError, match=r"sens\[1\] must be a Tensor"):
        call(mode, two, x, y, consts=((Tensor(S), 1.0),))
    with pytest.raises(TypeError, match="pass the network's inputs followed by sens"):
        one()


@pytest.mark.parametrize("mode", MODES)
def test_wrong_number_of_inputs(mode: str) -> None:
    grad_fn = ops.GradOperation()(MulNet())
    with pytest.raises(TypeError, match=r"MulNet.construct takes 2 inputs \(x, y\), got 3"):
        call(mode, grad_fn, Tensor(X), Tensor(Y), Tensor(Y))
    with pytest.raises(TypeError, match=r"MulNet.construct takes 2 inputs \(x, y\), got 1"):
        MulNet()(Tensor(X))


@pytest.mark.parametrize("mode", MODES)
def test_non_tensor_input_is_named(mode: str) -> None:
    grad_fn = ops.GradOperation(get_all=True)(MulNet())
    with pytest.raises(TypeError, match=r"MulNet.construct: input 1 is a numpy.ndarray; pass a Tensor"):
        call(mode, grad_fn, Tensor(X), consts=(Y,))
    with pytest.raises(TypeError, match=r"input 0 is a list holding a builtins.set; a tuple, list or dict input may hold Tensors"):
        MulNet()([1.0, {2.0}], Tensor(Y))
    with pytest.raises(TypeError, match=r"MulNet.construct: input 0 is a numpy.ndarray"):
        ops.GradOperation()(MulNet())(X, Tensor(Y))


class Cube(nn.Cell):
    """x ** 3 written as products."""

    def construct(self, x: Tensor) -> Tensor:
        return x * x * x


class GradOf(nn.Cell):
    """GradOperation of another network inside construct."""

    def __init__(self, net: Any, grad_op: Any = None) -> None:
        super().__init__()
        self.net = net
        self.grad_op = grad_op or ops.GradOperation()

    def construct(self, x: Tensor) -> Any:
        return self.grad_op(self.net)(x)


def test_higher_orders() -> None:
    x = np.array([0.5, -2.0, 3.0], np.float64)
    first, second, third = GradOf(Cube()), GradOf(GradOf(Cube())), GradOf(GradOf(GradOf(Cube())))
    np.testing.assert_allclose(first(Tensor(x)).asnumpy(), 3 * x**2)
    np.testing.assert_allclose(second(Tensor(x)).asnumpy(), 6 * x)
    np.testing.assert_allclose(third(Tensor(x)).asnumpy(), np.full_like(x, 6.0))
    fourth = ops.GradOperation()(third)  # a top-level GradOperation over a nested one
    np.testing.assert_allclose(fourth(Tensor(x)).asnumpy(), np.zeros_like(x))
    grad_of_grad = ops.GradOperation()(ops.GradOperation()(Cube()))  # no Cell in between
    np.testing.assert_allclose(grad_of_grad(Tensor(x)).asnumpy(), 6 * x)


class Quad(nn.Cell):
    """w * x ** 2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(np.array([3.0], np.float32)), name="w")

    def construct(self, x: Tensor) -> Tensor:
        return self.w * x * x


def test_weight_gradient_of_an_input_gradient() -> None:
    """d/dw (d/dx w x^2) = 2x: a GradOperation with get_by_list over a Cell that takes GradOperation itself."""
    quad = Quad()
    dx = GradOf(quad)
    dxw = ops.GradOperation(get_by_list=True)(dx, quad.w)
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_allclose(dx(Tensor(x)).asnumpy(), 6 * x)
    np.testing.assert_allclose(dxw(Tensor(x)).asnumpy(), [2 * x.sum()])


class Mlp(nn.Cell):
    """tanh(x @ w1 + b) @ w2, then exp of its sum with y."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.w1 = Parameter(Tensor(rng.normal(size=(3, 4))), name="w1")
        self.b = Parameter(Tensor(rng.normal(size=(4,))), name="b")
        self.w2 = Parameter(Tensor(rng.normal(size=(4, 2)) * 0.3), name="w2")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        h = ops.tanh(ops.matmul(x, self.w1) + self.b)
        return ops.exp(ops.MatMul()(h, self.w2) * 0.5) * y


def central_difference(loss: Any, base: np.ndarray, put: Any, eps: float = 1e-6) -> np.ndarray:
    """d loss / d value by central differences, bumping each element of ``base`` through ``put``."""
    out = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        for sign in (1, -1):
            bumped = base.copy()
            bumped[i] += sign * eps
            put(bumped)
            out[i] += sign * loss() / (2 * eps)
    put(base)
    return out


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    net = Mlp(rng)
    inputs = {"x": rng.normal(size=(2, 3)), "y": rng.normal(size=(2, 2))}
    sens = rng.normal(size=(2, 2))
    params = ParameterTuple(net.trainable_params())
    (dx, dy), dws = ops.GradOperation(True, True, True)(net, params)(Tensor(inputs["x"]), Tensor(inputs["y"]), Tensor(sens))

    def loss() -> float:
        return float((net(Tensor(inputs["x"]), Tensor(inputs["y"])).asnumpy() * sens).sum())

    for name, got in (("x", dx), ("y", dy)):
        want = central_difference(loss, inputs[name], lambda v, n=name: inputs.__setitem__(n, v))
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-7)
    for p, dp in zip(params, dws):
        np.testing.assert_allclose(dp.asnumpy(), central_difference(loss, p.asnumpy(), p.set_data), rtol=1e-5, atol=1e-7)
    assert trace_count(net) == 1  # parameter updates reach the cached graph without retracing
