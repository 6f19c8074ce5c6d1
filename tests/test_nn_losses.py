"""Losses against torch.nn.functional in float64: the value and its gradient w.r.t. the logits to 1e-9, for each
reduction, with MindSpore's defaults where they differ from PyTorch's (SmoothL1Loss and
SoftmaxCrossEntropyWithLogits reduce with 'none')."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradserve as gs
from gradserve import nn, ops
from gradserve.client import epoch

TOL = 1e-9
RNG = np.random.default_rng(2)
N, C = 6, 4
LOGITS = RNG.normal(size=(N, C))
TARGET = RNG.normal(size=(N, C))
PROBS = 1 / (1 + np.exp(-LOGITS))
BINARY = (RNG.random(size=(N, C)) > 0.5).astype(np.float64)
IDS = np.array([0, 3, 1, 1, 2, 3], dtype=np.int32)
IDS_IGNORED = np.array([0, 3, -100, 1, 2, -100], dtype=np.int32)
WEIGHT = np.array([0.5, 2.0, 1.0, 3.0])
SOFT = np.exp(TARGET) / np.exp(TARGET).sum(1, keepdims=True)


class Objective(nn.Cell):
    def __init__(self, loss: nn.Cell, r: np.ndarray | None) -> None:
        super().__init__()
        self.loss, self.r = loss, r

    def construct(self, x: Any, y: Any) -> Any:
        out = self.loss(x, y)
        return out if self.r is None else (out * gs.Tensor(self.r)).sum()


def check(loss: nn.Cell, reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray) -> None:
    value = loss(gs.Tensor(x), gs.Tensor(y)).asnumpy()
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y).long() if y.dtype.kind == "i" else torch.tensor(y)
    expected = reference(tx, ty)
    np.testing.assert_allclose(value, expected.detach().numpy(), rtol=TOL, atol=TOL)
    r = None if value.ndim == 0 else RNG.normal(size=value.shape)
    (dx,) = torch.autograd.grad(expected if r is None else (expected * torch.tensor(r)).sum(), tx)
    ours = ops.GradOperation()(Objective(loss, r))(gs.Tensor(x), gs.Tensor(y))
    np.testing.assert_allclose(ours.asnumpy(), dx.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses(reduction: str) -> None:
    check(nn.MSELoss(reduction), lambda x, y: F.mse_loss(x, y, reduction=reduction), LOGITS, TARGET)
    check(nn.L1Loss(reduction), lambda x, y: F.l1_loss(x, y, reduction=reduction), LOGITS, TARGET)
    check(nn.SmoothL1Loss(0.7, reduction), lambda x, y: F.smooth_l1_loss(x, y, reduction=reduction, beta=0.7), LOGITS, TARGET)


def test_smooth_l1_defaults_to_no_reduction() -> None:
    check(nn.SmoothL1Loss(), lambda x, y: F.smooth_l1_loss(x, y, reduction="none"), LOGITS, TARGET)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_losses(reduction: str) -> None:
    check(nn.BCELoss(reduction=reduction), lambda x, y: F.binary_cross_entropy(x, y, reduction=reduction), PROBS, BINARY)
    w = gs.Tensor(WEIGHT)
    check(nn.BCELoss(w, reduction), lambda x, y: F.binary_cross_entropy(x, y, torch.tensor(WEIGHT), reduction=reduction),
          PROBS, BINARY)
    check(nn.BCEWithLogitsLoss(reduction), lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction=reduction),
          LOGITS, BINARY)
    pos = RNG.uniform(0.5, 2.0, size=C)
    check(nn.BCEWithLogitsLoss(reduction, w, gs.Tensor(pos)),
          lambda x, y: F.binary_cross_entropy_with_logits(x, y, torch.tensor(WEIGHT), reduction=reduction,
                                                          pos_weight=torch.tensor(pos)), LOGITS, BINARY)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_class_losses(reduction: str, weighted: bool) -> None:
    w, tw = (gs.Tensor(WEIGHT), torch.tensor(WEIGHT)) if weighted else (None, None)
    logp = LOGITS - np.log(np.exp(LOGITS).sum(1, keepdims=True))
    for ids in (IDS, IDS_IGNORED):
        check(nn.NLLLoss(w, reduction=reduction), lambda x, y: F.nll_loss(x, y, tw, reduction=reduction), logp, ids)
        check(nn.CrossEntropyLoss(w, reduction=reduction), lambda x, y: F.cross_entropy(x, y, tw, reduction=reduction),
              LOGITS, ids)
        check(nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.2),
              lambda x, y: F.cross_entropy(x, y, tw, reduction=reduction, label_smoothing=0.2), LOGITS, ids)
    check(nn.CrossEntropyLoss(w, reduction=reduction), lambda x, y: F.cross_entropy(x, y, tw, reduction=reduction),
          LOGITS, SOFT)
    check(nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=0.1),
          lambda x, y: F.cross_entropy(x, y, tw, reduction=reduction, label_smoothing=0.1), LOGITS, SOFT)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_with_logits_dense_and_sparse(reduction: str) -> None:
    check(nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction=reduction),
          lambda x, y: F.cross_entropy(x, y, reduction=reduction), LOGITS, IDS)
    check(nn.SoftmaxCrossEntropyWithLogits(reduction=reduction),
          lambda x, y: F.cross_entropy(x, y, reduction=reduction), LOGITS, SOFT)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.MSELoss("average")
    with pytest.raises(ValueError, match=r"class-index labels must have shape \(6,\)"):
        nn.CrossEntropyLoss()(gs.Tensor(LOGITS), gs.Tensor(IDS[:3]))
    with pytest.raises(ValueError, match="same shape"):
        nn.SmoothL1Loss()(gs.Tensor(LOGITS), gs.Tensor(TARGET[:2]))


def test_functional_losses_make_no_cell_and_leave_the_trace_epoch_alone() -> None:
    """ops.mse_loss and friends call the loss functions the Cells use: no Cell per call, so the trace epoch (which a
    Cell's creation moves, sending every cached network back to its slow path) stays put; values as torch's."""
    x, y, t = gs.Tensor(LOGITS), gs.Tensor(TARGET), torch.tensor(LOGITS)
    before = epoch.value
    got = [ops.mse_loss(x, y), ops.l1_loss(x, y, "sum"), ops.binary_cross_entropy_with_logits(x, gs.Tensor(BINARY)),
           ops.cross_entropy(x, gs.Tensor(IDS), reduction="none"), ops.SparseSoftmaxCrossEntropyWithLogits()(x, gs.Tensor(IDS))]
    assert epoch.value == before
    want = [F.mse_loss(t, torch.tensor(TARGET)), F.l1_loss(t, torch.tensor(TARGET), reduction="sum"),
            F.binary_cross_entropy_with_logits(t, torch.tensor(BINARY)),
            F.cross_entropy(t, torch.tensor(IDS, dtype=torch.long), reduction="none"),
            F.cross_entropy(t, torch.tensor(IDS, dtype=torch.long))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w.numpy(), rtol=TOL)
    with pytest.raises(ValueError, match="ops.mse_loss: reduction must be one of"):
        ops.mse_loss(x, y, "avg")
