"""``gradserve.common.initializer``: MindSpore's weight initializers."""
from gradserve.client.nn.initializer import (
    Constant,
    HeNormal,
    HeUniform,
    Initializer,
    Normal,
    One,
    TruncatedNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zero,
    calculate_gain,
    initializer,
)

__all__ = [
    "Constant", "HeNormal", "HeUniform", "Initializer", "Normal", "One", "TruncatedNormal", "Uniform", "XavierNormal",
    "XavierUniform", "Zero", "calculate_gain", "initializer",
]
