"""MindSpore 2.x's functional convolution and pooling (``ops.conv2d``, ``ops.max_pool2d``, ``ops.avg_pool2d``,
``ops.adaptive_avg_pool2d``) in MindSpore's argument order, embedded and through a server.

Oracle: torch.nn.functional in float64 (values and gradients)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

import gradserve as gs
import gradserve.ops as ops
from gradserve import Tensor

RNG = np.random.default_rng(7)
X = RNG.normal(size=(2, 4, 7, 6))
W = RNG.normal(size=(6, 2, 3, 2))
B = RNG.normal(size=(6,))


def close(got: Any, want: Any) -> None:
    w = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got.asnumpy(), w, rtol=1e-10, atol=1e-12)


def test_conv2d_takes_mindspores_positional_order_and_bias(where: str) -> None:
    x, w, b = (torch.tensor(a, requires_grad=True) for a in (X, W, B))
    want = tf.conv2d(x, w, b, (2, 1), (1, 2), 1, 2)
    # ops.conv2d(input, weight, bias, stride, pad_mode, padding, dilation, groups)
    close(ops.conv2d(Tensor(X), Tensor(W), Tensor(B), (2, 1), "pad", (1, 2), 1, 2), want)
    close(ops.conv2d(Tensor(X), Tensor(W), stride=(2, 1), pad_mode="pad", padding=(1, 1, 2, 2), groups=2, bias=Tensor(B)), want)
    close(ops.conv2d(Tensor(X[:, :2]), Tensor(W[:, :, :2, :2]), dilation=2), tf.conv2d(torch.tensor(X[:, :2]), torch.tensor(W[:, :, :2, :2]), dilation=2))
    s = RNG.normal(size=tuple(want.shape))
    gx, gw, gb = torch.autograd.grad((want * torch.tensor(s)).sum(), (x, w, b))

    def f(a: Tensor, k: Tensor, c: Tensor) -> Tensor:
        return (ops.conv2d(a, k, c, (2, 1), "pad", (1, 2), 1, 2) * Tensor(s)).sum()

    dx, dw, db = gs.grad(f, grad_position=(0, 1, 2))(Tensor(X), Tensor(W), Tensor(B))
    close(dx, gx)
    close(dw, gw)
    close(db, gb)


def test_pooling_functions(where: str) -> None:
    x = torch.tensor(X, requires_grad=True)
    close(ops.max_pool2d(Tensor(X), 2), tf.max_pool2d(x, 2))
    close(ops.max_pool2d(Tensor(X), (3, 2), 1), tf.max_pool2d(x, (3, 2), 1))
    out, argmax = ops.max_pool2d(Tensor(X), (3, 2), (2, 2), 0, 1, True)
    want, want_argmax = tf.max_pool2d(x, (3, 2), (2, 2), return_indices=True)
    close(out, want)
    assert argmax.dtype == gs.int64
    np.testing.assert_array_equal(argmax.asnumpy(), want_argmax.numpy())
    close(ops.avg_pool2d(Tensor(X), (2, 3), (1, 2)), tf.avg_pool2d(x, (2, 3), (1, 2)))
    close(ops.avg_pool2d(Tensor(X), 2, 1, (0, 0, 0, 0), False, True, None), tf.avg_pool2d(x, 2, 1))
    close(ops.adaptive_avg_pool2d(Tensor(X), (3, None)), tf.adaptive_avg_pool2d(x, (3, 6)))
    want = torch.autograd.grad((tf.avg_pool2d(x, 2, 1) ** 2).sum(), x)[0]
    close(gs.grad(lambda a: (ops.avg_pool2d(a, 2, 1) ** 2).sum())(Tensor(X)), want)


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda a: ops.max_pool2d(a, 3, 2, 1), lambda a: tf.max_pool2d(a, 3, 2, 1)),
    (lambda a: ops.max_pool2d(a, (3, 2), (2, 1), (1, 1), 2, False, True), lambda a: tf.max_pool2d(a, (3, 2), (2, 1), 1, 2, True)),
    (lambda a: ops.avg_pool2d(a, 3, 2, 1, True), lambda a: tf.avg_pool2d(a, 3, 2, 1, True)),
    (lambda a: ops.avg_pool2d(a, 3, 2, (1, 0), True, False), lambda a: tf.avg_pool2d(a, 3, 2, (1, 0), True, False)),
    (lambda a: ops.avg_pool2d(a, 2, 1, 1, False, True, 3), lambda a: tf.avg_pool2d(a, 2, 1, 1, False, True, 3)),
])
def test_pooling_padding_ceil_mode_dilation_and_divisor(where: str, ours: Any, theirs: Any) -> None:
    """Padding, ceil_mode, dilation, count_include_pad and divisor_override: values and gradients equal torch's."""
    x = torch.tensor(X, requires_grad=True)
    want = theirs(x)
    close(ours(Tensor(X)), want)
    s = RNG.normal(size=tuple(want.shape))
    close(gs.grad(lambda a: (ours(a) * Tensor(s)).sum())(Tensor(X)), torch.autograd.grad((want * torch.tensor(s)).sum(), x)[0])


def test_unsupported_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"ops.conv2d: padding=1 needs pad_mode='pad'"):
        ops.conv2d(Tensor(X), Tensor(W[:, :4 // 2]), padding=1)
    with pytest.raises(ValueError, match=r"ops.conv2d: bias must be a Tensor of shape \(6,\)"):
        ops.conv2d(Tensor(X), Tensor(W), Tensor(B[:3]), groups=2)
    with pytest.raises(ValueError, match=r"ops.max_pool2d: padding must be a non-negative int or a tuple of 1, 2 or 4"):
        ops.max_pool2d(Tensor(X), 2, padding=-1)
    with pytest.raises(ValueError, match=r"ops.avg_pool2d: padding must be a non-negative int or a tuple of 1, 2 or 4"):
        ops.avg_pool2d(Tensor(X), 2, padding=(1, 1, 0))
    with pytest.raises(ValueError, match=r"ops.avg_pool2d: divisor_override must be 0, None or a positive int, got -2"):
        ops.avg_pool2d(Tensor(X), 2, divisor_override=-2)
