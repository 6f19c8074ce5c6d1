"""User-defined derivatives (Cell.bprop, custom_vjp, the PyNative Function) embedded and through a server: MindSpore's
own examples, first to third order against closed forms and PyTorch's custom Function (whose double backward also
differentiates the backward's own operations), Parameters inside a bprop Cell, and the errors naming the Cell."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gradserve as gs
import gradserve.nn as nn
from gradserve import Parameter, ParameterTuple, Tensor, TracingError
from gradserve.client import trace_count
from gradserve.ops import GradOperation

RNG = np.random.default_rng(11)
X = RNG.uniform(0.5, 1.5, (2, 3))
Y = RNG.uniform(-1.0, 1.0, (2, 3))
grad_all = GradOperation(get_all=True)


def t(a: Any) -> Tensor:
    return Tensor(np.asarray(a, dtype=np.float64))


class MulAdd(nn.Cell):
    """MindSpore's test cell: true gradients (2, 1), user gradients (2 dout, 2 y)."""

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return 2 * x + y

    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * dout, 2 * y


class Inline(nn.Cell):
    """A bprop Cell inside a network: its rule replaces only its own part of the gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.mul_add = MulAdd()

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return self.mul_add(x, y) + x * y


def test_bprop_replaces_the_gradient(where: str) -> None:
    dx, dy = grad_all(MulAdd())(t(X), t(Y))
    np.testing.assert_array_equal(dx.asnumpy(), np.full_like(X, 2.0))
    np.testing.assert_array_equal(dy.asnumpy(), 2 * Y)
    dx, dy = grad_all(Inline())(t(X), t(Y))
    np.testing.assert_allclose(dx.asnumpy(), 2 + Y, rtol=1e-15)
    np.testing.assert_allclose(dy.asnumpy(), 2 * Y + X, rtol=1e-15)
    np.testing.assert_allclose(Inline()(t(X), t(Y)).asnumpy(), 2 * X + Y + X * Y, rtol=1e-15)


def test_sens_reaches_the_bprop_as_dout(where: str) -> None:
    sens = RNG.uniform(-2, 2, X.shape)
    dx, dy = GradOperation(get_all=True, sens_param=True)(MulAdd())(t(X), t(Y), t(sens))
    np.testing.assert_allclose(dx.asnumpy(), 2 * sens, rtol=1e-15)
    np.testing.assert_array_equal(dy.asnumpy(), 2 * Y)


class Scaled(nn.Cell):
    """Uses a Parameter in its forward; its bprop returns input gradients only, so z gets zeros (MindSpore)."""

    def __init__(self) -> None:
        super().__init__()
        self.z = Parameter(Tensor(np.array([1.5])), name="z")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return (x * self.z) * y

    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return x + x, y + y


class Outer(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.net = Scaled()
        self.w = Parameter(Tensor(np.array([2.0])), name="w")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x, y) * self.w


def test_parameters_inside_a_bprop_cell_get_zero_gradients(where: str) -> None:
    net = Outer()
    assert [p.name for p in net.trainable_params()] == ["w", "net.z"]
    (dx, dy), (dw, dz) = GradOperation(get_all=True, get_by_list=True)(net, ParameterTuple(net.trainable_params()))(t(X), t(Y))
    np.testing.assert_array_equal(dx.asnumpy(), 2 * X)  # the bprop ignores dout (MindSpore's own test)
    np.testing.assert_array_equal(dy.asnumpy(), 2 * Y)
    np.testing.assert_array_equal(dz.asnumpy(), [0.0])
    np.testing.assert_allclose(dw.asnumpy(), [np.sum(X * 1.5 * Y)], rtol=1e-14)


class TwoOut(nn.Cell):
    """MindSpore's dde test: the second output is used only by the bprop, and a dout the network never gives is zeros."""

    def construct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + 1, x + 2

    def bprop(self, x: Tensor, out: tuple[Tensor, Tensor], dout: tuple[Tensor, Tensor]) -> tuple[Tensor]:
        return (out[1] + dout[1],)


class FirstOnly(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.inner = TwoOut()

    def construct(self, x: Tensor) -> Tensor:
        first, _ = self.inner(x)
        return first


def test_bprop_reads_out_and_a_tuple_dout(where: str) -> None:
    (dx,) = grad_all(FirstOnly())(t(X))
    np.testing.assert_array_equal(dx.asnumpy(), X + 2)


class Cube(nn.Cell):
    """x^3 with the made-up derivative cos(x) dout: orders 1-3 of the user's rule are cos, -sin, -cos."""

    def construct(self, x: Tensor) -> Tensor:
        return x * x * x

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor]:
        return (dout * gs.ops.cos(x),)


