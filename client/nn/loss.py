"""Loss Cells with MindSpore 2.x arguments and reduction semantics ('mean', 'sum' or 'none'), built from ops. Each
loss is a plain function (``mse``, ``l1``, ``bce_with_logits``, ``cross_entropy``) that its Cell's construct and the
matching ``ops.*_loss`` function both call, so the functional form makes no Cell (a Cell's creation moves the trace
epoch, which would send every cached network back to its slow path)."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def reduced(x: Any, reduction: str, weights: Any = 1.0) -> Any:
    """``x * weights``, then averaged, summed or returned as it is (``reduction`` 'mean', 'sum' or 'none')."""
    if not (isinstance(weights, float) and weights == 1.0):
        x = x * weights
    if reduction == "mean":
        return apply_op("ReduceMean", x, axis=(), keep_dims=False)
    if reduction == "sum":
        return apply_op("ReduceSum", x, axis=(), keep_dims=False)
    return x


class LossBase(Cell):
    """``LossBase(reduction='mean')``; ``get_loss(x, weights=1.0)`` applies the weights then the reduction."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(f"nn.{type(self).__name__}", reduction)
        self.reduction = reduction

    def get_loss(self, x: Any, weights: Any = 1.0) -> Any:
        """``x * weights``, then averaged, summed or returned as it is."""
        return reduced(x, self.reduction, weights)


def _check_same(name: str, logits: Any, labels: Any) -> None:
    if logits.shape != labels.shape:
        raise ValueError(f"{name}: logits {logits.shape} and labels {labels.shape} must have the same shape")


def mse(logits: Any, labels: Any, reduction: str = "mean", name: str = "ops.mse_loss") -> Any:
    """(logits - labels)^2, reduced: ``nn.MSELoss`` and ``ops.mse_loss``."""
    _check_reduction(name, reduction)
    return reduced(apply_op("Square", logits - labels), reduction)


def l1(logits: Any, labels: Any, reduction: str = "mean", name: str = "ops.l1_loss") -> Any:
    """|logits - labels|, reduced: ``nn.L1Loss`` and ``ops.l1_loss``."""
    _check_reduction(name, reduction)
    return reduced(abs(logits - labels), reduction)


class MSELoss(LossBase):
    """(logits - labels)^2, reduced."""

    def construct(self, logits: Any, labels: Any) -> Any:
        return mse(logits, labels, self.reduction, "nn.MSELoss")


class L1Loss(LossBase):
    """|logits - labels|, reduced."""

    def construct(self, logits: Any, labels: Any) -> Any:
        return l1(logits, labels, self.reduction, "nn.L1Loss")


class SmoothL1Loss(LossBase):
    """``SmoothL1Loss(beta=1.0, reduction='none')``: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta."""

    def __init__(self, beta: float = 1.0, reduction: str = "none") -> None:
        super().__init__(reduction)
        if not beta > 0:
            raise ValueError(f"nn.SmoothL1Loss: beta must be positive, got {beta!r}")
        self.beta = float(beta)

    def construct(self, logits: Any, labels: Any) -> Any:
        _check_same("nn.SmoothL1Loss", logits, labels)
        d = abs(logits - labels)
        quad = apply_op("Square", d) * (0.5 / self.beta)
        return self.get_loss(apply_op("Select", d < self.beta, quad, d - 0.5 * self.beta))


class BCELoss(LossBase):
    """``BCELoss(weight=None, reduction='mean')``: -weight (y log p + (1 - y) log(1 - p)) for probabilities p."""

    def __init__(self, weight: Any = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = weight

    def construct(self, logits: Any, labels: Any) -> Any:
        _check_same("nn.BCELoss", logits, labels)
        loss = -(labels * apply_op("Log", logits) + (1 - labels) * apply_op("Log", 1 - logits))
        return self.get_loss(loss, 1.0 if self.weight is None else self.weight)


class BCEWithLogitsLoss(LossBase):
    """``BCEWithLogitsLoss(reduction='mean', weight=None, pos_weight=None)``: weight (pos_weight y softplus(-x) +
    (1 - y) softplus(x)), the stable form of BCE on sigmoid(x)."""

    def __init__(self, reduction: str = "mean", weight: Any = None, pos_weight: Any = None) -> None:
        super().__init__(reduction)
        self.weight, self.pos_weight = weight, pos_weight

    def construct(self, logits: Any, labels: Any) -> Any:
        return bce_with_logits(logits, labels, self.reduction, self.weight, self.pos_weight, "nn.BCEWithLogitsLoss")


def bce_with_logits(logits: Any, labels: Any, reduction: str = "mean", weight: Any = None, pos_weight: Any = None,
                    name: str = "ops.binary_cross_entropy_with_logits") -> Any:
    """weight (pos_weight y softplus(-x) + (1 - y) softplus(x)), reduced: ``nn.BCEWithLogitsLoss`` and
    ``ops.binary_cross_entropy_with_logits``."""
    _check_reduction(name, reduction)
    _check_same(name, logits, labels)
    pos = labels if pos_weight is None else labels * pos_weight
    loss = pos * apply_op("Softplus", -logits) + (1 - labels) * apply_op("Softplus", logits)
    return reduced(loss, reduction, 1.0 if weight is None else weight)


def _one_hot(labels: Any, classes: int, like: Any) -> Any:
    """(N, C) one-hot rows of ``like``'s dtype for integer labels (N,), made with Equal against 0..C-1."""
    ids = Tensor(np.arange(classes, dtype=labels._array_dtype()))
    return apply_op("Cast", apply_op("Equal", labels.reshape(-1, 1), ids), dtype=like._array_dtype())


def _class_check(name: str, logits: Any, labels: Any) -> None:
    if logits.ndim != 2:
        raise ValueError(f"{name}: logits must be (N, C), got shape {logits.shape}")
    if labels._array_dtype().kind in "iu":
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"{name}: class-index labels must have shape {logits.shape[:1]}, got {labels.shape}")
    elif labels.shape != logits.shape:
        raise ValueError(f"{name}: probability labels must have the logits' shape {logits.shape}, got {labels.shape}")


