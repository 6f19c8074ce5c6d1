"""Indexing ops: Concat, Split, StridedSlice, Gather and Tile, plus the ops their gradients need
(StridedSliceGrad, the scatter that pads a slice back; UnsortedSegmentSum, the scatter-add of Gather)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gradserve.engine.errors import GraphError, InputError, ShapeError
from gradserve.engine.ir import MAX_RANK, TensorType, Value, check_type_shape
from gradserve.engine.ops.common import dense_cotangents
from gradserve.engine.optable import Attr, F, OnnxCall, defop, norm_axis, same_dtype

from .common import const, require_index, require_numeric
from .onnx_rules import Spec, ints, reshape, zeros


def _selection_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """An op that reads only what it selects: each output element read and written once, plus the index
    inputs (everything after the first input) read; a huge (possibly broadcast) source costs nothing more."""
    return 2 * sum(t.size for t in outputs) + sum(t.size for t in inputs[1:])


# ---- Concat and Split ----


def _concat_infer(types: list[TensorType], axis: int) -> TensorType:
    """One dtype, one rank, equal lengths off the axis; the axis lengths add up."""
    dt = same_dtype(types, "inputs")
    shapes = [t.shape for t in types]
    rank = len(shapes[0])
    if rank == 0:
        raise ShapeError("cannot concatenate scalars")
    ax = norm_axis(axis, rank)
    if any(len(s) != rank or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:] for s in shapes):
        raise ShapeError(f"shapes {', '.join(map(str, shapes))} must agree except on axis {axis}")
    return TensorType(dt, shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:])


def slice_axis(x: Value, axis: int, start: int, stop: int) -> Value:
    """``x[..., start:stop, ...]`` along a non-negative ``axis``, as a StridedSlice node."""
    full = (1 << axis) - 1
    return F.StridedSlice(
        x, begin=(0,) * axis + (start,), end=(0,) * axis + (stop,), strides=(1,) * (axis + 1),
        begin_mask=full, end_mask=full,
    )


def _concat_vjp(g: Value, out: Value, *xs: Value, axis: int) -> tuple[Value, ...]:
    """Slice the cotangent back into pieces of the inputs' lengths along axis."""
    ax = axis % out.ndim
    bounds = np.cumsum([0] + [x.shape[ax] for x in xs]).tolist()
    return tuple(slice_axis(g, ax, a, b) for a, b in zip(bounds, bounds[1:]))


