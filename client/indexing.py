"""Tensor indexing: basic indices become StridedSlice + Reshape, an integer index array or a boolean mask becomes
Gather; item assignment becomes Select over a mask (a functional update of the Tensor object)."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.engine import OPS

from .dispatch import apply_op
from .errors import TracingError, user_location
from .parameter import Parameter
from .tensor import Tensor
from .tracing import current_frame


def _require(op: str) -> None:
    if op not in OPS:
        raise NotImplementedError(f"this indexing needs the engine op {op}, which this engine does not provide")


def getitem(t: Any, key: Any) -> Any:
    """``t[key]`` for ints, slices, None, Ellipsis, a boolean mask, or one integer Tensor/list index with full
    slices elsewhere."""
    mask = _bool_mask(key)
    if mask is not None:
        return _masked(t, mask)
    key = key if isinstance(key, tuple) else (key,)
    arrays = [i for i, k in enumerate(key) if isinstance(k, (Tensor, list, np.ndarray))]
    if arrays:
        return _gather(t, key, arrays)
    spec, out_shape, end_mask = _slice_spec(t.shape, _expand(t.ndim, key))
    out = t
    if any(s != (0, n, 1) for s, n in zip(spec, t.shape)):
        _require("StridedSlice")
        begin, end, strides = (tuple(col) for col in zip(*spec))
        out = apply_op("StridedSlice", t, begin=begin, end=end, strides=strides, end_mask=end_mask)
    return out if tuple(out_shape) == tuple(out.shape) else apply_op("Reshape", out, shape=tuple(out_shape))


def setitem(t: Any, key: Any, value: Any) -> None:
    """``t[key] = value`` as a functional update: ``t`` then stands for ``Select(mask, value placed, t)`` (a new
    graph value inside a trace, a new array outside), so gradients reach both the kept part of ``t`` and ``value``."""
    if isinstance(t, Parameter) and (t.is_traced or current_frame() is not None):
        raise TypeError(f"item assignment to Parameter {t.name!r} inside a construct is not supported; compute a new Tensor instead")
    if not isinstance(value, (Tensor, bool, int, float, np.bool_, np.integer, np.floating)):
        raise TypeError(f"item assignment takes a Tensor or a Python number, got {type(value).__name__}")
    value = apply_op("Cast", value, dtype=t._array_dtype()) if isinstance(value, Tensor) else Tensor._wrap(np.asarray(value, t._array_dtype()))
    mask = _bool_mask(key)
    if mask is not None:
        where = mask if mask.is_traced else Tensor._wrap(np.broadcast_to(mask._concrete("a mask"), t.shape).copy())
        t._become(apply_op("Select", where, value, t))
        return
    key = key if isinstance(key, tuple) else (key,)
    arrays = [i for i, k in enumerate(key) if isinstance(k, (Tensor, list, np.ndarray))]
    if arrays:
        t._become(_scatter(t, key, arrays, value))
        return
    full = _expand(t.ndim, key)
    spec, out_shape, end_mask = _slice_spec(t.shape, full)
    if tuple(value.shape) != tuple(out_shape):
        value = apply_op("BroadcastTo", value, shape=tuple(out_shape))
    sliced = tuple(len(range(*s)) for s in spec)
    if value.shape != sliced:
        value = apply_op("Reshape", value, shape=sliced)
    placed = value
    if any(s != (0, n, 1) for s, n in zip(spec, t.shape)):
        begin, end, strides = (tuple(col) for col in zip(*spec))
        placed = apply_op("StridedSliceGrad", value, shape=tuple(t.shape), begin=begin, end=end, strides=strides, end_mask=end_mask)
    chosen = np.zeros(t.shape, bool)
    chosen[tuple(k for k in full if k is not None)] = True
    t._become(apply_op("Select", Tensor._wrap(chosen), placed, t))


def _scatter(t: Any, key: tuple[Any, ...], arrays: list[int], value: Tensor) -> Any:
    """``t`` with ``t[key] = value`` for one integer index array: the value's rows summed into place by
    UnsortedSegmentSum, chosen where an index points. Repeated indices are an error when known (NumPy keeps the
    last write), and add up when the index is computed inside a construct."""
    axis, index = _index_array(t, key, arrays)
    if not index.is_traced:
        arr = index._concrete("an index")
        if np.unique(arr).size != arr.size:
            raise IndexError("item assignment with repeated indices is not supported")
    k, n = index.ndim, t.shape[axis]
    shape = tuple(t.shape[:axis]) + tuple(index.shape) + tuple(t.shape[axis + 1:])
    if tuple(value.shape) != shape:
        value = apply_op("BroadcastTo", value, shape=shape)
    front = tuple(range(axis, axis + k)) + tuple(range(axis)) + tuple(range(axis + k, len(shape)))
    summed = apply_op("UnsortedSegmentSum", apply_op("Transpose", value, perm=front), index, num_segments=n)
    back = tuple(range(1, axis + 1)) + (0,) + tuple(range(axis + 1, t.ndim))
    placed = apply_op("Transpose", summed, perm=back)
    hits = apply_op("UnsortedSegmentSum", Tensor._wrap(np.ones(index.shape, np.int32)), index, num_segments=n)
    chosen = apply_op("Reshape", apply_op("Greater", hits, 0), shape=(1,) * axis + (n,) + (1,) * (t.ndim - axis - 1))
    return apply_op("Select", chosen, placed, t)


def _bool_mask(key: Any) -> Tensor | None:
    """``key`` as a boolean Tensor when it is a boolean mask (Tensor, array or nested list of bools), else None."""
    if isinstance(key, Tensor):
        return key if key._array_dtype() == np.bool_ else None
    if isinstance(key, (np.ndarray, list)):
        arr = np.asarray(key)
        return Tensor._wrap(arr) if arr.dtype == np.bool_ else None
    return None


def _masked(t: Any, mask: Tensor) -> Any:
    """``t[mask]``: the selected elements (in C order) as a Gather of a flattened view; the mask must be concrete,
    since the result's length depends on its values."""
    if mask.is_traced:
        raise TracingError(
            f"boolean-mask indexing with a Tensor computed inside a construct has a data-dependent shape and cannot be "
            f"traced (use ops.Select, or a mask known outside) -- at {user_location()}"
        )
    m = mask._concrete("a mask")
    if m.shape != tuple(t.shape[: m.ndim]):
        raise IndexError(f"boolean mask of shape {m.shape} does not match the leading axes of shape {tuple(t.shape)}")
    rest = tuple(t.shape[m.ndim:])
    flat = apply_op("Reshape", t, shape=(int(m.size),) + rest)
    _require("Gather")
    return apply_op("Gather", flat, Tensor._wrap(np.flatnonzero(m).astype(np.int64)), axis=0)


