"""Helpers shared by the nn layer tests: gradients of sum(net(x) * r) from gradserve and from PyTorch, compared
to 1e-9, and random parameter values."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import gradserve as gs
from gradserve import nn, ops

TOL = 1e-9
F64 = gs.float64


class Objective(nn.Cell):
    """sum(net(x) * r): a scalar whose gradient checks every entry of the output's Jacobian product."""

    def __init__(self, net: nn.Cell, r: np.ndarray) -> None:
        super().__init__(auto_prefix=False)
        self.net, self.r = net, gs.Tensor(r)

    def construct(self, x: Any) -> Any:
        return (self.net(x) * self.r).sum()


def gs_grads(net: nn.Cell, x: np.ndarray, r: np.ndarray, inputs: bool = True) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """(output, d/dx, d/dweights in trainable_params order) from gradserve."""
    obj = Objective(net, r)
    weights = gs.ParameterTuple(net.trainable_params())
    out = net(gs.Tensor(x)).asnumpy()
    if inputs:
        (dx,), dw = ops.GradOperation(get_all=True, get_by_list=True)(obj, weights)(gs.Tensor(x))
        return out, dx.asnumpy(), [g.asnumpy() for g in dw]
    dw = ops.GradOperation(get_by_list=True)(obj, weights)(gs.Tensor(x))
    return out, None, [g.asnumpy() for g in dw]


def torch_grads(module: torch.nn.Module, params: list[torch.Tensor], x: np.ndarray, r: np.ndarray,
                inputs: bool = True) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """The same from PyTorch autograd."""
    tx = torch.tensor(x, requires_grad=inputs)
    out = module(tx)
    wrt = ([tx] if inputs else []) + params
    gs_ = torch.autograd.grad((out * torch.tensor(r)).sum(), wrt)
    dx = gs_[0].numpy() if inputs else None
    return out.detach().numpy(), dx, [g.numpy() for g in gs_[1 if inputs else 0:]]


def assert_same(ours: tuple, theirs: tuple) -> None:
    np.testing.assert_allclose(ours[0], theirs[0], rtol=TOL, atol=TOL)
    if ours[1] is not None:
        np.testing.assert_allclose(ours[1], theirs[1], rtol=TOL, atol=TOL)
    assert len(ours[2]) == len(theirs[2])
    for a, b in zip(ours[2], theirs[2]):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


def randomize(cell: nn.Cell, seed: int) -> None:
    """Non-trivial values for every parameter (zero biases and unit gammas would hide mistakes)."""
    rng = np.random.default_rng(seed)
    for p in cell.get_parameters():
        p.set_data(rng.normal(scale=0.4, size=p.shape))


class LeNet5(nn.Cell):
    """LeNet-5 as MindSpore's model zoo writes it."""

    def __init__(self, num_class: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, pad_mode="valid", has_bias=True, dtype=F64)
        self.conv2 = nn.Conv2d(6, 16, 5, pad_mode="valid", has_bias=True, dtype=F64)
        self.fc1 = nn.Dense(16 * 5 * 5, 120, dtype=F64)
        self.fc2 = nn.Dense(120, 84, dtype=F64)
        self.fc3 = nn.Dense(84, num_class, dtype=F64)
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()

    def construct(self, x: Any) -> Any:
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))