class Square(nn.Cell):
    """x^2 whose rule uses out: 2 out dout. Through ``out`` the rule applies again at higher orders: 2x^2, 4x^2, 8x^2."""

    def construct(self, x: Tensor) -> Tensor:
        return x * x

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor]:
        return (dout * 2 * out,)


class TorchCube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class TorchSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x * x
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return g * 2 * out


def torch_orders(fn: Any, x: np.ndarray, n: int) -> list[np.ndarray]:
    """Orders 1..n of sum(fn(x)) by torch.autograd.grad with create_graph."""
    xt = torch.tensor(x, requires_grad=True)
    y, found = fn.apply(xt).sum(), []
    for _ in range(n):
        (y,) = torch.autograd.grad(y, xt, create_graph=True)
        found.append(y.detach().numpy())
        y = y.sum()
    return found


@pytest.mark.parametrize(("cell", "oracle", "closed"), [
    (Cube, TorchCube, [np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x)]),
    (Square, TorchSquare, [lambda x: 2 * x * x, lambda x: 4 * x * x, lambda x: 8 * x * x]),
])
def test_higher_orders_differentiate_the_bprop(where: str, cell: Any, oracle: Any, closed: list[Any]) -> None:
    net, grad = cell(), GradOperation()
    fns = [grad(net)]
    fns.append(grad(fns[0]))
    fns.append(grad(fns[1]))
    expected = torch_orders(oracle, X, 3)
    for order, (fn, want, formula) in enumerate(zip(fns, expected, closed), start=1):
        got = fn(t(X)).asnumpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"order {order}")
        np.testing.assert_allclose(got, formula(X), rtol=1e-12, err_msg=f"order {order}")


class HighGrad(nn.Cell):
    """Second order inside a construct (a GradOperation node over a network holding a bprop Cell)."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net

    def construct(self, x: Tensor) -> Tensor:
        return GradOperation()(GradOperation()(self.net))(x)


def test_second_order_inside_a_construct(where: str) -> None:
    np.testing.assert_allclose(HighGrad(Cube())(t(X)).asnumpy(), -np.sin(X), rtol=1e-12)


@gs.custom_vjp
def mul_add(x: Tensor, y: Tensor) -> Tensor:
    return 2 * x + y


@mul_add.defbwd
def mul_add_bprop(x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
    return 2 * dout, 2 * y


def test_custom_vjp_function(where: str) -> None:
    dx, dy = grad_all(mul_add)(t(X), t(Y))
    np.testing.assert_array_equal(dx.asnumpy(), np.full_like(X, 2.0))
    np.testing.assert_array_equal(dy.asnumpy(), 2 * Y)
    np.testing.assert_allclose(mul_add(t(X), t(Y)).asnumpy(), 2 * X + Y, rtol=1e-15)

    def uses(x: Tensor, y: Tensor) -> Tensor:
        return mul_add(x, y) * x

    dx, dy = grad_all(uses)(t(X), t(Y))
    np.testing.assert_allclose(dx.asnumpy(), 2 * X + (2 * X + Y), rtol=1e-14)
    np.testing.assert_allclose(dy.asnumpy(), 2 * Y, rtol=1e-15)


class CosRule(gs.Function):
    """The PyNative Function form of Cube, with a saved Tensor and a number on ctx."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.scale = scale
        return x * x * x

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return dout * gs.ops.cos(x) * ctx.scale, None


def test_pynative_custom_function(where: str) -> None:
    def f(x: Tensor) -> Tensor:
        return CosRule.apply(x, 3.0)

    np.testing.assert_allclose(f(t(X)).asnumpy(), X ** 3, rtol=1e-15)
    grad = GradOperation()
    np.testing.assert_allclose(grad(f)(t(X)).asnumpy(), 3 * np.cos(X), rtol=1e-14)
    np.testing.assert_allclose(grad(grad(f))(t(X)).asnumpy(), -3 * np.sin(X), rtol=1e-12)
    np.testing.assert_allclose(grad(grad(grad(f)))(t(X)).asnumpy(), -3 * np.cos(X), rtol=1e-12)


class WrongCount(nn.Cell):
    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return x * y

    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor]:
        return (dout,)


