"""Structured outputs (dicts, lists, tuples with Python scalars and strings) and inputs (tuples and lists of
Tensors), and GradOperation without weights, embedded and on a server.

Oracles: NumPy closed forms and torch float64 gradients; MindSpore's test_pynative_requires_grad_without_params
for the weights of a Cell with frozen Parameters."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, Tensor

RNG = np.random.default_rng(11)
X = RNG.normal(size=(2, 3))
Y = RNG.normal(size=(2, 3))
Z = RNG.normal(size=(2, 3))
W = RNG.normal(size=(2, 3))


def close(got: Any, want: Any) -> None:
    """A Tensor close to a NumPy array or a torch tensor (float64, to 1e-9)."""
    assert isinstance(got, Tensor), f"expected a Tensor, got {got!r}"
    w = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got.asnumpy(), w, rtol=1e-9, atol=1e-12)


class Frozen(nn.Cell):
    """out = 2 x p1 + x p2 + x p3, with p1 and p2 frozen (requires_grad=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = Parameter(Tensor(np.array([1.0])), name="p1", requires_grad=False)
        self.p2 = Parameter(Tensor(np.array([2.0])), name="p2", requires_grad=False)
        self.p3 = Parameter(Tensor(np.array([3.0])), name="p3")

    def construct(self, x: Tensor) -> Tensor:
        return 2 * x * self.p1 + x * self.p2 + x * self.p3


def test_get_by_list_without_weights_differentiates_every_parameter_of_the_cell(where: str) -> None:
    net, x = Frozen(), Tensor(np.array([1.5]))
    (dx,), (d1, d2, d3) = ops.GradOperation(get_all=True, get_by_list=True)(net)(x)
    close(dx, np.array([2 * 1.0 + 2.0 + 3.0]))
    close(d1, np.zeros(1))
    close(d2, np.zeros(1))
    close(d3, np.array([1.5]))
    _, _, w3 = ops.GradOperation(get_by_list=True)(net)(x)
    close(w3, np.array([1.5]))
    explicit = ops.GradOperation(get_by_list=True)(net, [net.p1, net.p2, net.p3])(x)
    assert [g.asnumpy().tolist() for g in explicit] == [[0.0], [0.0], [1.5]]


class DictNet(nn.Cell):
    """A dict output with a string, a list holding a float, and a tuple holding None."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(W), name="w")

    def construct(self, x: Tensor, y: Tensor) -> Any:
        return {"loss": (x * self.w).sum(), "name": "mlp", "parts": [x * x, 2.0], "pair": (ops.sin(y), None)}


def test_a_dict_output_keeps_its_keys_constants_and_containers(where: str) -> None:
    out = DictNet()(Tensor(X), Tensor(Y))
    assert isinstance(out, dict) and list(out) == ["loss", "name", "parts", "pair"]
    assert out["name"] == "mlp"
    assert isinstance(out["parts"], list) and out["parts"][1] == 2.0
    assert isinstance(out["pair"], tuple) and out["pair"][1] is None
    close(out["loss"], np.asarray((X * W).sum()))
    close(out["parts"][0], X * X)
    close(out["pair"][0], np.sin(Y))


def test_gradients_of_a_dict_output_sum_over_its_tensor_leaves(where: str) -> None:
    net, x, y = DictNet(), Tensor(X), Tensor(Y)
    dx, dy = ops.GradOperation(get_all=True)(net)(x, y)
    close(dx, W + 2 * X)
    close(dy, np.cos(Y))
    s0, s1, s2 = RNG.normal(), RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    sens = {"loss": Tensor(np.asarray(s0)), "name": "ignored", "parts": [Tensor(s1), 0.0], "pair": (Tensor(s2), None)}
    (dx, dy), (dw,) = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)(net)(x, y, sens)
    close(dx, s0 * W + 2 * X * s1)
    close(dy, s2 * np.cos(Y))
    close(dw, s0 * X)


def test_sens_for_a_dict_output_must_be_a_dict_with_its_keys(where: str) -> None:
    grad = ops.GradOperation(sens_param=True)(DictNet())
    with pytest.raises(TypeError, match=r"returns a dict with keys \['loss', 'name', 'parts', 'pair'\].*got a tuple"):
        grad(Tensor(X), Tensor(Y), (Tensor(np.asarray(1.0)),))
    with pytest.raises(ValueError, match=r"sens\['parts'\]\[0\] has shape \(3,\)"):
        grad(Tensor(X), Tensor(Y), {"loss": Tensor(np.asarray(1.0)), "name": 0, "parts": [Tensor(np.ones(3)), 0],
                                    "pair": (Tensor(Y), None)})


class ListInput(nn.Cell):
    """out = xs[0] * xs[1] + z * exp(xs[2]) for a list (or tuple) xs."""

    def construct(self, xs: Any, z: Tensor) -> Tensor:
        return xs[0] * xs[1] + z * ops.exp(xs[2])


def test_a_list_input_is_flattened_and_its_gradient_is_a_list(where: str) -> None:
    net, z = ListInput(), Tensor(Z)
    xs = [Tensor(X), Tensor(Y), Tensor(W)]
    close(net(xs, z), X * Y + Z * np.exp(W))
    (gxs, gz) = ops.GradOperation(get_all=True)(net)(xs, z)
    assert isinstance(gxs, list) and len(gxs) == 3
    close(gxs[0], Y)
    close(gxs[1], X)
    close(gxs[2], Z * np.exp(W))
    close(gz, np.exp(W))
    first = ops.GradOperation()(net)(tuple(xs), z)
    assert isinstance(first, tuple) and len(first) == 3
    close(first[2], Z * np.exp(W))


def nested(inputs: Any, c: Tensor) -> Any:
    """Nested tuples in and out: (((a*b, (exp(c),)), "tag"), a + c) for inputs ((a, b),)."""
    ((a, b),) = inputs
    return ((a * b, (ops.exp(c) * a,)), "tag"), a + c


def test_nested_tuples_match_torch_with_and_without_sens(where: str) -> None:
    a, b, c = (torch.tensor(v, requires_grad=True) for v in (X, Y, Z))
    inputs, ct = ((Tensor(X), Tensor(Y)),), Tensor(Z)
    out = nested(inputs, ct)
    got = gs.jit(nested)(inputs, ct)
    assert got[0][1] == "tag" and isinstance(got[0][0][1], tuple)
    close(got[0][0][0], out[0][0][0].asnumpy())
    close(got[1], X + Z)
    s = [RNG.normal(size=(2, 3)) for _ in range(3)]
    for sens_param in (False, True):
        weights = s if sens_param else [np.ones((2, 3))] * 3
        loss = ((a * b) * torch.tensor(weights[0])).sum() + (torch.exp(c) * a * torch.tensor(weights[1])).sum() \
            + ((a + c) * torch.tensor(weights[2])).sum()
        ga, gb, gc = torch.autograd.grad(loss, (a, b, c))
        grad = ops.GradOperation(get_all=True, sens_param=sens_param)(nested)
        sens = (((Tensor(s[0]), (Tensor(s[1]),)), "tag"), Tensor(s[2]))
        ((gab,), gcc) = grad(inputs, ct, sens) if sens_param else grad(inputs, ct)
        assert isinstance(gab, tuple) and len(gab) == 2
        close(gab[0], ga)
        close(gab[1], gb)
        close(gcc, gc)


def test_functional_grad_of_a_tuple_input_is_a_tuple(where: str) -> None:
    def f(pair: Any, z: Tensor) -> Any:
        return {"value": (pair[0] * pair[1] * z).sum(), "kind": "product"}

    pair, z = (Tensor(X), Tensor(Y)), Tensor(Z)
    g = gs.grad(f, grad_position=0)(pair, z)
    assert isinstance(g, tuple) and len(g) == 2
    close(g[0], Y * Z)
    close(g[1], X * Z)
    value, (gp, gz) = gs.value_and_grad(f, grad_position=(0, 1))(pair, z)
    assert value["kind"] == "product"
    close(value["value"], np.asarray((X * Y * Z).sum()))
    close(gp[1], X * Z)
    close(gz, X * Y)


class GradInside(nn.Cell):
    """Takes the gradients of DictNet inside its own construct (a GradOperation node over structured outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = DictNet()
        self.grad = ops.GradOperation(get_all=True, sens_param=True)

    def construct(self, xy: Any, s: Tensor) -> Any:
        sens = {"loss": s, "name": "", "parts": [xy[0], 0.0], "pair": (xy[1], None)}
        return self.grad(self.net)(xy[0], xy[1], sens)


def test_a_nested_gradoperation_over_structures(where: str) -> None:
    s = RNG.normal()
    dx, dy = GradInside()((Tensor(X), Tensor(Y)), Tensor(np.asarray(s)))
    close(dx, s * W + 2 * X * X)
    close(dy, Y * np.cos(Y))


def test_outputs_other_than_tensors_numbers_strings_and_none_are_named() -> None:
    with pytest.raises(TypeError, match=r"returned a numpy.ndarray among its outputs"):
        gs.jit(lambda x: (x, np.ones(2)))(Tensor(X))
    with pytest.raises(TypeError, match=r"returned a str; a network must return a Tensor or a tuple, list or dict"):
        gs.jit(lambda x: "no")(Tensor(X))
    with pytest.raises(TypeError, match=r"input 0 is a tuple holding a builtins.object"):
        ListInput()((Tensor(X), object(), Tensor(Y)), Tensor(Z))
