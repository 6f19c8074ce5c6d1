"""``import gradserve.nn as nn``: Cell, MindSpore's layers, losses, optimizers, learning-rate lists and training cells."""
from gradserve.client.cell import Cell
from gradserve.client.nn import (
    GELU, SGD, Adam, AdamWeightDecay, BCELoss, BCEWithLogitsLoss, CellList, CrossEntropyLoss, Dense, Embedding, Flatten,
    L1Loss, LayerNorm, LogSoftmax, LossBase, Momentum, MSELoss, NLLLoss, Optimizer, ReLU, SequentialCell, Sigmoid, SiLU,
    SmoothL1Loss, Softmax, SoftmaxCrossEntropyWithLogits, Tanh, TrainOneStepCell, WithEvalCell, WithLossCell,
    cosine_decay_lr, exponential_decay_lr, get_activation, piecewise_constant_lr,
)

__all__ = [
    "Adam", "AdamWeightDecay", "BCELoss", "BCEWithLogitsLoss", "Cell", "CellList", "CrossEntropyLoss", "Dense",
    "Embedding", "Flatten", "GELU", "L1Loss", "LayerNorm", "LogSoftmax", "LossBase", "MSELoss", "Momentum", "NLLLoss",
    "Optimizer", "ReLU", "SGD", "SequentialCell", "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax",
    "SoftmaxCrossEntropyWithLogits", "Tanh", "TrainOneStepCell", "WithEvalCell", "WithLossCell", "cosine_decay_lr",
    "exponential_decay_lr", "get_activation", "piecewise_constant_lr",
]
