"""gradserve.client: the MindSpore-style SDK (Tensor, Parameter, nn.Cell, ops, GradOperation) and its backends."""
from . import (  # noqa: F401  (install Tensor's operators (dispatch) and indexing before any use; parallel registers the batch splitter)
    context,
    dispatch,
    dtype,
    indexing,
    parallel,
)
from .backend import Backend, GradFlags
from .backends import get_backend, register_backend_factory
from .cell import Cell
from .context import GRAPH_MODE, PYNATIVE_MODE, get_context, set_context
from .custom import Function, FunctionCtx, custom_vjp
from .embedded import EmbeddedBackend
from .errors import TracingError
from .grad import GradFunction, GradOperation
from .jit import jit, ms_function
from .parameter import Parameter, ParameterTuple
from .primitives import Primitive
from .runner import trace_count
from .tensor import Tensor

__all__ = [
    "Backend", "Cell", "EmbeddedBackend", "Function", "FunctionCtx", "GRAPH_MODE", "GradFlags", "GradFunction",
    "GradOperation", "PYNATIVE_MODE", "Parameter", "ParameterTuple", "Primitive", "Tensor", "TracingError",
    "custom_vjp", "dtype", "get_backend", "get_context", "context", "jit", "ms_function", "register_backend_factory",
    "set_context", "trace_count",
]
