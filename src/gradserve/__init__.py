"""gradserve: MindSpore-style networks whose gradients are computed by the gradserve engine or server.

``import gradserve as gs; from gradserve import nn, ops, Tensor, Parameter, ParameterTuple, dtype``
mirrors ``mindspore``'s names.
"""
from importlib.metadata import version

__version__ = version("gradserve")
"""The installed distribution's version (pyproject.toml is its one source); set before the imports below use it."""

from . import dtype, nn, ops
from .client import Parameter, ParameterTuple, Tensor, TracingError, get_context, set_context
from .client.grad import grad, hessian, jacfwd, jacrev, jvp, value_and_grad, vjp
from .client.dtype import (
    bool_, byte, double, float16, float32, float64, half, int8, int16, int32, int64, intc, intp, short, single,
    ubyte, uint8,
)

__all__ = [
    "Parameter", "ParameterTuple", "Tensor", "TracingError", "bool_", "byte", "double", "dtype", "float16",
    "float32", "float64", "get_context", "grad", "half", "hessian", "int8", "int16", "int32", "int64", "intc", "intp",
    "jacfwd", "jacrev", "jvp", "nn", "ops",
    "set_context", "short", "single", "ubyte", "uint8", "value_and_grad", "vjp",
]
