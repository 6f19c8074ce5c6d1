"""Tensor: a concrete NumPy-backed value, or (inside a trace) a symbolic value of the graph being built."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import dtype as mstype
from .errors import TracingError, user_location

if TYPE_CHECKING:
    from ..engine import Value
    from .tracing import TraceFrame


def _array_from(data: Any, dtype: Any) -> np.ndarray:
    """A fresh read-only array for ``data``; Python floats default to float32 and ints to int64 (MindSpore)."""
    if isinstance(data, Tensor):
        data = data.asnumpy()
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        arr = np.array(data)
    elif isinstance(data, (bool, int, float, list, tuple)):
        arr = np.array(data)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind == "i":
            arr = arr.astype(np.int64)
    else:
        raise TypeError(f"Tensor data must be a number, list, tuple, NumPy array or Tensor, got {type(data).__name__}")
    arr = arr.astype(mstype.to_numpy(arr.dtype if dtype is None else dtype), copy=False)
    arr.setflags(write=False)
    return arr


class Tensor:
    """MindSpore's Tensor: ``Tensor(data, dtype=None)`` from a number, (nested) list or NumPy array."""

    __array_ufunc__ = None  # NumPy defers to Tensor's reflected operators (np.float32(2) * t is a Tensor)

    def __init__(self, input_data: Any = None, dtype: Any = None) -> None:
        if input_data is None:
            raise TypeError("Tensor needs input_data (a number, list, tuple, NumPy array or Tensor)")
        self._array: np.ndarray | None = _array_from(input_data, dtype)
        self._value: Value | None = None
        self._frame: TraceFrame | None = None

    @classmethod
    def _wrap(cls, array: np.ndarray) -> "Tensor":
        """A concrete Tensor around ``array`` (made read-only, not copied)."""
        t = cls.__new__(cls)
        array.setflags(write=False)
        t._array, t._value, t._frame = array, None, None
        return t

    @classmethod
    def _symbolic(cls, value: "Value", frame: "TraceFrame") -> "Tensor":
        """A Tensor standing for ``value`` of the graph traced in ``frame``."""
        t = cls.__new__(cls)
        t._array, t._value, t._frame = None, value, frame
        return t

    @property
    def is_traced(self) -> bool:
        """True for a symbolic Tensor produced while tracing a construct."""
        return self._array is None

    def _concrete(self, what: str) -> np.ndarray:
        if self._array is None:
            raise TracingError(
                f"Python code that depends on a Tensor's value cannot be traced: {what} of a Tensor inside a "
                f"construct, where Tensors have no value yet (use ops.Select, or compute it outside the Cell) "
                f"-- at {user_location()}"
            )
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """The static shape."""
        return tuple(self._array.shape) if self._array is not None else self._value.shape  # type: ignore[union-attr]

    @property
    def dtype(self) -> mstype.DType:
        """The element type, as a MindSpore dtype (``Float32``)."""
        return mstype.from_numpy(self._array_dtype())

    def _array_dtype(self) -> np.dtype:
        return self._array.dtype if self._array is not None else self._value.dtype  # type: ignore[union-attr]

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d Tensor")
        return self.shape[0]

    def asnumpy(self) -> np.ndarray:
        """A NumPy copy of the value."""
        return self._concrete("asnumpy()").copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self._concrete("conversion to a NumPy array")
        return arr.astype(dtype) if dtype is not None else arr.copy()

    def __bool__(self) -> bool:
        return bool(self._concrete("bool() (`if`, `while`, `and`/`or`)"))

    def __float__(self) -> float:
        return float(self._concrete("float()").item())

    def __int__(self) -> int:
        return int(self._concrete("int()").item())

    def __index__(self) -> int:
        arr = self._concrete("use as a Python index")
        if arr.dtype.kind not in "iub":
            raise TypeError(f"only integer Tensors can be used as an index, got {self.dtype}")
        return int(arr.item())

    def __repr__(self) -> str:
        head = f"Tensor(shape={list(self.shape)}, dtype={self.dtype}, value="
        if self._array is None:
            return head + " <traced>)"
        arr = self._array
        if arr.ndim == 0:
            return f"{head} {str(arr[()])})"
        fmt = {"float_kind": lambda v: f"{v: .8e}"}
        body = np.array2string(arr, separator=", ", formatter=fmt, threshold=np.inf)  # type: ignore[arg-type]
        return f"{head}\n{body})" if arr.ndim > 1 else f"{head} {body})"

    def __str__(self) -> str:
        return repr(self) if self._array is None else str(self._array)

    __hash__ = object.__hash__

    # ---- operators: each adds one graph op (or runs it eagerly outside a trace) ----

    def __add__(self, o: Any) -> Any:
        return apply_op("Add", self, o)

    def __radd__(self, o: Any) -> Any:
        return apply_op("Add", o, self)

    def __sub__(self, o: Any) -> Any:
        return apply_op("Sub", self, o)

    def __rsub__(self, o: Any) -> Any:
        return apply_op("Sub", o, self)

    def __mul__(self, o: Any) -> Any:
        return apply_op("Mul", self, o)

    def __rmul__(self, o: Any) -> Any:
        return apply_op("Mul", o, self)

    def __truediv__(self, o: Any) -> Any:
        return _true_divide(self, o)

    def __rtruediv__(self, o: Any) -> Any:
        return _true_divide(o, self)

    def __pow__(self, o: Any) -> Any:
        return _power(self, o)

    def __rpow__(self, o: Any) -> Any:
        return _power(o, self)

    def __matmul__(self, o: Any) -> Any:
        return apply_op("MatMul" if self.ndim == 2 and np.ndim(o) == 2 else "BatchMatMul", self, o)

    def __rmatmul__(self, o: Any) -> Any:
        return apply_op("MatMul" if self.ndim == 2 and np.ndim(o) == 2 else "BatchMatMul", o, self)

    def __neg__(self) -> Any:
        return apply_op("Neg", self)

    def __abs__(self) -> Any:
        return apply_op("Abs", self)

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return apply_op("Equal", self, o)

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return apply_op("NotEqual", self, o)

    def __lt__(self, o: Any) -> Any:
        return apply_op("Less", self, o)

    def __le__(self, o: Any) -> Any:
        return apply_op("LessEqual", self, o)

    def __gt__(self, o: Any) -> Any:
        return apply_op("Greater", self, o)

    def __ge__(self, o: Any) -> Any:
        return apply_op("GreaterEqual", self, o)

    def __getitem__(self, key: Any) -> Any:
        return getitem(self, key)

    # ---- a few of MindSpore's Tensor methods ----

    def astype(self, dtype: Any) -> Any:
        """This tensor cast to ``dtype``."""
        return apply_op("Cast", self, dtype=mstype.to_numpy(dtype))

    def reshape(self, *shape: Any) -> Any:
        """This tensor with a new shape (``t.reshape(2, 3)`` or ``t.reshape((2, 3))``)."""
        target = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return apply_op("Reshape", self, shape=tuple(target))

    def sum(self, axis: Any = None, keepdims: bool = False) -> Any:
        """Sum over ``axis`` (all axes when None)."""
        return apply_op("ReduceSum", self, axis=() if axis is None else axis, keep_dims=keepdims)

    def mean(self, axis: Any = (), keep_dims: bool = False) -> Any:
        """Mean over ``axis`` (all axes when empty)."""
        return apply_op("ReduceMean", self, axis=axis, keep_dims=keep_dims)


