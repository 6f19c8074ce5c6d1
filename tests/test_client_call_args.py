"""MindSpore's call-time spellings carried by op-table fields: OneHot's depth between its tensors (call_order),
Pad's ((before, after), ...) and AdaptiveAvgPool2D's None sizes (Attr.convert), checked eagerly against NumPy."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from clientkit import Fn

import gradserve.ops as ops
from gradserve import Tensor
from gradserve.engine import OPS
from gradserve.engine.optable import Attr, defop

RNG = np.random.default_rng(5)
INDICES = np.array([[0, 3, 1], [2, -1, 4]], np.int64)


def one_hot(indices: np.ndarray, depth: int, on: float, off: float, axis: int) -> np.ndarray:
    """NumPy one-hot: indices outside [0, depth) give a row of off values."""
    eye = np.vstack([np.eye(depth), np.zeros((1, depth))])
    hot = np.moveaxis(eye[np.where((indices >= 0) & (indices < depth), indices, depth)], -1, axis)
    return np.where(hot == 1, on, off)


def adaptive_mean(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Adaptive average pooling by explicit bins [floor(i H / oh), ceil((i + 1) H / oh))."""
    h, w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * h // oh, -(-(i + 1) * h // oh))
            cols = slice(j * w // ow, -(-(j + 1) * w // ow))
            out[..., i, j] = x[..., rows, cols].mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_onehot_primitive_takes_depth_between_indices_and_values(axis: int) -> None:
    on, off = Tensor(np.float64(2.5)), Tensor(np.float64(-0.5))
    got = ops.OneHot(axis)(Tensor(INDICES), 4, on, off)
    np.testing.assert_array_equal(got.asnumpy(), one_hot(INDICES, 4, 2.5, -0.5, axis))


def test_onehot_functional_follows_mindspore_order() -> None:
    on, off = Tensor(np.float32(1.0)), Tensor(np.float32(0.0))
    got = ops.one_hot(Tensor(INDICES), 5, on, off, 0)
    assert got.asnumpy().dtype == np.float32
    np.testing.assert_array_equal(got.asnumpy(), one_hot(INDICES, 5, 1.0, 0.0, 0))
    np.testing.assert_array_equal(ops.one_hot(Tensor(INDICES), 5, on, off, axis=1).asnumpy(), one_hot(INDICES, 5, 1.0, 0.0, 1))


def test_onehot_depth_is_not_a_constructor_argument_and_missing_inputs_are_named() -> None:
    with pytest.raises(TypeError, match="pass depth when calling"):
        ops.OneHot(depth=3)
    with pytest.raises(TypeError, match="missing input"):
        ops.OneHot()(Tensor(INDICES), 3)
    with pytest.raises(TypeError, match="missing call argument 'depth'|missing input"):
        ops.OneHot()(Tensor(INDICES))


@pytest.mark.parametrize("paddings", [((1, 2), (0, 3)), [[2, 0], [1, 1]], np.array([[0, 1], [3, 0]]), (1, 0, 2, 2)])
def test_pad_takes_mindspore_pairs(paddings: object) -> None:
    x = RNG.standard_normal((2, 3))
    pairs = np.asarray(paddings).reshape(-1, 2)
    want = np.pad(x, [tuple(p) for p in pairs.tolist()])
    np.testing.assert_array_equal(ops.Pad(paddings)(Tensor(x)).asnumpy(), want)


@pytest.mark.parametrize(("size", "expect"), [((None, 3), (7, 3)), ((2, None), (2, 5)), (4, (4, 4)), ([None, None], (7, 5))])
def test_adaptive_avg_pool_none_keeps_the_input_dimension(size: object, expect: tuple[int, int]) -> None:
    x = RNG.standard_normal((2, 3, 7, 5))
    got = ops.AdaptiveAvgPool2D(size)(Tensor(x)).asnumpy()
    assert got.shape == (2, 3) + expect
    np.testing.assert_allclose(got, adaptive_mean(x, *expect), rtol=1e-12, atol=1e-12)


def test_a_call_order_must_list_the_inputs_and_call_attributes_once() -> None:
    """defop refuses a call_order that drops or repeats a name, before registering anything."""
    with pytest.raises(ValueError, match="call_order"):
        defop("CallOrderProbe", ("x", "y"), lambda t, a: t[0], lambda x, y, a: x, None, attrs={"a": Attr("int")},
              call_attrs=("a",), call_order=("x", "a", "x"))
    assert "CallOrderProbe" not in OPS


def test_call_time_spellings_trace_and_differentiate(where: str) -> None:
    """Pad's pairs, AdaptiveAvgPool2D's None and OneHot's depth inside a traced Cell: value and input gradients
    equal PyTorch's (float64)."""
    x, v = RNG.standard_normal((1, 2, 5, 4)), RNG.standard_normal(3)
    idx = np.array([0, 1, 1, 0, 5, 1, 0, 0], np.int64)

    def ms(x: Tensor, v: Tensor) -> Tensor:
        p = ops.Pad(((0, 0), (0, 0), (1, 2), (0, 1)))(x)
        a = ops.AdaptiveAvgPool2D((None, 2))(p)
        h = ops.OneHot()(Tensor(idx), 2, (v * v).sum(), v.sum())
        return (a * h).sum()

    def th(x: Any, v: Any) -> Any:
        a = torch.nn.functional.adaptive_avg_pool2d(torch.nn.functional.pad(x, (0, 1, 1, 2)), (8, 2))
        hot = torch.tensor(one_hot(idx, 2, 1.0, 0.0, -1) == 1)
        h = torch.where(hot, (v * v).sum(), v.sum())
        return (a * h).sum()

    ts = [torch.tensor(a, requires_grad=True) for a in (x, v)]
    want = th(*ts)
    want_grads = torch.autograd.grad(want, ts)
    net = Fn(ms)
    np.testing.assert_allclose(net(Tensor(x), Tensor(v)).asnumpy(), want.detach().numpy(), rtol=1e-12)
    for g, w in zip(ops.GradOperation(get_all=True)(net)(Tensor(x), Tensor(v)), want_grads):
        np.testing.assert_allclose(g.asnumpy(), w.numpy(), rtol=1e-10, atol=1e-12)
