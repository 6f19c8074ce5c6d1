"""Tensor: a concrete NumPy-backed value, or (inside a trace) a symbolic value of the graph being built."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gradserve.engine.operators import Operators

from . import dtype as mstype
from .errors import TracingError, user_location

if TYPE_CHECKING:
    from gradserve.engine import Value

    from .tracing import TraceFrame


_versions = itertools.count(1)
"""Version numbers: each in-place change of a Tensor (and every new value of a Parameter) takes the next one."""


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


def _shape_arg(shape: Any) -> tuple[int, ...]:
    """A ``shape`` argument (an int, or a tuple or list of non-negative ints) as a tuple."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"Tensor: shape must be non-negative ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def _initialized(init: Any, shape: Any, dtype: Any) -> np.ndarray:
    """MindSpore's ``Tensor(shape=..., dtype=..., init=One())``: an array filled by the initializer (drawn in float64
    and cast, as ``initializer()`` does, so a seed gives the same values either way)."""
    if shape is None or dtype is None:
        raise ValueError("Tensor: init needs both shape and dtype")
    if not callable(init):
        raise TypeError(f"Tensor: init must be an Initializer (such as One() or Normal()), got {type(init).__name__}")
    arr = np.zeros(_shape_arg(shape), dtype=np.float64)
    init(arr)
    return arr.astype(mstype.to_numpy(dtype))


def _unary(op: str, what: str) -> Callable[..., Any]:
    """A Tensor method applying the one-input op ``op``."""

    def method(self: Tensor) -> Any:
        return self._apply(op, self)

    method.__doc__ = f"{what}, element-wise (the {op} op)."
    return method