def _split_infer(types: list[TensorType], axis: int, output_num: int) -> tuple[TensorType, ...]:
    """output_num equal pieces; the axis length must divide evenly."""
    t = types[0]
    if output_num < 1:
        raise GraphError(f"output_num must be at least 1, got {output_num}")
    if not t.shape:
        raise ShapeError("cannot split a scalar")
    ax = norm_axis(axis, len(t.shape))
    if t.shape[ax] % output_num:
        raise ShapeError(f"axis {axis} of shape {t.shape} has length {t.shape[ax]}, not divisible by output_num {output_num}")
    piece = t.shape[:ax] + (t.shape[ax] // output_num,) + t.shape[ax + 1:]
    return (TensorType(t.dtype, piece),) * output_num


def _split(x: np.ndarray, axis: int, output_num: int) -> Any:
    """The pieces as a tuple, or the one piece bare, as the compiler expects."""
    parts = np.split(x, output_num, axis=axis)
    return tuple(parts) if output_num > 1 else parts[0]


def _split_vjp(g: Any, out: Any, x: Value, axis: int, output_num: int) -> Value:
    """Concatenate the pieces' cotangents (a bare Value when there is one piece; zeros for pieces without one)."""
    if not isinstance(g, tuple):
        return F.Concat(g, axis=axis)
    return F.Concat(*dense_cotangents(g, out), axis=axis)


def _split_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Split into equal pieces (an Identity for one piece)."""
    if len(c.y) == 1:
        return [("Identity", c.x, c.y)]
    ax = norm_axis(c.attrs["axis"], len(c.types[0].shape))
    return [("Split", (c.x[0], ints([t.shape[ax] for t in c.out_types])), c.y, {"axis": ax})]


def _slice_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Slice of the sliced axes (starts, ends and steps resolved against the static shape), then a Reshape that
    drops the shrunk axes and inserts the new ones."""
    shape = c.types[0].shape
    spec = {k: v for k, v in c.attrs.items() if k != "shape"}
    index = slice_index(shape, **spec)
    starts, ends, steps, axes = [], [], [], []
    dim = 0
    for item in index:
        if item is Ellipsis:
            dim += len(shape) - sum(1 for i in index if i is not None and i is not Ellipsis)
            continue
        if item is None:
            continue
        if isinstance(item, int):
            start, stop, step = item, item + 1, 1
        else:
            start, stop, step = item.indices(shape[dim])
            if step < 0 and stop < 0:
                stop = -(1 << 63)  # before the first element: ONNX reads a negative end from the back
        starts.append(start)
        ends.append(stop)
        steps.append(step)
        axes.append(dim)
        dim += 1
    t = c.tmp
    sliced = [("Slice", (c.x[0], ints(starts), ints(ends), ints(axes), ints(steps)), (t("s"),))] if axes else \
        [("Identity", (c.x[0],), (t("s"),))]
    return [*sliced, reshape(t("s"), c.out_types[0].shape, c.y[0])]


def _slice_grad_onnx(c: OnnxCall) -> list[Spec]:
    """Zeros of the sliced tensor's shape with dy scattered (ScatterND) to the flat positions the slice reads."""
    shape = tuple(c.attrs["shape"])
    spec = {k: v for k, v in c.attrs.items() if k != "shape"}
    positions = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)[slice_index(shape, **spec)].reshape(-1, 1)
    t = c.tmp
    return [zeros((int(np.prod(shape)),), c.types[0].dtype, t("zeros")), reshape(c.x[0], (positions.shape[0],), t("flat")),
            ("ScatterND", (t("zeros"), positions, t("flat")), (t("scattered"),)), reshape(t("scattered"), shape, c.y[0])]


def _uss_onnx(c: OnnxCall) -> list[Spec]:
    """ScatterND with reduction 'add' into zeros with one extra row, where ids outside [0, num_segments) go; the extra
    row is then sliced off."""
    x, ids = c.x
    t = c.tmp
    num = c.attrs["num_segments"]
    id_type, x_type = c.types[1], c.types[0]
    rest = x_type.shape[len(id_type.shape):]
    return [
        zeros((num + 1,) + rest, x_type.dtype, t("zeros")),
        ("Cast", (ids,), (t("ids"),), {"to": np.dtype(np.int64)}),
        ("Less", (t("ids"), ints([0]).reshape(())), (t("neg"),)),
        ("GreaterOrEqual", (t("ids"), ints([num]).reshape(())), (t("high"),)),
        ("Or", (t("neg"), t("high")), (t("dropped"),)),
        ("Where", (t("dropped"), ints([num]).reshape(()), t("ids")), (t("safe"),)),
        ("Unsqueeze", (t("safe"), ints([len(id_type.shape)])), (t("index"),)),
        ("ScatterND", (t("zeros"), t("index"), x), (t("sums"),), {"reduction": "add"}),
        ("Slice", (t("sums"), ints([0]), ints([num]), ints([0])), c.y),
    ]


def _tile_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Tile, after a Reshape that left-pads x's shape with 1s to the length of multiples."""
    multiples = c.attrs["multiples"]
    if not multiples:
        return [("Identity", c.x, c.y)]
    full = _padded(c.types[0].shape, multiples)
    return [reshape(c.x[0], full, c.tmp("x")), ("Tile", (c.tmp("x"), ints(multiples)), c.y)]


defop(
    "Concat",
    ("x", "xs*"),
    _concat_infer,
    lambda *xs, axis: np.concatenate(xs, axis=axis),
    _concat_vjp,
    attrs={"axis": Attr("int", 0, "the axis to join along")},
    doc="joins tensors along axis; all other dimensions must agree",
    onnx=lambda c: [("Concat", c.x, c.y, {"axis": norm_axis(c.attrs["axis"], len(c.types[0].shape))})],
    functional=("concat", "cat"),
)
defop(
    "Split",
    ("x",),
    _split_infer,
    _split,
    _split_vjp,
    attrs={
        "axis": Attr("int", 0, "the axis to split"),
        "output_num": Attr("int", 1, "number of equal pieces; must divide the axis length"),
    },
    doc="splits x into output_num equal pieces along axis (output_num outputs)",
    outputs=("pieces*",),
    memory="view",
    output_count=lambda attrs: attrs["output_num"],
    onnx=_split_onnx,
)

