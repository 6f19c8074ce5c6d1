"""gradserve: MindSpore-style networks whose gradients are computed by the gradserve engine or server.

``import gradserve as gs; from gradserve import nn, ops, Tensor, Parameter, ParameterTuple, dtype``
mirrors ``mindspore``'s names.
"""
from importlib.metadata import version

__version__ = version("gradserve")
"""The installed distribution's version (pyproject.toml is its one source); set before the imports below use it."""

from . import dtype, nn, ops
from .client import (
    GRAPH_MODE, PYNATIVE_MODE, Function, Parameter, ParameterTuple, Tensor, TracingError, context, custom_vjp, get_context,
    jit, ms_function, set_context,
)
from .client.dtype import (
    bool_, byte, double, float16, float32, float64, half, int8, int16, int32, int64, intc, intp, short, single,
    ubyte, uint8,
)

_Function = Function
"""MindSpore 2.x exposes its PyNative custom function class as ``mindspore._Function``."""

__all__ = [
    "Function", "GRAPH_MODE", "PYNATIVE_MODE", "context", "custom_vjp", "jit", "ms_function",
    "Parameter", "ParameterTuple", "Tensor", "TracingError", "bool_", "byte", "double", "dtype", "float16",
    "float32", "float64", "get_context", "half", "int8", "int16", "int32", "int64", "intc", "intp", "nn", "ops",
    "set_context", "short", "single", "ubyte", "uint8",
]
