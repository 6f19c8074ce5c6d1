"""gradserve.train's metrics (MindSpore's mindspore.train.Accuracy, Loss, TopKCategoricalAccuracy): MindSpore's
documented examples, and random batches accumulated over several updates against PyTorch's argmax and topk."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import gradserve as ms
from gradserve import Tensor
from gradserve.train import Accuracy, Loss, Metric, Top1CategoricalAccuracy, TopKCategoricalAccuracy, rearrange_inputs


def test_mindspore_documented_examples() -> None:
    x = Tensor(np.array([[0.2, 0.5], [0.3, 0.1], [0.9, 0.6]]), ms.float32)
    y = Tensor(np.array([1, 0, 1]), ms.float32)
    metric = Accuracy('classification')
    metric.clear()
    metric.update(x, y)
    assert metric.eval() == 0.6666666666666666
    x = Tensor(np.array([[0.2, 0.5, 0.3, 0.6, 0.2], [0.1, 0.35, 0.5, 0.2, 0.], [0.9, 0.6, 0.2, 0.01, 0.3]]), ms.float32)
    topk = TopKCategoricalAccuracy(3)
    topk.update(x, Tensor(np.array([2, 0, 1]), ms.float32))
    assert topk.eval() == 0.6666666666666666
    loss = Loss()
    loss.update(Tensor(np.array(0.2), ms.float32))
    assert loss.eval() == 0.20000000298023224
    assert ms.train.Accuracy is Accuracy


def test_accumulated_over_batches_like_torch() -> None:
    rng = np.random.default_rng(4)
    acc, top1, top3, loss = Accuracy(), Top1CategoricalAccuracy(), TopKCategoricalAccuracy(3), Loss()
    right = right3 = total = 0
    losses = []
    for n in (5, 7, 4):
        scores = rng.standard_normal((n, 6)).astype(np.float32)
        labels = rng.integers(0, 6, n)
        onehot = np.eye(6, dtype=np.float32)[labels]
        acc.update(Tensor(scores), Tensor(labels.astype(np.int32)))
        top1.update(scores, onehot)  # NumPy arrays and one-hot labels are taken too
        top3.update(Tensor(scores), list(labels))
        loss.update(Tensor(scores[:, 0]))
        t = torch.tensor(scores)
        right += int((t.argmax(1) == torch.tensor(labels)).sum())
        right3 += int((t.topk(3, 1).indices == torch.tensor(labels)[:, None]).any(1).sum())
        total += n
        losses.append(float(scores[:, 0].mean()))
    assert acc.eval() == right / total == top1.eval()
    assert top3.eval() == right3 / total
    assert loss.eval() == pytest.approx(np.mean(losses), rel=1e-12)
    acc.clear()
    with pytest.raises(RuntimeError, match="no samples"):
        acc.eval()


def test_multilabel_indexes_and_errors() -> None:
    pred = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]])
    true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    assert Accuracy('multilabel')(pred, true) == 2 / 3

    class MyMAE(Metric):  # MindSpore's custom-metric example, with update decorated so that set_indexes applies
        def __init__(self) -> None:
            super().__init__()
            self.clear()

        def clear(self) -> None:
            self._abs_error_sum, self._samples_num = 0.0, 0

        @rearrange_inputs
        def update(self, *inputs: Any) -> None:
            y_pred, y = inputs[0].asnumpy(), inputs[1].asnumpy()
            self._abs_error_sum += np.abs(y - y_pred).sum()
            self._samples_num += y.shape[0]

        def eval(self) -> float:
            return self._abs_error_sum / self._samples_num

    x = Tensor(np.array([[0.1, 0.2, 0.6, 0.9], [0.1, 0.2, 0.6, 0.9]]), ms.float32)
    y = Tensor(np.array([[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]]), ms.float32)
    y2 = Tensor(np.array([[0.1, 0.25, 0.7, 0.9], [0.1, 0.25, 0.7, 0.9]]), ms.float32)
    metric = MyMAE().set_indexes([0, 2])
    metric.update(x, y, y2)
    # rearrange_inputs makes indexes [0, 2] pick x and y2: (0 + 0.05 + 0.1 + 0) * 2 rows / 2 samples
    assert metric.eval() == pytest.approx(0.15, rel=1e-6) and metric.indexes == [0, 2]
    with pytest.raises(ValueError, match=r"predictions of shape \(3, 2\) need labels of shape \(3,\)"):
        Accuracy().update(np.zeros((3, 2)), np.zeros((2,)))
    with pytest.raises(ValueError, match="2 classes now, 3 before"):
        a = Accuracy()
        a.update(np.zeros((1, 3)), np.zeros(1))
        a.update(np.zeros((1, 2)), np.zeros(1))
    with pytest.raises(TypeError, match="eval_type must be 'classification' or 'multilabel'"):
        Accuracy("binary")
    with pytest.raises(ValueError, match="must be 0/1 arrays"):
        Accuracy("multilabel").update(np.full((2, 2), 0.5), np.ones((2, 2)))


def test_metric_is_abstract_and_k_is_type_checked_as_in_mindspore() -> None:
    """MindSpore's Metric has ABCMeta with abstract clear/update/eval; TopKCategoricalAccuracy checks k's type
    (TypeError) before its value (ValueError)."""
    with pytest.raises(TypeError, match="abstract"):
        Metric()  # type: ignore[abstract]

    class OnlyClear(Metric):
        def clear(self) -> None:
            pass

    with pytest.raises(TypeError, match="abstract"):
        OnlyClear()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="k must be an int, got float 2.0"):
        TopKCategoricalAccuracy(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        TopKCategoricalAccuracy(0)
    with pytest.raises(ValueError, match="TopKCategoricalAccuracy.update needs 2 inputs"):
        TopKCategoricalAccuracy(2).update(Tensor(np.ones((2, 3))))