# ---- StridedSlice and its gradient ----

_MASKS = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")
_SLICE_ATTRS = {
    "begin": Attr("ints", doc="start per slice position"),
    "end": Attr("ints", doc="stop (exclusive) per slice position"),
    "strides": Attr("ints", doc="non-zero step per slice position"),
    "begin_mask": Attr("int", 0, "bit i: ignore begin[i], slice from the start"),
    "end_mask": Attr("int", 0, "bit i: ignore end[i], slice to the end"),
    "ellipsis_mask": Attr("int", 0, "bit i (at most one): position i is ..."),
    "new_axis_mask": Attr("int", 0, "bit i: position i inserts an axis of length 1"),
    "shrink_axis_mask": Attr("int", 0, "bit i: position i takes index begin[i] and drops the axis"),
}


def slice_index(shape: tuple[int, ...], begin: tuple[int, ...], end: tuple[int, ...], strides: tuple[int, ...], **masks: int) -> tuple[Any, ...]:
    """The NumPy basic index equal to a StridedSlice spec (TF mask semantics: bit i is position i)."""
    n = len(begin)
    if len(end) != n or len(strides) != n:
        raise GraphError(f"begin {begin}, end {end} and strides {strides} must have one length")
    for name in _MASKS:
        if masks[name] < 0 or masks[name] >> n:
            raise GraphError(f"{name} {masks[name]} sets bits beyond the {n} slice positions")
    ellipsis, new_axis, shrink = masks["ellipsis_mask"], masks["new_axis_mask"], masks["shrink_axis_mask"]
    if ellipsis & (ellipsis - 1):
        raise GraphError(f"ellipsis_mask {ellipsis} may set at most one bit")
    sliced = sum(1 for i in range(n) if not (ellipsis | new_axis) >> i & 1)
    if sliced > len(shape):
        raise ShapeError(f"{sliced} sliced positions exceed the rank of shape {shape}")
    index: list[Any] = []
    dim = 0
    for i in range(n):
        bit = 1 << i
        if ellipsis & bit:
            index.append(Ellipsis)
            dim += len(shape) - sliced
        elif new_axis & bit:
            index.append(None)
        elif shrink & bit:
            d = shape[dim]
            if not -d <= begin[i] < d:
                raise ShapeError(f"shrink index {begin[i]} is out of range for axis {dim} of shape {shape}")
            index.append(begin[i] % d)
            dim += 1
        else:
            if strides[i] == 0:
                raise GraphError(f"strides {strides} must be non-zero")
            b = None if masks["begin_mask"] & bit else begin[i]
            e = None if masks["end_mask"] & bit else end[i]
            index.append(slice(b, e, strides[i]))
            dim += 1
    return tuple(index)


def sliced_shape(shape: tuple[int, ...], index: tuple[Any, ...]) -> tuple[int, ...]:
    """The shape of ``x[index]`` for any x of ``shape``, without allocating x."""
    check_type_shape(shape, "the sliced shape")
    if len(shape) + sum(i is None for i in index) - sum(isinstance(i, int) for i in index) > MAX_RANK:
        raise ShapeError(f"the slice of shape {shape} would have more than {MAX_RANK} dimensions")
    return np.broadcast_to(np.empty((), np.int8), shape)[index].shape


def _slice_infer(types: list[TensorType], begin: tuple[int, ...], end: tuple[int, ...], strides: tuple[int, ...], **masks: int) -> TensorType:
    """The shape of the slice, checking the spec against x's shape."""
    t = types[0]
    return TensorType(t.dtype, sliced_shape(t.shape, slice_index(t.shape, begin, end, strides, **masks)))


def _slice(x: np.ndarray, begin: tuple[int, ...], end: tuple[int, ...], strides: tuple[int, ...], **masks: int) -> np.ndarray:
    """x sliced by the spec, as an array even when every axis is shrunk."""
    return np.asarray(x[slice_index(x.shape, begin, end, strides, **masks)])


