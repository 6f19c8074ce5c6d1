"""Tensor indexing with NumPy's semantics: basic indices become StridedSlice + Reshape; integer index arrays (several
broadcast together) and boolean masks become one Gather, a mask's positions read as a (guarded) value; item
assignment becomes Select over a mask (a functional update of the Tensor object)."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.engine import OPS

from .dispatch import apply_op
from .parameter import Parameter
from .tensor import Tensor
from .tracing import current_frame


def _require(op: str) -> None:
    if op not in OPS:
        raise NotImplementedError(f"this indexing needs the engine op {op}, which this engine does not provide")


def getitem(t: Any, key: Any) -> Any:
    """``t[key]`` with NumPy's semantics for ints, slices, None, Ellipsis, boolean masks and integer index arrays
    (several broadcast together, the advanced axes placed where NumPy places them). A mask's positions are read as
    a value (a guard of the trace inside a construct), since the result's length depends on them."""
    mask = _bool_mask(key)
    if mask is not None:
        return _masked(t, mask)
    full = _normalize(t, key if isinstance(key, tuple) else (key,))
    if any(isinstance(k, Tensor) for k in full):
        return _advanced(t, full)
    return _basic(t, full)


def _basic(t: Any, full: list[Any]) -> Any:
    """``t[full]`` for an expanded key of ints, slices and None: StridedSlice, then Reshape for the dropped and new axes."""
    spec, out_shape, end_mask = _slice_spec(t.shape, full)
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
    if mask is not None and not _broadcasts(value.shape, t.shape):
        key = (mask,)  # one value per selected element (NumPy's rule), placed at the mask's positions, read
    elif mask is not None:
        _check_mask(mask.shape, t.shape, 0)
        if mask.is_traced:
            where = mask if mask.ndim == t.ndim else apply_op("Reshape", mask, shape=tuple(mask.shape) + (1,) * (t.ndim - mask.ndim))
        else:
            where = Tensor._wrap(np.broadcast_to(mask._concrete("a mask").reshape(mask.shape + (1,) * (t.ndim - mask.ndim)), t.shape).copy())
        _rebind(t, apply_op("Select", where, value, t))
        return
    full = _normalize(t, key if isinstance(key, tuple) else (key,))
    if any(isinstance(k, Tensor) for k in full):
        _rebind(t, _scatter(t, full, value))
        return
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
    _rebind(t, apply_op("Select", Tensor._wrap(chosen), placed, t))


def _rebind(t: Tensor, new: Tensor) -> None:
    """``t`` stands for ``new`` from now on: inside a trace through the frame, which undoes the change of a Tensor it
    did not make when it ends and writes the Tensor's last value into it after the call (client/tracing.py)."""
    frame = current_frame()
    if frame is None:
        t._become(new)
    else:
        frame.rebind(t, new)


