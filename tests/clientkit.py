"""SDK networks shared by the client tests: the tutorial's network, and ``Fn``, a Cell around a function."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, Tensor
from gradserve import dtype as mstype


class Net(nn.Cell):
    """The tutorial's network: (x * z) @ y."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul = ops.MatMul()
        self.z = Parameter(Tensor(np.array([1.0], np.float32)), name="z")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return self.matmul(x * self.z, y)


def tutorial_grad_x() -> np.ndarray:
    """The tutorial's In [2], GradOperation()(Net())(x, y), through whatever backend the context selects."""
    x = Tensor([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], dtype=mstype.float32)
    y = Tensor([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], dtype=mstype.float32)
    return ops.GradOperation()(Net())(x, y).asnumpy()


class Fn(nn.Cell):
    """A Cell whose construct is ``fn``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def construct(self, *xs: Tensor) -> Any:
        return self.fn(*xs)


def torch_value_and_grads(fn: Callable[..., Any], *arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """PyTorch's value and input gradients (float64) of a scalar function; zeros for inputs it does not use."""
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, allow_unused=True)
    return out.detach().numpy(), [np.zeros_like(a) if g is None else g.numpy() for a, g in zip(arrays, grads)]


def check_like_torch(ms_fn: Callable[..., Any], torch_fn: Callable[..., Any], *arrays: np.ndarray, rtol: float = 1e-12) -> None:
    """``ms_fn`` traced in a Cell: its value and all input gradients equal PyTorch's."""
    net = Fn(ms_fn)
    args = [Tensor(a) for a in arrays]
    want, want_grads = torch_value_and_grads(torch_fn, *arrays)
    np.testing.assert_allclose(net(*args).asnumpy(), want, rtol=rtol, atol=1e-12)
    grads = ops.GradOperation(get_all=True)(net)(*args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.asnumpy(), w, rtol=rtol, atol=1e-12)
