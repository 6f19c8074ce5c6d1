"""``import gradserve.nn as nn``: Cell, MindSpore's layers, losses, optimizers, learning-rate lists and training cells."""
from gradserve.client.cell import Cell
from gradserve.client.nn import (
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Conv2dTranspose, MaxPool2d,
    GELU, SGD, Adam, AdamWeightDecay, BCELoss, BCEWithLogitsLoss, CellList, CrossEntropyLoss, Dense, Dropout, Embedding, Flatten,
    L1Loss, LayerNorm, LogSoftmax, LossBase, Momentum, MSELoss, MultiheadAttention, NLLLoss, Optimizer, ReLU, SequentialCell, Sigmoid, SiLU,
    SmoothL1Loss, Softmax, SoftmaxCrossEntropyWithLogits, Tanh, TrainOneStepCell, TransformerEncoderLayer, WithEvalCell, WithLossCell,
    cosine_decay_lr, exponential_decay_lr, get_activation, piecewise_constant_lr,
)

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Conv2dTranspose", "MaxPool2d",
    "Adam", "AdamWeightDecay", "BCELoss", "BCEWithLogitsLoss", "Cell", "CellList", "CrossEntropyLoss", "Dense",
    "Dropout", "Embedding", "Flatten", "GELU", "L1Loss", "LayerNorm", "LogSoftmax", "LossBase", "MSELoss", "Momentum", "MultiheadAttention", "NLLLoss",
    "Optimizer", "ReLU", "SGD", "SequentialCell", "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax",
    "SoftmaxCrossEntropyWithLogits", "Tanh", "TrainOneStepCell", "TransformerEncoderLayer", "WithEvalCell", "WithLossCell", "cosine_decay_lr",
    "exponential_decay_lr", "get_activation", "piecewise_constant_lr",
]