def _broadcasts(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    """True when ``shape`` broadcasts to ``to``."""
    try:
        return np.broadcast_shapes(shape, to) == tuple(to)
    except ValueError:
        return False


def _scatter(t: Any, full: list[Any], value: Tensor) -> Any:
    """``t`` with ``t[full] = value`` for a key with index arrays: the value, broadcast to the indexed shape, placed at
    the flat positions the key reads and chosen there by Select. Known positions place it by a Gather from each
    position's value (so any dtype works); positions computed inside a construct sum it into place by
    UnsortedSegmentSum. Repeated positions are an error when known (NumPy keeps one of the writes), and add up when
    computed inside a construct."""
    pos = _positions(t, full)
    if not pos.size:
        return t
    if tuple(value.shape) != tuple(pos.shape):
        value = apply_op("BroadcastTo", value, shape=tuple(pos.shape))
    size, count = int(t.size), int(pos.size)
    flat_value = apply_op("Reshape", value, shape=(count,))
    if not pos.is_traced:
        flat = pos._concrete("positions").reshape(-1)
        if np.unique(flat).size != flat.size:
            raise IndexError("item assignment with repeated indices is not supported")
        source, hit = np.zeros(size, np.int64), np.zeros(size, bool)
        source[flat], hit[flat] = np.arange(count), True
        placed = apply_op("Gather", flat_value, Tensor._wrap(source.reshape(t.shape)), axis=0)
        return apply_op("Select", Tensor._wrap(hit.reshape(t.shape)), placed, t)
    flat_pos = apply_op("Reshape", pos, shape=(count,))
    boolean = t._array_dtype() == np.bool_
    if boolean:
        flat_value = apply_op("Cast", flat_value, dtype=np.dtype(np.int32))
    placed = apply_op("Reshape", apply_op("UnsortedSegmentSum", flat_value, flat_pos, num_segments=size), shape=tuple(t.shape))
    if boolean:
        placed = apply_op("Cast", placed, dtype=np.dtype(np.bool_))
    hits = apply_op("UnsortedSegmentSum", Tensor._wrap(np.ones(count, np.int32)), flat_pos, num_segments=size)
    chosen = apply_op("Reshape", apply_op("Greater", hits, 0), shape=tuple(t.shape))
    return apply_op("Select", chosen, placed, t)


def _positions(t: Any, full: list[Any]) -> Tensor:
    """The flat (C-order) positions in ``t`` of the elements ``t[full]`` reads, shaped like ``t[full]``: by NumPy when
    the key is known, else by indexing a grid of positions built in the graph from one small range per axis."""
    if not any(isinstance(k, Tensor) and k.is_traced for k in full):
        grid = np.arange(int(t.size), dtype=np.int64).reshape(t.shape)
        return Tensor._wrap(np.ascontiguousarray(grid[tuple(k._concrete("an index") if isinstance(k, Tensor) else k for k in full)]))
    strides = [int(np.prod(t.shape[d + 1:], dtype=np.int64)) for d in range(t.ndim)]
    axes = [np.arange(n, dtype=np.int64).reshape((1,) * d + (n,) + (1,) * (t.ndim - d - 1)) * s
            for d, (n, s) in enumerate(zip(t.shape, strides))]
    grid_t = apply_op("BroadcastTo", Tensor._wrap(axes[0]), shape=tuple(t.shape))
    for a in axes[1:]:
        grid_t = apply_op("Add", grid_t, Tensor._wrap(a))
    return _advanced(grid_t, full)


def _bool_mask(key: Any) -> Tensor | None:
    """``key`` as a boolean Tensor when it is a boolean mask (Tensor, array or nested list of bools), else None."""
    if isinstance(key, Tensor):
        return key if key._array_dtype() == np.bool_ else None
    if isinstance(key, (np.ndarray, list, bool, np.bool_)):
        arr = np.asarray(key)
        return Tensor._wrap(arr) if arr.dtype == np.bool_ else None
    return None


def _masked(t: Any, mask: Tensor) -> Any:
    """``t[mask]``: the selected elements (in C order) as a Gather of a flattened view. The result's length depends
    on the mask's values, so a mask computed inside a construct (or passed to it) is read: its positions become
    constant indices and the trace holds only while the mask is the same (a guard), else it is traced again. A 0-d
    mask covers no axis: NumPy's new leading axis, of length 1 (True) or 0 (False)."""
    _check_mask(mask.shape, t.shape, 0)
    m = mask._concrete("a boolean mask index")
    rest = tuple(t.shape[m.ndim:])
    flat = apply_op("Reshape", t, shape=(int(m.size),) + rest)
    _require("Gather")
    return apply_op("Gather", flat, Tensor._wrap(np.flatnonzero(m).astype(np.int64)), axis=0)


def _check_mask(mask_shape: tuple[int, ...], shape: tuple[int, ...], axis: int) -> None:
    """A boolean mask must have the shape of the axes it covers, from ``axis`` on (a 0-d one covers none)."""
    if tuple(mask_shape) != tuple(shape[axis: axis + len(mask_shape)]):
        axes = "the leading axes" if axis == 0 else f"axes {axis} to {axis + len(mask_shape) - 1}"
        raise IndexError(f"boolean mask of shape {tuple(mask_shape)} does not match {axes} of shape {tuple(shape)}")


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
    if not any(k is Ellipsis for k in key):
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


def _normalize(t: Any, key: tuple[Any, ...]) -> list[Any]:
    """``key`` spelled out for every axis (its Ellipsis expanded), each index array an integer Tensor with negative
    entries counted from the end, and each boolean array in it replaced by the integer arrays of its True positions
    (NumPy's ``nonzero()``; the mask is read, as a guarded value inside a construct)."""
    items: list[Any] = []
    masks: list[tuple[Tensor, tuple[int, ...]]] = []
    for k in key:
        if not isinstance(k, (Tensor, list, np.ndarray)):
            items.append(k)
            continue
        index = k if isinstance(k, Tensor) else _as_index(k)
        if index._array_dtype() == np.bool_:
            m = index._concrete("a boolean mask index")
            if m.ndim == 0:
                raise IndexError("a 0-d boolean index is supported alone (x[mask] is x with a new leading axis of length "
                                 "1 or 0), not with other indices or values that do not broadcast to x; index in two steps "
                                 "(x[mask][:, i]) or choose with ops.select")
            rows = [Tensor._wrap(ix.astype(np.int64)) for ix in np.nonzero(m)]
            masks.append((rows[0], m.shape))
            items.extend(rows)
        elif index._array_dtype().kind not in "iu":
            raise IndexError(f"index arrays must be integers, got {index.dtype}")
        else:
            items.append(index)
    full = _expand(t.ndim, tuple(items))
    axis_of = _axes(full)
    for first, shape in masks:
        _check_mask(shape, t.shape, next(axis_of[i] for i, k in enumerate(full) if k is first))
    if any(isinstance(k, Tensor) for k in full):
        _require("Gather")
        full = [_wrap_negative(k, t.shape[axis_of[i]], axis_of[i]) if isinstance(k, Tensor) else k for i, k in enumerate(full)]
    return full


def _axes(full: list[Any]) -> list[int]:
    """The axis of the indexed Tensor that each item of an expanded key applies to (None items take none)."""
    return [sum(1 for k in full[:i] if k is not None) for i in range(len(full))]


def _as_index(k: list[Any] | np.ndarray) -> Tensor:
    """A list or array index as a Tensor (an empty one as int64, as NumPy reads it)."""
    arr = np.asarray(k)
    return Tensor(arr.astype(np.int64) if arr.size == 0 and arr.dtype.kind == "f" else arr)


def _advanced(t: Any, full: list[Any]) -> Any:
    """``t[full]`` for a key with index arrays (ints next to them count as 0-d arrays, as in NumPy): the basic part
    as a slice, then one Gather, over the advanced axes merged into one (transposed to the front first when they
    are not adjacent, which is where NumPy puts the broadcast index axes then) at their linearized index."""
    adv = [j for j, k in enumerate(full) if isinstance(k, (Tensor, int, np.integer)) and not isinstance(k, bool)]
    out = _basic(t, [slice(None) if j in adv else k for j, k in enumerate(full)])
    axis_of = _axes(full)
    index: list[Any] = []
    for j in adv:
        k, n = full[j], out.shape[j]
        if not isinstance(k, Tensor):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {axis_of[j]} with size {n}")
            k = int(k) % n
        index.append(k)
    shapes = [tuple(k.shape) if isinstance(k, Tensor) else () for k in index]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise IndexError(f"shape mismatch: indexing arrays could not be broadcast together with shapes {' '.join(map(str, shapes))}") from None
    if len(adv) == 1:
        return apply_op("Gather", out, _as_tensor(index[0]), axis=adv[0])
    if adv != list(range(adv[0], adv[0] + len(adv))):
        out = apply_op("Transpose", out, perm=tuple(adv) + tuple(j for j in range(out.ndim) if j not in adv))
        adv = list(range(len(adv)))
    a, sizes = adv[0], [out.shape[j] for j in adv]
    merged = apply_op("Reshape", out, shape=tuple(out.shape[:a]) + (int(np.prod(sizes, dtype=np.int64)),) + tuple(out.shape[a + len(adv):]))
    return apply_op("Gather", merged, _linear(index, sizes), axis=a)


def _as_tensor(k: Tensor | int) -> Tensor:
    return k if isinstance(k, Tensor) else Tensor._wrap(np.asarray(k, np.int64))


def _linear(index: list[Any], sizes: list[int]) -> Tensor:
    """The C-order flat index into axes of ``sizes`` from one (broadcast) index per axis: by NumPy when all are
    known, else as int64 graph arithmetic."""
    strides = [int(np.prod(sizes[i + 1:], dtype=np.int64)) for i in range(len(sizes))]
    if not any(isinstance(k, Tensor) and k.is_traced for k in index):
        known = [k._concrete("an index") if isinstance(k, Tensor) else k for k in index]
        return Tensor._wrap(np.asarray(sum(np.asarray(k, np.int64) * s for k, s in zip(known, strides)), np.int64))
    flat: Any = None
    for k, s in zip(index, strides):
        term = _as_tensor(k)
        if term._array_dtype() != np.int64:
            term = apply_op("Cast", term, dtype=np.dtype(np.int64))
        if s != 1:
            term = apply_op("Mul", term, s)
        flat = term if flat is None else apply_op("Add", flat, term)
    return flat


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
