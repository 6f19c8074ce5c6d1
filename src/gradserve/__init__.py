"""gradserve: MindSpore-style networks whose gradients are computed by the gradserve engine or server.

``import gradserve as gs; from gradserve import nn, ops, Tensor, Parameter, ParameterTuple, dtype``
mirrors ``mindspore``'s names.
"""
from importlib.metadata import version

__version__ = version("gradserve")
"""The installed distribution's version (pyproject.toml is its one source); set before the imports below use it."""

from . import common, dtype, nn, ops, parallel, train
from .client import (
    GRAPH_MODE,
    PYNATIVE_MODE,
    Function,
    Parameter,
    ParameterTuple,
    Tensor,
    TracingError,
    context,
    custom_vjp,
    get_context,
    jit,
    ms_function,
    set_context,
)
from .client import dtype as _dtypes
from .client.checkpoint import load_checkpoint, load_param_into_net, save_checkpoint
from .client.dtype import *  # noqa: F403  (MindSpore's dtype names, listed once in that module's __all__)
from .client.grad import grad, hessian, jacfwd, jacrev, jvp, value_and_grad, vjp
from .client.nn.initializer import get_seed, set_seed

_Function = Function
"""MindSpore 2.x exposes its PyNative custom function class as ``mindspore._Function``."""

__all__ = [
    "Function", "GRAPH_MODE", "PYNATIVE_MODE", "Parameter", "ParameterTuple", "Tensor", "TracingError", "common", "context",
    "custom_vjp", "dtype", "get_context", "get_seed", "grad", "hessian", "jacfwd", "jacrev", "jit", "jvp", "load_checkpoint",
    "load_param_into_net", "ms_function", "nn", "ops", "parallel", "save_checkpoint", "set_context", "set_seed", "train", "value_and_grad",
    "vjp",
]
__all__ += _dtypes.__all__
