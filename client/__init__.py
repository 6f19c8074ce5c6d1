"""gradserve.client: the MindSpore-style SDK (Tensor, Parameter, nn.Cell, ops, GradOperation) and its backends."""
from . import dispatch, indexing  # noqa: F401  (install Tensor's operators (dispatch) and indexing before any use)
from .tensor import Tensor

from . import dtype
from .backend import Backend, GradFlags
from .cell import Cell
from . import context
from .context import get_backend, get_context, register_backend_factory, set_context
from .embedded import EmbeddedBackend
from .errors import TracingError
from .grad import GradFunction, GradOperation
from .parameter import Parameter, ParameterTuple
from .primitives import Primitive
from .runner import trace_count

__all__ = [
    "Backend", "Cell", "EmbeddedBackend", "GradFlags", "GradFunction", "GradOperation", "Parameter",
    "ParameterTuple", "Primitive", "Tensor", "TracingError", "dtype", "get_backend", "get_context",
    "context", "register_backend_factory", "set_context", "trace_count",
]