def _slice_grad_infer(types: list[TensorType], shape: tuple[int, ...], **spec: Any) -> TensorType:
    """The padded shape; dy must have the shape of that shape's slice."""
    if any(d < 0 for d in shape):
        raise GraphError(f"shape {shape} has a negative dimension")
    want = sliced_shape(shape, slice_index(shape, **spec))
    if types[0].shape != want:
        raise ShapeError(f"dy has shape {types[0].shape}, but the slice of shape {shape} has shape {want}")
    return TensorType(types[0].dtype, shape)


def _slice_grad(dy: np.ndarray, shape: tuple[int, ...], **spec: Any) -> np.ndarray:
    """Zeros of shape with dy written into the sliced positions."""
    out = np.zeros(shape, dy.dtype)
    out[slice_index(shape, **spec)] = dy
    return out


defop(
    "StridedSlice",
    ("x",),
    _slice_infer,
    _slice,
    lambda g, out, x, **spec: F.StridedSliceGrad(g, shape=x.shape, **spec),
    attrs=_SLICE_ATTRS,
    doc="x[begin:end:strides] per position, with TF/MindSpore bitmasks",
    memory="maybe_view",
    cost=_selection_cost,
    call_attrs=("begin", "end", "strides"),
    onnx=_slice_onnx,
    functional="strided_slice",
)
defop(
    "StridedSliceGrad",
    ("dy",),
    _slice_grad_infer,
    _slice_grad,
    lambda g, out, dy, shape, **spec: F.StridedSlice(g, **spec),
    attrs={"shape": Attr("ints", doc="shape of the sliced tensor"), **_SLICE_ATTRS},
    doc="zeros of shape with dy written where StridedSlice with the same spec reads",
    call_attrs=("shape", "begin", "end", "strides"),
    onnx=_slice_grad_onnx,
)

# ---- Gather and UnsortedSegmentSum ----


def _gather_infer(types: list[TensorType], axis: int, batch_dims: int) -> TensorType:
    """params[:axis] + indices + params[axis+1:], with int32/int64 indices."""
    p, i = types
    if batch_dims != 0:
        raise GraphError(f"only batch_dims=0 is supported, got {batch_dims}")
    require_index(i)
    if not p.shape:
        raise ShapeError("params must have rank >= 1, got a scalar")
    ax = norm_axis(axis, len(p.shape))
    return TensorType(p.dtype, p.shape[:ax] + i.shape + p.shape[ax + 1:])


def _gather(params: np.ndarray, indices: np.ndarray, axis: int, batch_dims: int) -> np.ndarray:
    """np.take, except that indices outside [0, n) are an error, as on MindSpore's CPU and GPU."""
    ax = axis % params.ndim
    n = params.shape[ax]
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        raise InputError(f"Gather: index {indices[bad].flat[0]} is out of range [0, {n}) for axis {ax} of params {params.shape}")
    return np.asarray(np.take(params, indices, axis=ax))


def _gather_vjp(g: Value, out: Value, params: Value, indices: Value, axis: int, batch_dims: int) -> tuple[Value, None]:
    """Scatter-add the cotangent into params' shape: move the index axes first, sum by segment, move back."""
    ax = axis % params.ndim
    k = indices.ndim
    if ax == 0:
        return F.UnsortedSegmentSum(g, indices, num_segments=params.shape[0]), None
    front = tuple(range(ax, ax + k)) + tuple(range(ax)) + tuple(range(ax + k, g.ndim))
    summed = F.UnsortedSegmentSum(F.Transpose(g, perm=front), indices, num_segments=params.shape[ax])
    back = tuple(range(1, ax + 1)) + (0,) + tuple(range(ax + 1, params.ndim))
    return F.Transpose(summed, perm=back), None


def _uss_infer(types: list[TensorType], num_segments: int) -> TensorType:
    """(num_segments,) + x[ids.ndim:], where segment_ids' shape must prefix x's."""
    x, ids = types
    require_numeric(x, "x")
    require_index(ids, "segment_ids")
    if num_segments < 0:
        raise GraphError(f"num_segments must be >= 0, got {num_segments}")
    if x.shape[: len(ids.shape)] != ids.shape:
        raise ShapeError(f"segment_ids shape {ids.shape} must be a prefix of x shape {x.shape}")
    return TensorType(x.dtype, (num_segments,) + x.shape[len(ids.shape):])


