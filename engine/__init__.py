"""gradserve.engine: a NumPy autodiff engine whose gradients are graphs in the same IR.

Build graphs with :class:`GraphBuilder`, transform them with :func:`grad_operation`, :func:`grad`, :func:`vjp`, :func:`jvp` or :func:`jacobian`
(apply again for higher orders), and run them with :func:`compile_graph`.
"""
from . import ops as _ops  # noqa: F401  (registers the op catalog)
from .autodiff import grad, grad_operation, lower, vjp
from .builder import GraphBuilder, signature_copy
from .compiler import Program, compile_graph
from .dtypes import DTYPES, as_dtype
from .errors import DTypeError, EngineError, GraphError, InputError, Interrupted, NotDifferentiableError, ShapeError
from .forward import jacobian, jvp
from .ir import Graph, Node, Param, TensorType, Value, flatten, unflatten
from .optable import ATTR_KINDS, OPS, Attr, OpDef, get_op

__all__ = [
    "ATTR_KINDS", "Attr", "DTYPES", "DTypeError", "EngineError", "Graph", "GraphBuilder", "GraphError",
    "InputError", "Interrupted", "Node", "NotDifferentiableError", "OPS", "OpDef", "Param", "Program", "ShapeError",
    "TensorType", "Value", "as_dtype", "compile_graph", "flatten", "get_op", "grad", "grad_operation",
    "jacobian", "jvp", "lower", "signature_copy", "unflatten", "vjp",
]