def _is_float(v: Any) -> bool:
    """True for a Python float or a float Tensor."""
    return isinstance(v, (float, np.floating)) or (isinstance(v, Tensor) and v._array_dtype().kind == "f")


def _true_divide(x: Any, y: Any) -> Any:
    """MindSpore's ``x / y`` (ops.div): true division, computed in float32 when neither operand is a float."""
    if not (_is_float(x) or _is_float(y)):
        x, y = (apply_op("Cast", v, dtype=np.dtype(np.float32)) if isinstance(v, Tensor) else v for v in (x, y))
    return apply_op("RealDiv", x, y)


def _power(x: Any, y: Any) -> Any:
    """``x ** y`` in the promoted dtype; integer powers go through float64 (exact below 2**53) and are truncated back."""
    x, y = coerce_inputs("Pow", (x, y))
    dt = x._array_dtype()
    if dt.kind == "f":
        return apply_op("Pow", x, y)
    wide = np.dtype(np.float64)
    out = apply_op("Pow", apply_op("Cast", x, dtype=wide), apply_op("Cast", y, dtype=wide))
    return apply_op("Cast", out, dtype=dt)


from .dispatch import apply_op, coerce_inputs  # noqa: E402  (dispatch builds Tensors, so it is imported after the class)
from .indexing import getitem  # noqa: E402
