"""``gradserve.train``: MindSpore 2.x's ``mindspore.train`` names that need no dataset pipeline: the metrics
(``Accuracy``, ``Loss``, top-k accuracy, ``Metric`` and ``rearrange_inputs`` for custom ones) and the checkpoint
functions. ``Model`` and its callbacks, which drive a ``mindspore.dataset`` pipeline, are not provided."""
from gradserve.client.checkpoint import load_checkpoint, load_param_into_net, save_checkpoint
from gradserve.client.metrics import (
    Accuracy,
    Loss,
    Metric,
    Top1CategoricalAccuracy,
    Top5CategoricalAccuracy,
    TopKCategoricalAccuracy,
    rearrange_inputs,
)

__all__ = [
    "Accuracy", "Loss", "Metric", "Top1CategoricalAccuracy", "Top5CategoricalAccuracy", "TopKCategoricalAccuracy",
    "load_checkpoint", "load_param_into_net", "rearrange_inputs", "save_checkpoint",
]
