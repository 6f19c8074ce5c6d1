"""Tensor indexing: basic indices become StridedSlice + Reshape, an integer index array becomes Gather."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import OPS
from .dispatch import apply_op
from .tensor import Tensor


def _require(op: str) -> None:
    if op not in OPS:
        raise NotImplementedError(f"this indexing needs the engine op {op}, which this engine does not provide")


def getitem(t: Any, key: Any) -> Any:
    """``t[key]`` for ints, slices, None, Ellipsis, or one integer Tensor/list index with full slices elsewhere."""
    key = key if isinstance(key, tuple) else (key,)
    arrays = [i for i, k in enumerate(key) if isinstance(k, (Tensor, list, np.ndarray))]
    if arrays:
        return _gather(t, key, arrays)
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if used > t.ndim:
        raise IndexError(f"too many indices for a Tensor of rank {t.ndim}: {used} given")
    full = []
    for k in key:
        full.extend([slice(None)] * (t.ndim - used) if k is Ellipsis else [k])
    if Ellipsis not in key:
        full.extend([slice(None)] * (t.ndim - used))
    return _basic(t, full)


def _basic(t: Any, key: list[Any]) -> Any:
    spec: list[tuple[int, int, int]] = []
    out_shape: list[int] = []
    end_mask = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        dim, n = len(spec), t.shape[len(spec)]
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
            raise IndexError(f"unsupported index {k!r}; use ints, slices, None, ... or an integer Tensor")
    out = t
    if any(s != (0, n, 1) for s, n in zip(spec, t.shape)):
        _require("StridedSlice")
        begin, end, strides = (tuple(col) for col in zip(*spec))
        out = apply_op("StridedSlice", t, begin=begin, end=end, strides=strides, end_mask=end_mask)
    return out if tuple(out_shape) == tuple(out.shape) else apply_op("Reshape", out, shape=tuple(out_shape))


def _gather(t: Any, key: tuple[Any, ...], arrays: list[int]) -> Any:
    axis = arrays[0]
    if len(arrays) > 1 or any(not (isinstance(k, slice) and k == slice(None)) for i, k in enumerate(key) if i != axis):
        raise IndexError("only one integer index array, with plain ':' on the other axes, is supported")
    index = key[axis] if isinstance(key[axis], Tensor) else Tensor(np.asarray(key[axis]))
    if index.dtype.np_dtype.kind not in "iu":
        raise IndexError(f"index arrays must be integers, got {index.dtype} (boolean masks have data-dependent shapes)")
    _require("Gather")
    return apply_op("Gather", t, _wrap_negative(index, t.shape[axis], axis), axis=axis)


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