def _nll(logp: Any, labels: Any, weight: Any, ignore_index: int, reduction: str, smoothing: float) -> Any:
    """Weighted negative log-likelihood of class ids, with label smoothing over all C classes; 'mean' divides by the
    sum of the weights of the labels not ignored."""
    classes = logp.shape[1]
    hot = _one_hot(labels, classes, logp) * apply_op("Cast", labels != ignore_index, dtype=logp._array_dtype()).reshape(-1, 1)
    w_hot = hot if weight is None else hot * weight
    sample_w = apply_op("ReduceSum", w_hot, axis=(1,), keep_dims=False)
    loss = -apply_op("ReduceSum", w_hot * logp, axis=(1,), keep_dims=False)
    if smoothing:
        w_all = logp if weight is None else logp * weight
        valid = apply_op("ReduceSum", hot, axis=(1,), keep_dims=False)
        smooth = -apply_op("ReduceSum", w_all, axis=(1,), keep_dims=False) * valid / classes
        loss = loss * (1 - smoothing) + smooth * smoothing
    if reduction == "mean":
        return apply_op("ReduceSum", loss, axis=(), keep_dims=False) / apply_op("ReduceSum", sample_w, axis=(), keep_dims=False)
    return reduced(loss, reduction)


def cross_entropy(logits: Any, labels: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0, name: str = "ops.cross_entropy") -> Any:
    """-sum(labels * log_softmax(logits)) per row for class probabilities, the weighted NLL of log_softmax(logits)
    for class ids, reduced: ``nn.CrossEntropyLoss`` and ``ops.cross_entropy``."""
    _check_reduction(name, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    _class_check(name, logits, labels)
    logp = apply_op("LogSoftmax", logits, axis=1)
    if labels._array_dtype().kind in "iu":
        return _nll(logp, labels, weight, ignore_index, reduction, float(label_smoothing))
    classes = logits.shape[1]
    if label_smoothing:
        labels = labels * (1 - label_smoothing) + label_smoothing / classes
    w = labels if weight is None else labels * weight
    return reduced(-apply_op("ReduceSum", w * logp, axis=(1,), keep_dims=False), reduction)


class NLLLoss(LossBase):
    """``NLLLoss(weight=None, ignore_index=-100, reduction='mean')`` on (N, C) log-probabilities and class ids (N,):
    -weight[y] logp[y]; 'mean' divides by the sum of the weights of the labels not ignored."""

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight, self.ignore_index = weight, ignore_index

    def construct(self, logits: Any, labels: Any) -> Any:
        _class_check("nn.NLLLoss", logits, labels)
        if labels._array_dtype().kind not in "iu":
            raise TypeError(f"nn.NLLLoss: labels must be integer class ids, got {labels.dtype}")
        return _nll(logits, labels, self.weight, self.ignore_index, self.reduction, 0.0)


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
        return cross_entropy(logits, labels, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
                             "nn.CrossEntropyLoss")


class SoftmaxCrossEntropyWithLogits(LossBase):
    """``SoftmaxCrossEntropyWithLogits(sparse=False, reduction='none')``: -sum(labels * log_softmax(logits)) per row;
    with ``sparse`` the labels are class ids (N,)."""

    def __init__(self, sparse: bool = False, reduction: str = "none") -> None:
        super().__init__(reduction)
        self.sparse = bool(sparse)

    def construct(self, logits: Any, labels: Any) -> Any:
        return softmax_cross_entropy(logits, labels, self.sparse, self.reduction)


def softmax_cross_entropy(logits: Any, labels: Any, sparse: bool, reduction: str,
                          name: str = "nn.SoftmaxCrossEntropyWithLogits") -> Any:
    """-sum(labels * log_softmax(logits)) per row (labels class ids with ``sparse``), reduced:
    ``nn.SoftmaxCrossEntropyWithLogits`` and ``ops.SparseSoftmaxCrossEntropyWithLogits``."""
    if sparse:
        if labels._array_dtype().kind not in "iu" or labels.shape != logits.shape[:1]:
            raise ValueError(f"{name}(sparse=True): labels must be integer ids of shape "
                             f"{logits.shape[:1]}, got {labels.dtype} {labels.shape}")
        labels = _one_hot(labels, logits.shape[1], logits)
    loss, _ = apply_op("SoftmaxCrossEntropyWithLogits", logits, labels)
    return reduced(loss, reduction)
