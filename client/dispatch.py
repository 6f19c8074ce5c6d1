"""Applying one primitive to Tensors: adds a node to the graph being traced, or runs it eagerly outside a trace."""
from __future__ import annotations

from functools import reduce
from typing import Any, Sequence

import numpy as np

from gradserve.engine import get_op

from . import dtype as mstype
from . import eager
from .errors import TracingError, user_location
from .parameter import Parameter
from .tensor import Tensor
from .tracing import current_frame

_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)
_PROMOTED = ("x", "y")
"""Inputs with these names (the broadcasting binary ops and Select) are promoted to one dtype, as MindSpore does."""


def apply_op(op: str, *inputs: Any, **attrs: Any) -> Any:
    """``op[attrs](*inputs)`` on Tensors or Python numbers; one Tensor, or a tuple for multi-output ops."""
    tensors = coerce_inputs(op, inputs)
    frame = current_frame()
    if frame is None:
        for t in tensors:
            if t.is_traced:
                raise TracingError(f"{op}: a Tensor from a finished trace is used outside it -- at {user_location()}")
        outs = [Tensor._wrap(a) for a in eager.run(op, [t._array for t in tensors], attrs)]  # type: ignore[misc]
    else:
        values = [_frozen(frame.value_of(t)) if isinstance(t, Parameter) and not t.requires_grad else frame.value_of(t) for t in tensors]
        outs = [Tensor._symbolic(v, frame) for v in frame.builder.add_node(op, values, attrs)]
    return tuple(outs) if get_op(op).multi_output or len(outs) != 1 else outs[0]


def _frozen(value: Any) -> Any:
    """A ``requires_grad=False`` Parameter's value behind StopGradient: MindSpore gives it a zero gradient."""
    return value.builder.op("StopGradient", value)


def coerce_inputs(op: str, inputs: Sequence[Any]) -> list[Tensor]:
    """``inputs`` as Tensors: Python numbers take their Tensor partners' dtype, promoted inputs share one dtype."""
    opdef = get_op(op)
    names = [opdef.inputs[min(i, len(opdef.inputs) - 1)].rstrip("*") for i in range(len(inputs))]
    group = [i for i, n in enumerate(names) if n in _PROMOTED]
    for i, v in enumerate(inputs):
        if not isinstance(v, (Tensor, *_SCALARS)):
            raise TypeError(f"{op}: input {i} ({names[i]}) must be a Tensor or a Python number, got {type(v).__name__}")
    tensor_dts = [inputs[i]._array_dtype() for i in group if isinstance(inputs[i], Tensor)]
    ref = reduce(mstype.promote, tensor_dts) if tensor_dts else None
    first = next((t._array_dtype() for t in inputs if isinstance(t, Tensor)), None)
    out = [
        v if isinstance(v, Tensor) else _scalar(v, ref if i in group and ref is not None else first)
        for i, v in enumerate(inputs)
    ]
    if len(group) > 1:
        target = reduce(mstype.promote, [out[i]._array_dtype() for i in group])
        for i in group:
            if out[i]._array_dtype() != target:
                out[i] = apply_op("Cast", out[i], dtype=target)
    return out


def _scalar(v: Any, ref: np.dtype | None) -> Tensor:
    """A 0-d Tensor for a number in ``ref``'s dtype (MindSpore 2.0: a float by an int/bool -> float32, an int by a bool -> int32)."""
    if ref is None:
        return Tensor(v)
    if isinstance(v, (float, np.floating)) and ref.kind != "f":
        ref = np.dtype(np.float32)
    elif not isinstance(v, (bool, np.bool_)) and ref.kind == "b":
        ref = np.dtype(np.int32)
    return Tensor._wrap(np.asarray(v, dtype=ref))


def _is_float(v: Any) -> bool:
    """True for a Python float or a float Tensor."""
    return isinstance(v, (float, np.floating)) or (isinstance(v, Tensor) and v._array_dtype().kind == "f")


def true_divide(x: Any, y: Any) -> Any:
    """MindSpore's ``x / y`` (ops.div): true division, computed in float32 when neither operand is a float."""
    if not (_is_float(x) or _is_float(y)):
        x, y = (apply_op("Cast", v, dtype=np.dtype(np.float32)) if isinstance(v, Tensor) else v for v in (x, y))
    return apply_op("RealDiv", x, y)


def power(x: Any, y: Any) -> Any:
    """``x ** y`` in the promoted dtype; integer powers go through float64 (exact below 2**53) and are truncated back."""
    x, y = coerce_inputs("Pow", (x, y))
    dt = x._array_dtype()
    if dt.kind == "f":
        return apply_op("Pow", x, y)
    wide = np.dtype(np.float64)
    out = apply_op("Pow", apply_op("Cast", x, dtype=wide), apply_op("Cast", y, dtype=wide))
    return apply_op("Cast", out, dtype=dt)


def matmul(x: Any, y: Any) -> Any:
    """MindSpore's ``ops.matmul`` and ``@``, with NumPy's rules: two matrices are MatMul, more axes BatchMatMul with
    the batch axes broadcast, a 1-d operand a row (first) or column (second) vector whose axis is dropped again."""
    x, y = coerce_inputs("MatMul", (x, y))
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"matmul: operands must have at least one axis, got shapes {x.shape} and {y.shape}")
    if x.ndim == 1 and y.ndim == 1:
        return apply_op("ReduceSum", x * y, axis=(), keep_dims=False)
    a = apply_op("ExpandDims", x, axis=0) if x.ndim == 1 else x
    b = apply_op("ExpandDims", y, axis=-1) if y.ndim == 1 else y
    out = apply_op("MatMul" if a.ndim == 2 and b.ndim == 2 else "BatchMatMul", a, b)
    if x.ndim == 1:
        out = apply_op("Squeeze", out, axis=(out.ndim - 2,))
    return apply_op("Squeeze", out, axis=(out.ndim - 1,)) if y.ndim == 1 else out


def floor_divide(x: Any, y: Any) -> Any:
    """MindSpore's ``x // y`` (FloorDiv): floor(x / y) in the promoted dtype, with a zero gradient; integers go through
    float64 (exact below 2**53) and are cast back."""
    x, y = coerce_inputs("RealDiv", (x, y))
    dt = x._array_dtype()
    if dt.kind == "f":
        return apply_op("Floor", apply_op("RealDiv", x, y))
    wide = np.dtype(np.float64)
    out = apply_op("Floor", apply_op("RealDiv", apply_op("Cast", x, dtype=wide), apply_op("Cast", y, dtype=wide)))
    return apply_op("Cast", out, dtype=dt)


def floor_mod(x: Any, y: Any) -> Any:
    """MindSpore's ``x % y`` (FloorMod): x - floor(x / y) * y, which takes the sign of y; its gradients are 1 and
    -floor(x / y)."""
    x, y = coerce_inputs("RealDiv", (x, y))
    return x - floor_divide(x, y) * y


# Tensor's operators (the engine's shared table) run through this module; installed here, where the functions live.
Tensor._apply = staticmethod(apply_op)  # type: ignore[assignment]
Tensor._divide = staticmethod(true_divide)  # type: ignore[assignment]
Tensor._power = staticmethod(power)  # type: ignore[assignment]
Tensor._floor_divide = staticmethod(floor_divide)  # type: ignore[assignment]
Tensor._floor_mod = staticmethod(floor_mod)  # type: ignore[assignment]
Tensor._matmul = staticmethod(matmul)  # type: ignore[assignment]