class Tensor(Operators):
    """MindSpore's Tensor: ``Tensor(data, dtype=None)`` from a number, (nested) list or NumPy array."""

    __array_ufunc__ = None  # NumPy defers to Tensor's reflected operators (np.float32(2) * t is a Tensor)
    _version = 0

    def __init__(self, input_data: Any = None, dtype: Any = None, shape: Any = None, init: Any = None) -> None:
        if init is not None:
            if input_data is not None:
                raise ValueError("Tensor: give input_data or init, not both")
            input_data = _initialized(init, shape, dtype)
        elif input_data is None:
            raise TypeError("Tensor needs input_data (a number, list, tuple, NumPy array or Tensor) or init with shape and dtype")
        self._array: np.ndarray | None = _array_from(input_data, dtype)
        if shape is not None and self._array.shape != _shape_arg(shape):
            raise ValueError(f"Tensor: input_data has shape {self._array.shape}, but shape={shape!r} was given")
        self._value: Value | None = None
        self._frame: TraceFrame | None = None

    @classmethod
    def _wrap(cls, array: np.ndarray) -> Tensor:
        """A concrete Tensor around ``array`` (made read-only, not copied)."""
        t = cls.__new__(cls)
        array.setflags(write=False)
        t._array, t._value, t._frame = array, None, None
        return t

    @classmethod
    def _symbolic(cls, value: Value, frame: TraceFrame) -> Tensor:
        """A Tensor standing for ``value`` of the graph traced in ``frame``."""
        t = cls.__new__(cls)
        t._array, t._value, t._frame = None, value, frame
        return t

    @property
    def version(self) -> int:
        """A number that moves with every in-place change of this Tensor's value (item assignment; a Parameter's
        ``set_data``): while it stands still the value is the same, so caches compare it instead of the array. A
        Parameter's is never shared with another Parameter."""
        return self._version

    def _become(self, new: Tensor) -> None:
        """Stand for ``new``'s value from now on (an in-place change, such as item assignment): moves ``version``."""
        self._array, self._value, self._frame = new._array, new._value, new._frame
        self._version = next(_versions)

    def _restore(self, array: np.ndarray | None, version: int) -> None:
        """Hold ``array`` at ``version`` again: undoes the in-place changes a trace made to a Tensor it did not make."""
        self._array, self._value, self._frame, self._version = array, None, None, version

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

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(self._array_dtype().itemsize)

    @property
    def nbytes(self) -> int:
        """Bytes of all elements."""
        return self.size * self.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        """Bytes to step along each axis of the row-major layout, as MindSpore reports them."""
        out, step = [], self.itemsize
        for d in reversed(self.shape):
            out.append(step)
            step *= max(d, 1)
        return tuple(reversed(out))

    def init_data(self) -> Tensor:
        """MindSpore materializes a Tensor made with ``init`` here; gradserve fills it when made, so: this Tensor."""
        return self

    @staticmethod
    def from_numpy(array: np.ndarray) -> Tensor:
        """A Tensor of ``array``'s dtype and values. MindSpore shares the array's memory; gradserve's Tensors are
        immutable values that traces and caches rely on, so this one holds a copy: later writes to ``array`` do not
        show in it."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor.from_numpy takes a NumPy array, got {type(array).__name__}")
        return Tensor(array)

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

    # ---- operators: the engine's shared table; client/dispatch.py installs _apply, _divide, _power,
    # _floor_divide, _floor_mod and _matmul (NumPy's ranks for @), and
    # client/indexing.py installs __getitem__ and __setitem__ (each adds one graph op, or runs it eagerly outside a trace) ----

    _floor_divide: Callable[[Any, Any], Any]
    _floor_mod: Callable[[Any, Any], Any]
    _matmul: Callable[[Any, Any], Any]

    def __matmul__(self, o: Any) -> Any:
        return self._matmul(self, o)

    def __rmatmul__(self, o: Any) -> Any:
        return self._matmul(o, self)

    def __floordiv__(self, o: Any) -> Any:
        return self._floor_divide(self, o)

    def __rfloordiv__(self, o: Any) -> Any:
        return self._floor_divide(o, self)

    def __mod__(self, o: Any) -> Any:
        return self._floor_mod(self, o)

    def __rmod__(self, o: Any) -> Any:
        return self._floor_mod(o, self)

    __getitem__: Callable[[Tensor, Any], Any]
    __setitem__: Callable[[Tensor, Any, Any], None]

    # ---- MindSpore's Tensor methods, each one or a few graph ops (so they trace, and get gradients) ----

    neg = _unary("Neg", "-x")
    abs = _unary("Abs", "|x|")
    exp = _unary("Exp", "e ** x")
    log = _unary("Log", "the natural logarithm")
    sqrt = _unary("Sqrt", "the square root")
    square = _unary("Square", "x * x")
    sin = _unary("Sin", "the sine")
    cos = _unary("Cos", "the cosine")
    tanh = _unary("Tanh", "the hyperbolic tangent")
    sigmoid = _unary("Sigmoid", "1 / (1 + exp(-x))")
    sign = _unary("Sign", "-1, 0 or 1")
    floor = _unary("Floor", "the largest integer <= x")
    ceil = _unary("Ceil", "the smallest integer >= x")
    round = _unary("Round", "the nearest integer, halves to even")

    def pow(self, exponent: Any) -> Any:
        """``self ** exponent``."""
        return self**exponent

    def matmul(self, tensor2: Any) -> Any:
        """``self @ tensor2``."""
        return self @ tensor2

    def clip(self, xmin: Any, xmax: Any, dtype: Any = None) -> Any:
        """Each element limited to [xmin, xmax] (None: no bound on that side), in this Tensor's dtype (bounds cast to
        it, as MindSpore's), or in ``dtype`` when given."""
        if xmin is None and xmax is None:
            raise ValueError("Tensor.clip: xmin and xmax cannot both be None")
        own = self._array_dtype()
        x = self
        if xmin is not None:
            x = self._apply("Maximum", x, xmin)
        if xmax is not None:
            x = self._apply("Minimum", x, xmax)
        x = x if x._array_dtype() == own else x.astype(mstype.from_numpy(own))
        return x if dtype is None or mstype.to_numpy(dtype) == own else x.astype(dtype)

    def tolist(self) -> Any:
        """The value as (nested) Python lists of numbers; needs a concrete value."""
        return self._concrete("tolist()").tolist()

    def all(self, axis: Any = None, keep_dims: bool = False) -> Any:
        """True where every element along ``axis`` (all axes when None) is non-zero (a bool Tensor); True over an
        empty axis, as NumPy's: no zero is counted."""
        zeros = self._apply("Cast", self._apply("Equal", self, 0), dtype=np.dtype(np.int32))
        return self._apply("Equal", self._apply("ReduceSum", zeros, axis=_axes(axis), keep_dims=keep_dims), 0)

    def any(self, axis: Any = None, keep_dims: bool = False) -> Any:
        """True where some element along ``axis`` (all axes when None) is non-zero (a bool Tensor); False over an
        empty axis, as NumPy's: no non-zero is counted."""
        nonzero = self._apply("Cast", self._apply("NotEqual", self, 0), dtype=np.dtype(np.int32))
        return self._apply("NotEqual", self._apply("ReduceSum", nonzero, axis=_axes(axis), keep_dims=keep_dims), 0)

    def prod(self, axis: Any = None, keep_dims: bool = False) -> Any:
        """Product over ``axis`` (all axes when None)."""
        return self._apply("ReduceProd", self, axis=_axes(axis), keep_dims=keep_dims)

    def var(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
        """Variance over ``axis`` (all axes when None), divided by the count minus ``ddof``; an int or bool Tensor
        is taken as float32, as MindSpore's mean does."""
        axes = _axes(axis)
        count = int(np.prod([self.shape[a] for a in axes] if axes else self.shape, dtype=np.int64))
        x = self if self._array_dtype().kind == "f" else self.astype(mstype.float32)
        centered = x - self._apply("ReduceMean", x, axis=axes, keep_dims=True)
        return self._apply("ReduceSum", centered * centered, axis=axes, keep_dims=keepdims) / (count - ddof)

    def std(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
        """Standard deviation over ``axis``: the square root of ``var``."""
        return self._apply("Sqrt", self.var(axis, ddof, keepdims))

    def cumsum(self, axis: Any = None, dtype: Any = None) -> Any:
        """Running sums along ``axis`` (over the flattened Tensor when None), in ``dtype`` when given."""
        x = self if dtype is None else self.astype(dtype)
        if axis is None:
            x, axis = x.reshape(-1), 0
        return self._apply("CumSum", x, axis=int(axis), exclusive=False, reverse=False)

    def tile(self, reps: Any) -> Any:
        """The Tensor repeated ``reps`` times along each axis; fewer ``reps`` than axes are padded with leading 1s,
        as NumPy's and MindSpore's."""
        multiples = (int(reps),) if isinstance(reps, (int, np.integer)) else tuple(reps)
        return self._apply("Tile", self, multiples=(1,) * (self.ndim - len(multiples)) + multiples)

    def broadcast_to(self, shape: Any) -> Any:
        """The Tensor broadcast to ``shape`` (-1 keeps that axis)."""
        return self._apply("BroadcastTo", self, shape=_dims(tuple(shape)))

    def expand_as(self, other: Tensor) -> Any:
        """The Tensor broadcast to ``other``'s shape."""
        return self.broadcast_to(other.shape)

    def unsqueeze(self, dim: int) -> Any:
        """A new axis of length 1 at ``dim``."""
        return self.expand_dims(dim)

    def permute(self, *axis: Any) -> Any:
        """Axes permuted (``t.permute(1, 0)`` or ``t.permute((1, 0))``)."""
        return self._apply("Transpose", self, perm=_dims(axis))

    def swapaxes(self, axis0: int, axis1: int) -> Any:
        """Axes ``axis0`` and ``axis1`` exchanged."""
        perm = list(range(self.ndim))
        a, b = _axis(axis0, self.ndim, "swapaxes"), _axis(axis1, self.ndim, "swapaxes")
        perm[a], perm[b] = perm[b], perm[a]
        return self._apply("Transpose", self, perm=tuple(perm))

    def softmax(self, axis: int = -1) -> Any:
        """exp(x) / sum(exp(x)) along ``axis``."""
        return self._apply("Softmax", self, axis=(int(axis),))

    def log_softmax(self, axis: int = -1) -> Any:
        """log(softmax(x)) along ``axis``."""
        return self._apply("LogSoftmax", self, axis=int(axis))

    def gather(self, input_indices: Any, axis: int, batch_dims: int = 0) -> Any:
        """The slices at ``input_indices`` along ``axis`` (the Gather op)."""
        return self._apply("Gather", self, input_indices, axis=int(axis), batch_dims=int(batch_dims))

    def masked_fill(self, mask: Any, value: Any) -> Any:
        """``value`` where ``mask`` is True, this Tensor elsewhere, in this Tensor's dtype (a number is cast to it; a
        Tensor ``value`` of another dtype is a TypeError, as in MindSpore)."""
        own = self._array_dtype()
        if isinstance(value, Tensor):
            if value._array_dtype() != own:
                raise TypeError(f"Tensor.masked_fill: value has dtype {value.dtype}, but the Tensor has {self.dtype}")
        elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
            value = Tensor._wrap(np.asarray(value).astype(own))
        else:
            raise TypeError(f"Tensor.masked_fill: value must be a number or a Tensor, got {type(value).__name__}")
        return self._apply("Select", mask, self._apply("ZerosLike", self) + value, self)

    def logical_not(self) -> Any:
        """True where the element is zero (False)."""
        return self._apply("Equal", self, 0) if self._array_dtype().kind != "b" else self._apply("Equal", self, False)

    def add(self, other: Any) -> Any:
        """``self + other``."""
        return self + other

    def sub(self, other: Any) -> Any:
        """``self - other``."""
        return self - other

    def mul(self, value: Any) -> Any:
        """``self * value``."""
        return self * value

    def div(self, value: Any) -> Any:
        """``self / value`` (true division)."""
        return self / value

    def astype(self, dtype: Any, copy: bool = True) -> Any:
        """This tensor cast to ``dtype``."""
        return self._apply("Cast", self, dtype=mstype.to_numpy(dtype))

    def copy(self) -> Tensor:
        """A new Tensor with the same value (item assignment to one does not change the other)."""
        if self._array is None:
            return Tensor._symbolic(self._value, self._frame)  # type: ignore[arg-type]
        return Tensor._wrap(self._array.copy())

    def fill(self, value: Any) -> Any:
        """A tensor of this one's shape and dtype holding ``value`` everywhere (MindSpore 2.x returns a new one)."""
        if not isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
            raise TypeError(f"Tensor.fill takes a Python number, got {type(value).__name__}")
        return self._apply("Add", self._apply("ZerosLike", self), Tensor._wrap(np.asarray(value, self._array_dtype())))

    def reshape(self, *shape: Any) -> Any:
        """This tensor with a new shape (``t.reshape(2, 3)`` or ``t.reshape((2, 3))``; one entry may be -1)."""
        return self._apply("Reshape", self, shape=_dims(shape))

    def view(self, *shape: Any) -> Any:
        """``reshape`` under MindSpore's other name."""
        return self.reshape(*shape)

    def flatten(self, order: str = "C", *, start_dim: int = 0, end_dim: int = -1) -> Any:
        """Axes ``start_dim`` through ``end_dim`` merged into one (all of them by default); C order only."""
        if order != "C":
            raise ValueError(f"Tensor.flatten supports order='C' only, got {order!r}")
        shape = self.shape
        if not shape:
            return self.reshape(1)
        lo, hi = (_axis(a, len(shape), "flatten") for a in (start_dim, end_dim))
        if lo > hi:
            raise ValueError(f"Tensor.flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        return self.reshape(shape[:lo] + (int(np.prod(shape[lo:hi + 1])),) + shape[hi + 1:])

    @property
    def T(self) -> Any:
        """The tensor with its axes reversed."""
        return self.transpose()

    def transpose(self, *axes: Any) -> Any:
        """Axes permuted (``t.transpose(1, 0)`` or ``t.transpose((1, 0))``); reversed when none are given."""
        perm = _dims(axes) if axes and axes != (None,) else tuple(reversed(range(self.ndim)))
        return self._apply("Transpose", self, perm=perm)

    def squeeze(self, axis: Any = None) -> Any:
        """Axes of length 1 removed: ``axis`` (an int or a tuple), or all of them when None."""
        return self._apply("Squeeze", self, axis=_axes(axis))

    def expand_dims(self, axis: int) -> Any:
        """A new axis of length 1 at ``axis``."""
        return self._apply("ExpandDims", self, axis=axis)

    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, initial: Any = None) -> Any:
        """Sum over ``axis`` (all axes when None) plus ``initial`` when given, cast to ``dtype`` (the summed dtype
        when None) as MindSpore's does last; a bool Tensor is summed as int32, so ``(pred == label).sum()`` counts."""
        x = self.astype(mstype.int32) if self._array_dtype().kind == "b" else self
        out = self._apply("ReduceSum", x, axis=_axes(axis), keep_dims=keepdims)
        if initial is not None:
            out = out + initial
        target = x._array_dtype() if dtype is None else mstype.to_numpy(dtype)
        return out if out._array_dtype() == target else out.astype(mstype.from_numpy(target))

    def mean(self, axis: Any = None, keep_dims: bool = False) -> Any:
        """Mean over ``axis`` (all axes when None)."""
        return self._apply("ReduceMean", self, axis=_axes(axis), keep_dims=keep_dims)

    def max(self, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = True,
            return_indices: bool = False) -> Any:
        """Maximum over ``axis`` (all axes when None), at least ``initial``; with ``return_indices`` also the argmax
        (one axis only). As in MindSpore, one int axis is the ArgMaxWithValue op, whose gradient goes to the first
        maximum alone; None or several axes are ReduceMax, whose tied maxima share it evenly."""
        return _extremum(self, 1, axis, keepdims, initial, where, return_indices)

    def min(self, axis: Any = None, keepdims: bool = False, *, initial: Any = None, where: Any = True,
            return_indices: bool = False) -> Any:
        """Minimum over ``axis``, as ``max`` (computed as -max(-x))."""
        return _extremum(self, -1, axis, keepdims, initial, where, return_indices)

    def argmax(self, axis: Any = None, keepdims: bool = False) -> Any:
        """The index (int64) of the first maximum along ``axis``, or in the flattened tensor when None."""
        return _arg_extremum(self, 1, axis, keepdims)

    def argmin(self, axis: Any = None, keepdims: bool = False) -> Any:
        """The index (int64) of the first minimum along ``axis``, or in the flattened tensor when None."""
        return _arg_extremum(self, -1, axis, keepdims)

    def item(self, index: Any = None) -> Any:
        """The element at ``index`` (the only one when None) as a Python number; needs a concrete value."""
        arr = self._concrete("item()")
        if index is None:
            if arr.size != 1:
                raise ValueError(f"Tensor.item() needs a Tensor with one element, got shape {arr.shape}")
            return arr.item()
        return arr.item(index)

    # MindSpore's dtype shorthands, last in the class: their names would shadow the builtins for the code after them

    def half(self) -> Any:
        """This Tensor as float16."""
        return self.astype(mstype.float16)

    def float(self) -> Any:
        """This Tensor as float32."""
        return self.astype(mstype.float32)

    def int(self) -> Any:
        """This Tensor as int32 (floats truncated toward zero)."""
        return self.astype(mstype.int32)


def _dims(shape: tuple[Any, ...]) -> tuple[int, ...]:
    """Dimensions passed either as separate ints or as one tuple/list."""
    target = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return tuple(target)


def _axes(axis: Any) -> tuple[int, ...]:
    """An axis argument as the reductions' attribute: None (all) -> (), an int -> (int,)."""
    if axis is None:
        return ()
    return (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(axis)


def _axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"Tensor.{what}: axis {axis} is out of range for rank {ndim}")
    return axis % ndim


def _extremum(t: Tensor, sign: int, axis: Any, keepdims: bool, initial: Any, where: Any, return_indices: bool) -> Any:
    """max (sign 1) or min (sign -1) over ``axis``: ArgMaxWithValue (ArgMinWithValue) over one int axis, else
    ReduceMax of ``sign * t``."""
    if where is not True:
        raise NotImplementedError("Tensor.max/min: the where argument is not supported")
    bound = "Maximum" if sign > 0 else "Minimum"
    if isinstance(axis, (int, np.integer)):
        source = t if initial is None else t._apply(bound, t, initial)
        _, out = t._apply("ArgMaxWithValue" if sign > 0 else "ArgMinWithValue", source, axis=int(axis), keep_dims=bool(keepdims))
    else:
        flip = (lambda v: v) if sign > 0 else (lambda v: t._apply("Neg", v))
        out = flip(t._apply("ReduceMax", flip(t), axis=_axes(axis), keep_dims=keepdims))
        if initial is not None:
            out = t._apply(bound, out, initial)
    if return_indices:
        if not isinstance(axis, (int, np.integer)):
            raise ValueError("Tensor.max/min: return_indices needs one int axis")
        return out, _arg_extremum(t, sign, axis, keepdims)
    return out


def _arg_extremum(t: Tensor, sign: int, axis: Any, keepdims: bool) -> Any:
    """The first index of the extremum: the smallest position along ``axis`` where t equals its extremum."""
    if axis is None:
        flat = t.reshape(-1)
        out = _arg_extremum(flat, sign, 0, False)
        return out.reshape((1,) * t.ndim) if keepdims else out
    ax = _axis(int(axis), t.ndim, "argmax")
    n = t.shape[ax]
    ext = _extremum(t, sign, ax, True, None, True, False)
    positions = Tensor._wrap(np.arange(n, dtype=np.int64).reshape((n,) + (1,) * (t.ndim - ax - 1)))
    where = t._apply("Select", t._apply("Equal", t, ext), positions, Tensor._wrap(np.asarray(n, np.int64)))
    first = t._apply("Neg", t._apply("ReduceMax", t._apply("Neg", where), axis=(ax,), keep_dims=keepdims))
    return t._apply("StopGradient", first)
