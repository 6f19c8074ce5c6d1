"""gradserve.nn's layers, losses, optimizers and training cells: plain Cells and NumPy code built on ops."""
from .activation import GELU, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh, get_activation
from .conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, Conv2dTranspose, MaxPool2d
from .dynamic_lr import (
    cosine_decay_lr,
    exponential_decay_lr,
    inverse_decay_lr,
    natural_exp_decay_lr,
    piecewise_constant_lr,
    polynomial_decay_lr,
    warmup_lr,
)
from .initializer import set_seed
from .layers import CellList, Dense, Dropout, Embedding, Flatten, LayerNorm, SequentialCell
from .learning_rate_schedule import (
    CosineDecayLR,
    ExponentialDecayLR,
    InverseDecayLR,
    LearningRateSchedule,
    NaturalExpDecayLR,
    PolynomialDecayLR,
    WarmUpLR,
)
from .loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    L1Loss,
    LossBase,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
    SoftmaxCrossEntropyWithLogits,
)
from .normalization import BatchNorm1d, BatchNorm2d
from .optim import SGD, Adam, AdamWeightDecay, Momentum, Optimizer
from .padding import (
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    Pad,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    ZeroPad2d,
)
from .transformer import MultiheadAttention, TransformerEncoderLayer
from .wrap import ForwardValueAndGrad, TrainOneStepCell, WithEvalCell, WithLossCell, clip_by_global_norm

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Conv2dTranspose", "MaxPool2d",
    "Adam", "AdamWeightDecay", "ForwardValueAndGrad", "Momentum", "Optimizer", "SGD", "TrainOneStepCell", "WithEvalCell", "WithLossCell",
    "clip_by_global_norm", "CosineDecayLR", "ExponentialDecayLR", "InverseDecayLR", "LearningRateSchedule",
    "NaturalExpDecayLR", "PolynomialDecayLR", "WarmUpLR", "cosine_decay_lr", "exponential_decay_lr", "inverse_decay_lr",
    "natural_exp_decay_lr", "piecewise_constant_lr", "polynomial_decay_lr", "warmup_lr",
    "BCELoss", "BCEWithLogitsLoss", "CellList", "CrossEntropyLoss", "Dense", "Dropout", "Embedding", "Flatten", "GELU", "Identity", "L1Loss", "LeakyReLU",
    "LayerNorm", "LogSoftmax", "LossBase", "MSELoss", "MultiheadAttention", "NLLLoss", "ReLU", "SequentialCell", "SiLU", "Sigmoid",
    "SmoothL1Loss", "Softmax", "SoftmaxCrossEntropyWithLogits", "Tanh", "TransformerEncoderLayer", "get_activation", "set_seed",
    "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "Pad", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "ZeroPad2d",
]
