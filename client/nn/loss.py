"""Loss Cells with MindSpore 2.x arguments and reduction semantics ('mean', 'sum' or 'none'), built from ops."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


class LossBase(Cell):
    """``LossBase(reduction='mean')``; ``get_loss(x, weights=1.0)`` applies the weights then the reduction."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"nn.{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def get_loss(self, x: Any, weights: Any = 1.0) -> Any:
        """``x * weights``, then averaged, summed or returned as it is."""
        if not (isinstance(weights, float) and weights == 1.0):
            x = x * weights
        if self.reduction == "mean":
            return apply_op("ReduceMean", x, axis=(), keep_dims=False)
        if self.reduction == "sum":
            return apply_op("ReduceSum", x, axis=(), keep_dims=False)
        return x


def _check_same(name: str, logits: Any, labels: Any) -> None:
    if logits.shape != labels.shape:
        raise ValueError(f"nn.{name}: logits {logits.shape} and labels {labels.shape} must have the same shape")


class MSELoss(LossBase):
    """(logits - labels)^2, reduced."""

    def construct(self, logits: Any, labels: Any) -> Any:
        return self.get_loss(apply_op("Square", logits - labels))


class L1Loss(LossBase):
    """|logits - labels|, reduced."""

    def construct(self, logits: Any, labels: Any) -> Any:
        return self.get_loss(abs(logits - labels))


class SmoothL1Loss(LossBase):
    """``SmoothL1Loss(beta=1.0, reduction='none')``: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta."""

    def __init__(self, beta: float = 1.0, reduction: str = "none") -> None:
        super().__init__(reduction)
        if not beta > 0:
            raise ValueError(f"nn.SmoothL1Loss: beta must be positive, got {beta!r}")
        self.beta = float(beta)

    def construct(self, logits: Any, labels: Any) -> Any:
        _check_same("SmoothL1Loss", logits, labels)
        d = abs(logits - labels)
        quad = apply_op("Square", d) * (0.5 / self.beta)
        return self.get_loss(apply_op("Select", d < self.beta, quad, d - 0.5 * self.beta))


class BCELoss(LossBase):
    """``BCELoss(weight=None, reduction='mean')``: -weight (y log p + (1 - y) log(1 - p)) for probabilities p."""

    def __init__(self, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = weight

    def construct(self, logits: Any, labels: Any) -> Any:
        _check_same("BCELoss", logits, labels)
        loss = -(labels * apply_op("Log", logits) + (1 - labels) * apply_op("Log", 1 - logits))
        return self.get_loss(loss, 1.0 if self.weight is None else self.weight)


class BCEWithLogitsLoss(LossBase):
    """``BCEWithLogitsLoss(reduction='mean', weight=None, pos_weight=None)``: weight (pos_weight y softplus(-x) +
    (1 - y) softplus(x)), the stable form of BCE on sigmoid(x)."""

    def __init__(self, reduction: str = "mean", weight: Any = None, pos_weight: Any = None) -> None:
        super().__init__(reduction)
        self.weight, self.pos_weight = weight, pos_weight

    def construct(self, logits: Any, labels: Any) -> Any:
        _check_same("BCEWithLogitsLoss", logits, labels)
        pos = labels if self.pos_weight is None else labels * self.pos_weight
        loss = pos * apply_op("Softplus", -logits) + (1 - labels) * apply_op("Softplus", logits)
        return self.get_loss(loss, 1.0 if self.weight is None else self.weight)


def _one_hot(labels: Any, classes: int, like: Any) -> Any:
    """(N, C) one-hot rows of ``like``'s dtype for integer labels (N,), made with Equal against 0..C-1."""
    ids = Tensor(np.arange(classes, dtype=labels._array_dtype()))
    return apply_op("Cast", apply_op("Equal", labels.reshape(-1, 1), ids), dtype=like._array_dtype())


def _class_check(name: str, logits: Any, labels: Any) -> None:
    if logits.ndim != 2:
        raise ValueError(f"nn.{name}: logits must be (N, C), got shape {logits.shape}")
    if labels._array_dtype().kind in "iu":
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"nn.{name}: class-index labels must have shape {logits.shape[:1]}, got {labels.shape}")
    elif labels.shape != logits.shape:
        raise ValueError(f"nn.{name}: probability labels must have the logits' shape {logits.shape}, got {labels.shape}")


class NLLLoss(LossBase):
    """``NLLLoss(weight=None, ignore_index=-100, reduction='mean')`` on (N, C) log-probabilities and class ids (N,):
    -weight[y] logp[y]; 'mean' divides by the sum of the weights of the labels not ignored."""

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight, self.ignore_index = weight, ignore_index

    def construct(self, logits: Any, labels: Any) -> Any:
        _class_check(type(self).__name__, logits, labels)
        if labels._array_dtype().kind not in "iu":
            raise TypeError(f"nn.{type(self).__name__}: labels must be integer class ids, got {labels.dtype}")
        return self._nll(logits, labels, 0.0)

    def _nll(self, logp: Any, labels: Any, smoothing: float) -> Any:
        """Weighted negative log-likelihood of class ids, with label smoothing over all C classes."""
        classes = logp.shape[1]
        hot = _one_hot(labels, classes, logp) * apply_op("Cast", labels != self.ignore_index, dtype=logp._array_dtype()).reshape(-1, 1)
        w_hot = hot if self.weight is None else hot * self.weight
        sample_w = apply_op("ReduceSum", w_hot, axis=(1,), keep_dims=False)
        loss = -apply_op("ReduceSum", w_hot * logp, axis=(1,), keep_dims=False)
        if smoothing:
            w_all = logp if self.weight is None else logp * self.weight
            valid = apply_op("ReduceSum", hot, axis=(1,), keep_dims=False)
            smooth = -apply_op("ReduceSum", w_all, axis=(1,), keep_dims=False) * valid / classes
            loss = loss * (1 - smoothing) + smooth * smoothing
        if self.reduction == "mean":
            return apply_op("ReduceSum", loss, axis=(), keep_dims=False) / apply_op("ReduceSum", sample_w, axis=(), keep_dims=False)
        return self.get_loss(loss)


class CrossEntropyLoss(NLLLoss):
    """``CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.0)`` on (N, C) logits and
    class ids (N,) or class probabilities (N, C)."""

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight, ignore_index, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"nn.CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def construct(self, logits: Any, labels: Any) -> Any:
        _class_check("CrossEntropyLoss", logits, labels)
        logp = apply_op("LogSoftmax", logits, axis=1)
        if labels._array_dtype().kind in "iu":
            return self._nll(logp, labels, self.label_smoothing)
        classes = logits.shape[1]
        if self.label_smoothing:
            labels = labels * (1 - self.label_smoothing) + self.label_smoothing / classes
        w = labels if self.weight is None else labels * self.weight
        return self.get_loss(-apply_op("ReduceSum", w * logp, axis=(1,), keep_dims=False))


class SoftmaxCrossEntropyWithLogits(LossBase):
    """``SoftmaxCrossEntropyWithLogits(sparse=False, reduction='none')``: -sum(labels * log_softmax(logits)) per row;
    with ``sparse`` the labels are class ids (N,)."""

    def __init__(self, sparse: bool = False, reduction: str = "none") -> None:
        super().__init__(reduction)
        self.sparse = bool(sparse)

    def construct(self, logits: Any, labels: Any) -> Any:
        if self.sparse:
            if labels._array_dtype().kind not in "iu" or labels.shape != logits.shape[:1]:
                raise ValueError(f"nn.SoftmaxCrossEntropyWithLogits(sparse=True): labels must be integer ids of shape "
                                 f"{logits.shape[:1]}, got {labels.dtype} {labels.shape}")
            labels = _one_hot(labels, logits.shape[1], logits)
        loss, _ = apply_op("SoftmaxCrossEntropyWithLogits", logits, labels)
        return self.get_loss(loss)
