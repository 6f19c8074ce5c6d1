"""``gradserve.common``: MindSpore's ``mindspore.common`` names (``initializer``, ``dtype``, ``tensor``, ``parameter``,
and ``set_seed``, ``Tensor``, ``Parameter``, ``ParameterTuple`` themselves)."""
from gradserve.client.nn.initializer import set_seed
from gradserve.client.parameter import Parameter, ParameterTuple
from gradserve.client.tensor import Tensor

from . import dtype, initializer, parameter, tensor

__all__ = ["Parameter", "ParameterTuple", "Tensor", "dtype", "initializer", "parameter", "set_seed", "tensor"]
