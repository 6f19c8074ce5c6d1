"""MindSpore's evaluation metrics (``mindspore.train.Accuracy``, ``Loss``, ``TopKCategoricalAccuracy``...): plain NumPy
accumulators over predictions and labels, updated batch by batch; ``clear``, ``update``, ``eval`` as MindSpore's."""
from __future__ import annotations

import functools
from abc import ABCMeta, abstractmethod
from typing import Any, Callable

import numpy as np

from .tensor import Tensor


def rearrange_inputs(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a metric's ``update`` so that ``set_indexes([i, j])`` picks and orders its inputs."""

    @functools.wraps(func)
    def wrapper(self: Metric, *inputs: Any) -> Any:
        indexes = self.indexes
        return func(self, *(inputs if not indexes else [inputs[i] for i in indexes]))

    return wrapper


class Metric(metaclass=ABCMeta):
    """Base of the metrics: ``clear()``, ``update(*inputs)`` per batch, ``eval()``; calling one does all three.
    Abstract, as MindSpore's: a subclass defines all three methods."""

    def __init__(self) -> None:
        self._indexes: list[int] | None = None

    @staticmethod
    def _convert_data(data: Any) -> np.ndarray:
        """A Tensor, list or NumPy array as a NumPy array."""
        if isinstance(data, Tensor):
            return data.asnumpy()
        if isinstance(data, (list, np.ndarray)):
            return np.asarray(data)
        raise TypeError(f"Metric: inputs must be Tensors, lists or NumPy arrays, got {type(data).__name__}")

    @property
    def indexes(self) -> list[int] | None:
        """Which of ``update``'s inputs it reads, in order (None: all, as given)."""
        return getattr(self, "_indexes", None)

    def set_indexes(self, indexes: list[int]) -> Metric:
        """Read ``update``'s inputs ``indexes`` (in that order) instead of all of them; returns the metric."""
        if not isinstance(indexes, list) or not all(isinstance(i, int) for i in indexes):
            raise ValueError(f"set_indexes: indexes must be a list of ints, got {indexes!r}")
        self._indexes = indexes
        return self

    def __call__(self, *inputs: Any) -> Any:
        self.clear()
        self.update(*inputs)
        return self.eval()

    @abstractmethod
    def clear(self) -> None:
        """Forget what ``update`` accumulated."""

    @abstractmethod
    def update(self, *inputs: Any) -> None:
        """Accumulate one batch."""

    @abstractmethod
    def eval(self) -> Any:
        """The metric over the batches since ``clear``."""

    def _predictions_and_labels(self, name: str, inputs: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``update(y_pred, y)``'s two inputs as NumPy arrays, or a ValueError naming ``name``."""
        if len(inputs) != 2:
            raise ValueError(f"{name} needs 2 inputs (predictions, labels), got {len(inputs)}")
        return self._convert_data(inputs[0]), self._convert_data(inputs[1])


def _is_onehot(y: np.ndarray) -> bool:
    """True when ``y`` holds one-hot rows along axis 1 (zeros and ones, one 1 each)."""
    return bool(y.ndim > 1 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))


def _class_labels(y_pred: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """``y`` as class indices shaped like ``y_pred`` without its class axis (one-hot rows become their index)."""
    if y_pred.ndim == y.ndim and _is_onehot(y):
        y = y.argmax(axis=1)
    if y_pred.ndim != y.ndim + 1 or y.shape != (y_pred.shape[0],) + y_pred.shape[2:]:
        raise ValueError(f"{name}: predictions of shape {y_pred.shape} need labels of shape "
                         f"{(y_pred.shape[0],) + y_pred.shape[2:]} (or one-hot {y_pred.shape}), got {y.shape}")
    return y


class Accuracy(Metric):
    """``Accuracy(eval_type='classification')``: the share of samples whose largest prediction is their label
    (labels as indices or one-hot); 'multilabel': the share whose 0/1 predictions all equal their labels."""

    def __init__(self, eval_type: str = "classification") -> None:
        super().__init__()
        if eval_type not in ("classification", "multilabel"):
            raise TypeError(f"Accuracy: eval_type must be 'classification' or 'multilabel', got {eval_type!r}")
        self._type = eval_type
        self.clear()

    def clear(self) -> None:
        self._correct_num = 0
        self._total_num = 0
        self._class_num = 0

    @rearrange_inputs
    def update(self, *inputs: Any) -> None:
        """``update(y_pred, y)``: y_pred (N, C, ...) scores; y (N, ...) class indices or one-hot (N, C, ...)."""
        y_pred, y = self._predictions_and_labels("Accuracy.update", inputs)
        if self._type == "classification":
            y = _class_labels(y_pred, y, "Accuracy.update")
        elif y_pred.shape != y.shape or not np.all(np.isin(y_pred, (0, 1))) or not np.all(np.isin(y, (0, 1))):
            raise ValueError(f"Accuracy.update ('multilabel'): predictions and labels must be 0/1 arrays of one shape, "
                             f"got {y_pred.shape} and {y.shape}")
        if self._class_num and y_pred.shape[1] != self._class_num:
            raise ValueError(f"Accuracy.update: {y_pred.shape[1]} classes now, {self._class_num} before")
        self._class_num = y_pred.shape[1]
        if self._type == "classification":
            right = (y_pred.argmax(axis=1) == y).reshape(-1)
        else:
            right = np.moveaxis(y_pred == y, 1, -1).reshape(-1, self._class_num).all(axis=1)
        self._correct_num += int(right.sum())
        self._total_num += right.shape[0]

    def eval(self) -> float:
        """The accuracy (a float64); RuntimeError before any sample."""
        if self._total_num == 0:
            raise RuntimeError("Accuracy.eval: no samples (call update first)")
        return float(np.float64(self._correct_num) / self._total_num)


class Loss(Metric):
    """``Loss()``: the mean over batches of each batch's loss (a scalar, or the mean of a 1-d loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.clear()

    def clear(self) -> None:
        self._sum_loss = 0.0
        self._total_num = 0

    def update(self, *inputs: Any) -> None:
        """``update(loss)``: one batch's loss, 0-d or 1-d."""
        if len(inputs) != 1:
            raise ValueError(f"Loss.update needs 1 input (the loss), got {len(inputs)}")
        loss = self._convert_data(inputs[0])
        if loss.ndim > 1:
            raise ValueError(f"Loss.update: the loss must be 0-d or 1-d, got shape {loss.shape}")
        self._sum_loss += float(loss.reshape(-1).mean())
        self._total_num += 1

    def eval(self) -> float:
        """The mean loss; RuntimeError before any batch."""
        if self._total_num == 0:
            raise RuntimeError("Loss.eval: no batches (call update first)")
        return self._sum_loss / self._total_num


class TopKCategoricalAccuracy(Metric):
    """``TopKCategoricalAccuracy(k)``: the share of samples whose label is among their ``k`` largest predictions."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool):
            raise TypeError(f"TopKCategoricalAccuracy: k must be an int, got {type(k).__name__} {k!r}")
        if k < 1:
            raise ValueError(f"TopKCategoricalAccuracy: k must be a positive int, got {k!r}")
        self.k = k
        self.clear()

    def clear(self) -> None:
        self._correct_num = 0
        self._samples_num = 0

    @rearrange_inputs
    def update(self, *inputs: Any) -> None:
        """``update(y_pred, y)``: y_pred (N, C) scores; y (N,) class indices or one-hot (N, C)."""
        y_pred, y = self._predictions_and_labels("TopKCategoricalAccuracy.update", inputs)
        y = _class_labels(y_pred, y, "TopKCategoricalAccuracy.update")
        top = np.argsort(-y_pred, axis=1, kind="stable")[:, :self.k]
        self._correct_num += int((top == y.reshape(-1, 1)).any(axis=1).sum())
        self._samples_num += y_pred.shape[0]

    def eval(self) -> float:
        """The top-k accuracy; RuntimeError before any sample."""
        if self._samples_num == 0:
            raise RuntimeError("TopKCategoricalAccuracy.eval: no samples (call update first)")
        return self._correct_num / self._samples_num


class Top1CategoricalAccuracy(TopKCategoricalAccuracy):
    """``TopKCategoricalAccuracy(1)``."""

    def __init__(self) -> None:
        super().__init__(1)


class Top5CategoricalAccuracy(TopKCategoricalAccuracy):
    """``TopKCategoricalAccuracy(5)``."""

    def __init__(self) -> None:
        super().__init__(5)
