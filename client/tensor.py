"""Tensor: a concrete NumPy-backed value, or (inside a trace) a symbolic value of the graph being built."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..engine.operators import Operators
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


class Tensor(Operators):
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

    # ---- operators: the engine's shared table; client/dispatch.py installs _apply, _divide and _power, and
    # client/indexing.py installs __getitem__ (each adds one graph op, or runs it eagerly outside a trace) ----

    __getitem__: Callable[["Tensor", Any], Any]

    # ---- a few of MindSpore's Tensor methods ----

    def astype(self, dtype: Any) -> Any:
        """This tensor cast to ``dtype``."""
        return self._apply("Cast", self, dtype=mstype.to_numpy(dtype))

    def reshape(self, *shape: Any) -> Any:
        """This tensor with a new shape (``t.reshape(2, 3)`` or ``t.reshape((2, 3))``)."""
        target = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._apply("Reshape", self, shape=tuple(target))

    def sum(self, axis: Any = None, keepdims: bool = False) -> Any:
        """Sum over ``axis`` (all axes when None)."""
        return self._apply("ReduceSum", self, axis=() if axis is None else axis, keep_dims=keepdims)

    def mean(self, axis: Any = (), keep_dims: bool = False) -> Any:
        """Mean over ``axis`` (all axes when empty)."""
        return self._apply("ReduceMean", self, axis=axis, keep_dims=keep_dims)