class WrongShape(WrongCount):
    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return dout, dout.sum()


class WrongDtype(WrongCount):
    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return dout, dout.astype(gs.float32)


class NotATensor(WrongCount):
    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, int]:
        return dout, 2


class Branchy(WrongCount):
    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return (dout, dout) if dout.sum() > 0 else (-dout, dout)


@pytest.mark.parametrize(("cell", "error", "message"), [
    (WrongCount, ValueError, r"WrongCount.bprop must return a tuple of 2 gradients, one per input of the forward; got 1"),
    (WrongShape, ValueError, r"WrongShape.bprop: gradient 1 has shape \(\), input 1 has shape \(2, 3\)"),
    (WrongDtype, TypeError, r"WrongDtype.bprop: gradient 1 has dtype Float32, input 1 has dtype Float64"),
    (NotATensor, TypeError, r"NotATensor.bprop: gradient 1 must be a Tensor like input 1 \(Float64\[2, 3\]\), got int"),
    (Branchy, TracingError, r"depends on a Tensor's value \(bool\(\).*cannot run in Branchy.bprop"),
])
def test_bad_bprops_are_errors_naming_the_cell(cell: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        grad_all(cell())(t(X), t(Y))


def test_a_bprop_cell_is_traced_once_per_signature() -> None:
    net = MulAdd()
    grad = grad_all(net)
    for _ in range(3):
        grad(t(X), t(Y))
    assert trace_count(net) == 1


class ExpProduct(gs.Function):
    """out = x exp(x y); backward reads intermediates saved in forward (s = x y, e = exp(s)), one of them as a ctx
    attribute, so higher orders must differentiate through them back to x and y."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        s = x * y
        e = gs.ops.exp(s)
        ctx.save_for_backward(x, s)
        ctx.e = e
        return x * e

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, Tensor]:
        x, s = ctx.saved_tensors
        return dout * ctx.e * (1 + s), dout * x * x * ctx.e


def exp_product(x: Tensor, y: Tensor) -> Tensor:
    return ExpProduct.apply(x, y).sum()


def central(f: Any, base: list[np.ndarray], k: int, eps: float = 1e-6) -> np.ndarray:
    """d f(*base) / d base[k] (f returns an array) by central differences: shape f's + base[k]'s."""
    cols = []
    for i in np.ndindex(base[k].shape):
        up, down = [b.copy() for b in base], [b.copy() for b in base]
        up[k][i] += eps
        down[k][i] -= eps
        cols.append((f(*up) - f(*down)) / (2 * eps))
    return np.stack(cols, axis=-1).reshape(cols[0].shape + base[k].shape)


def test_higher_orders_through_intermediates_saved_by_a_function(where: str) -> None:
    """The first-order gradient is the backward's; its derivatives (through the saved intermediates, back through the
    forward's operations that made them) match central differences of that gradient and torch's exact Hessian."""
    x, y = X[0], Y[0]
    first = gs.grad(exp_product, grad_position=(0, 1))
    gx, gy = first(t(x), t(y))
    np.testing.assert_allclose(gx.asnumpy(), np.exp(x * y) * (1 + x * y), rtol=1e-14)
    np.testing.assert_allclose(gy.asnumpy(), x * x * np.exp(x * y), rtol=1e-14)

    def first_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([g.asnumpy() for g in first(t(a), t(b))])

    hessian = gs.jacrev(first, grad_position=(0, 1))(t(x), t(y))
    ta, tb = torch.tensor(x), torch.tensor(y)
    exact = torch.autograd.functional.hessian(lambda a, b: (a * torch.exp(a * b)).sum(), (ta, tb))
    for i in range(2):
        for j in range(2):
            got = hessian[i][j].asnumpy()
            np.testing.assert_allclose(got, central(first_np, [x, y], j)[i], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got, exact[i][j].numpy(), rtol=1e-12, atol=1e-14)
    third = GradOperation()(GradOperation()(GradOperation()(lambda a: ExpProduct.apply(a, t(y)))))(t(x))
    ax = torch.tensor(x, requires_grad=True)
    d1 = torch.autograd.grad((ax * torch.exp(ax * tb)).sum(), ax, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), ax, create_graph=True)[0]
    d3 = torch.autograd.grad(d2.sum(), ax)[0]
    np.testing.assert_allclose(third.asnumpy(), d3.numpy(), rtol=1e-12)