def _expand(ndim: int, key: tuple[Any, ...]) -> list[Any]:
    """``key`` with its Ellipsis (or the missing trailing axes) spelled out as full slices."""
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if used > ndim:
        raise IndexError(f"too many indices for a Tensor of rank {ndim}: {used} given")
    full: list[Any] = []
    for k in key:
        full.extend([slice(None)] * (ndim - used) if k is Ellipsis else [k])
    if Ellipsis not in key:
        full.extend([slice(None)] * (ndim - used))
    return full


def _slice_spec(shape: tuple[int, ...], key: list[Any]) -> tuple[list[tuple[int, int, int]], list[int], int]:
    """The StridedSlice (begin, end, stride) per axis, the indexed result's shape, and the end mask."""
    spec: list[tuple[int, int, int]] = []
    out_shape: list[int] = []
    end_mask = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        dim, n = len(spec), shape[len(spec)]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if not range(start, stop, step):
                start, stop, step = 0, 0, 1  # indices() may give start -1 here, which StridedSlice reads as the last
            elif step < 0 and stop < 0:
                end_mask |= 1 << dim  # a negative stop here means "through index 0", not "from the end"
            spec.append((start, stop, step))
            out_shape.append(len(range(start, stop, step)))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {dim} with size {n}")
            spec.append((int(k) % n, int(k) % n + 1, 1))
        else:
            raise IndexError(f"unsupported index {k!r}; use ints, slices, None, ..., a boolean mask or an integer Tensor")
    return spec, out_shape, end_mask


def _index_array(t: Any, key: tuple[Any, ...], arrays: list[int]) -> tuple[int, Tensor]:
    """The axis and the (non-negative) integer index Tensor of a key with one index array and ':' elsewhere."""
    axis = arrays[0]
    if len(arrays) > 1 or any(not (isinstance(k, slice) and k == slice(None)) for i, k in enumerate(key) if i != axis):
        raise IndexError("only one integer index array, with plain ':' on the other axes, is supported")
    index = key[axis] if isinstance(key[axis], Tensor) else Tensor(np.asarray(key[axis]))
    if index.dtype.np_dtype.kind not in "iu":
        raise IndexError(f"index arrays must be integers, got {index.dtype}")
    _require("Gather")
    return axis, _wrap_negative(index, t.shape[axis], axis)


def _gather(t: Any, key: tuple[Any, ...], arrays: list[int]) -> Any:
    axis, index = _index_array(t, key, arrays)
    return apply_op("Gather", t, index, axis=axis)


def _wrap_negative(index: Tensor, n: int, axis: int) -> Tensor:
    """``index`` with negative entries counted from the end of an axis of length ``n``, as NumPy does."""
    if not index.is_traced:
        arr = index._concrete("an index")
        bad = arr[(arr < -n) | (arr >= n)]
        if bad.size:
            raise IndexError(f"index {bad.flat[0]} is out of bounds for axis {axis} with size {n}")
        return Tensor._wrap(np.where(arr < 0, arr + n, arr).astype(arr.dtype)) if np.any(arr < 0) else index
    if index.dtype.np_dtype.kind == "u":
        return index
    for op in ("Less", "Add", "Select"):
        _require(op)
    return apply_op("Select", apply_op("Less", index, 0), apply_op("Add", index, n), index)


Tensor.__getitem__ = getitem  # Tensor's indexing is defined here, next to the ops it builds
Tensor.__setitem__ = setitem