def _uss(x: np.ndarray, ids: np.ndarray, num_segments: int) -> np.ndarray:
    """Sum x's rows by segment id; ids outside [0, num_segments) are dropped, as in MindSpore."""
    out = np.zeros((num_segments,) + x.shape[ids.ndim:], x.dtype)
    keep = (ids >= 0) & (ids < num_segments)
    np.add.at(out, ids[keep], x[keep])
    return out


def _uss_vjp(g: Value, out: Value, x: Value, ids: Value, num_segments: int) -> tuple[Value, None]:
    """Gather the cotangent by id; dropped ids read an appended zero row, so they get zero gradient."""
    padded = F.Concat(g, F.ReduceSum(F.ZerosLike(g), axis=(0,), keep_dims=True), axis=0)
    last = const(ids, num_segments)
    safe = F.Select(F.Less(ids, const(ids, 0)), last, F.Minimum(ids, last))
    return F.Gather(padded, safe, axis=0), None


defop(
    "Gather",
    ("params", "indices"),
    _gather_infer,
    _gather,
    _gather_vjp,
    attrs={
        "axis": Attr("int", doc="the axis of params that indices select along"),
        "batch_dims": Attr("int", 0, "leading batch dimensions; only 0 is supported"),
    },
    nondiff=("indices",),
    doc="params.take(indices, axis): shape params[:axis] + indices + params[axis+1:]",
    cost=_selection_cost,
    call_attrs=("axis",),
    onnx=lambda c: [("Gather", c.x, c.y, {"axis": norm_axis(c.attrs["axis"], len(c.types[0].shape))})],
    functional="gather",
)
defop(
    "UnsortedSegmentSum",
    ("x", "segment_ids"),
    _uss_infer,
    _uss,
    _uss_vjp,
    attrs={"num_segments": Attr("int", doc="number of output rows")},
    nondiff=("segment_ids",),
    doc="out[i] = sum of x[j] over j with segment_ids[j] == i; shape (num_segments,) + x[ids.ndim:]",
    scratch=2,
    call_attrs=("num_segments",),
    onnx=_uss_onnx,
    functional="unsorted_segment_sum",
)

# ---- Tile ----


def _padded(shape: tuple[int, ...], multiples: tuple[int, ...]) -> tuple[int, ...]:
    """x's shape left-padded with 1s to the length of multiples."""
    return (1,) * (len(multiples) - len(shape)) + shape


def _tile_infer(types: list[TensorType], multiples: tuple[int, ...]) -> TensorType:
    """Each axis of the left-padded shape times its multiple."""
    t = types[0]
    if len(multiples) < len(t.shape):
        raise ShapeError(f"multiples {multiples} are fewer than the {len(t.shape)} axes of shape {t.shape}")
    if any(m < 1 for m in multiples):
        raise GraphError(f"multiples {multiples} must be positive")
    return TensorType(t.dtype, tuple(d * m for d, m in zip(_padded(t.shape, multiples), multiples)))


def _tile_vjp(g: Value, out: Value, x: Value, multiples: tuple[int, ...]) -> Value:
    """View the cotangent as (m0, d0, m1, d1, ...) and sum over the copies."""
    if not multiples:
        return g
    split = tuple(v for m, d in zip(multiples, _padded(x.shape, multiples)) for v in (m, d))
    summed = F.ReduceSum(F.Reshape(g, shape=split), axis=tuple(range(0, len(split), 2)))
    return F.Reshape(summed, shape=x.shape)


defop(
    "Tile",
    ("x",),
    _tile_infer,
    lambda x, multiples: np.tile(x, multiples),
    _tile_vjp,
    attrs={"multiples": Attr("ints", doc="copies per axis; x's shape is left-padded with 1s to this length")},
    doc="repeats x multiples[i] times along axis i",
    call_attrs=("multiples",),
    onnx=_tile_onnx,
    functional="tile",
)
