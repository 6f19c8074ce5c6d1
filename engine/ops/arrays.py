"""Array assembly and selection: AddN, Stack, Unstack, Pad, PadV3 (and its adjoint PadV3Grad), OneHot and TopK."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.ops.common import dense_cotangents
from gradserve.engine.optable import Attr, F, OnnxCall, defop, norm_axis, same_dtype

from .common import require_index, require_numeric
from .onnx_rules import Spec, ints, reshape

# ---- AddN ----


def _addn_infer(types: list[TensorType]) -> TensorType:
    """One numeric dtype and one shape for every input."""
    dt = same_dtype(types, "inputs")
    require_numeric(types[0], "inputs")
    shapes = {t.shape for t in types}
    if len(shapes) != 1:
        raise ShapeError(f"inputs must share one shape, got {', '.join(str(t.shape) for t in types[:8])}")
    return TensorType(dt, types[0].shape)


def _addn(*xs: np.ndarray) -> np.ndarray:
    """Sum into one new buffer."""
    out = np.array(xs[0], copy=True)
    for x in xs[1:]:
        out += x
    return out


def _addn_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Sum for floats; a chain of Adds for integers, which Sum does not take."""
    if c.types[0].dtype.kind == "f":
        return [("Sum", c.x, c.y)]
    if len(c.x) == 1:
        return [("Identity", c.x, c.y)]
    acc, specs = c.x[0], []
    for k, x in enumerate(c.x[1:], 1):
        out = c.y[0] if k == len(c.x) - 1 else c.tmp(str(k))
        specs.append(("Add", (acc, x), (out,)))
        acc = out
    return specs


defop("AddN", ("x", "xs*"), _addn_infer, _addn, lambda g, out, *xs: (g,) * len(xs), doc="elementwise sum of inputs of one shape",
      onnx=_addn_onnx, functional="addn")

# ---- Stack and Unstack ----


def _stack_infer(types: list[TensorType], axis: int) -> TensorType:
    """Inputs of one dtype and shape; a new axis of length len(inputs) at axis."""
    dt = same_dtype(types, "inputs")
    shape = types[0].shape
    if any(t.shape != shape for t in types):
        raise ShapeError(f"inputs must share one shape, got {', '.join(str(t.shape) for t in types[:8])}")
    ax = norm_axis(axis, len(shape) + 1)
    return TensorType(dt, shape[:ax] + (len(types),) + shape[ax:])


def _stack_vjp(g: Value, out: Value, *xs: Value, axis: int) -> tuple[Value, ...] | Value:
    """Unstack the cotangent."""
    parts = F.Unstack(g, axis=axis)
    return parts if isinstance(parts, tuple) else (parts,)


def _unstack_infer(types: list[TensorType], axis: int, num: int) -> tuple[TensorType, ...]:
    """x.shape[axis] outputs (num, when given, must equal it) of x's shape without that axis."""
    t = types[0]
    if not t.shape:
        raise ShapeError("cannot unstack a scalar")
    ax = norm_axis(axis, len(t.shape))
    n = t.shape[ax]
    if num not in (-1, n):
        raise ShapeError(f"num {num} differs from the length {n} of axis {axis} of shape {t.shape}")
    if n < 1:
        raise ShapeError(f"axis {axis} of shape {t.shape} is empty: there is nothing to unstack")
    return (TensorType(t.dtype, t.shape[:ax] + t.shape[ax + 1:]),) * n


def _unstack(x: np.ndarray, axis: int, num: int) -> Any:
    """The slices along axis as a tuple (the one slice bare, as the compiler expects)."""
    parts = tuple(np.moveaxis(x, axis, 0))
    return parts if len(parts) > 1 else parts[0]


def _unstack_vjp(g: Any, out: Any, x: Value, axis: int, num: int) -> Value:
    """Stack the slices' cotangents, zeros for slices without one."""
    gs = g if isinstance(g, tuple) else (g,)
    os = out if isinstance(out, tuple) else (out,)
    return F.Stack(*dense_cotangents(gs, os), axis=axis)


def _stack_onnx(c: OnnxCall) -> list[Spec]:
    """Each input reshaped with the new axis, then one Concat along it."""
    shape = c.out_types[0].shape
    ax = norm_axis(c.attrs["axis"], len(shape))
    piece = shape[:ax] + (1,) + shape[ax + 1:]
    parts = [c.tmp(str(i)) for i in range(len(c.x))]
    return [*(reshape(x, piece, p) for x, p in zip(c.x, parts)), ("Concat", tuple(parts), c.y, {"axis": ax})]


def _unstack_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Split into pieces of length 1 along the axis, each reshaped without it."""
    ax = norm_axis(c.attrs["axis"], len(c.types[0].shape))
    parts = [c.tmp(str(i)) for i in range(len(c.y))]
    split: Spec = ("Split", (c.x[0], ints([1] * len(c.y))), tuple(parts), {"axis": ax}) if len(c.y) > 1 else \
        ("Identity", c.x, tuple(parts))
    return [split, *(reshape(p, t.shape, y) for p, t, y in zip(parts, c.out_types, c.y))]


def _pad_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Pad with zeros: all befores, then all afters."""
    pairs = _pairs(c.attrs["paddings"], len(c.types[0].shape))
    if not pairs:
        return [("Identity", c.x, c.y)]
    return [("Pad", (c.x[0], ints([b for b, _ in pairs] + [a for _, a in pairs])), c.y)]


def _onehot_onnx(c: OnnxCall) -> list[Spec]:
    """on where the new axis's position equals the index: Equal against a range constant, then Where (ONNX OneHot
    counts negative indices from the end, which this op does not)."""
    (i, on, off), t = c.x, c.tmp
    depth, rank = c.attrs["depth"], len(c.types[0].shape)
    ax = norm_axis(c.attrs["axis"], rank + 1)
    positions = np.arange(depth, dtype=c.types[0].dtype).reshape((depth,) + (1,) * (rank - ax))
    return [("Unsqueeze", (i, ints([ax])), (t("i"),)), ("Equal", (t("i"), positions), (t("hot"),)), ("Where", (t("hot"), on, off), c.y)]


defop(
    "Stack",
    ("x", "xs*"),
    _stack_infer,
    lambda *xs, axis: np.stack(xs, axis=axis),
    _stack_vjp,
    attrs={"axis": Attr("int", 0, "where the new axis goes")},
    doc="stacks inputs of one shape along a new axis",
    onnx=_stack_onnx,
    functional="stack",
)
defop(
    "Unstack",
    ("x",),
    _unstack_infer,
    _unstack,
    _unstack_vjp,
    attrs={"axis": Attr("int", 0, "the axis to take apart"), "num": Attr("int", -1, "the number of outputs; -1 (MindSpore's None): x.shape[axis]")},
    doc="the x.shape[axis] slices along axis, each without that axis (x.shape[axis] outputs)",
    outputs=("ys*",),
    memory="view",
    onnx=_unstack_onnx,
    functional="unstack",
)

# ---- Pad ----


def _pairs(paddings: tuple[int, ...], rank: int) -> tuple[tuple[int, int], ...]:
    """The flat (before_0, after_0, before_1, after_1, ...) attribute as pairs, one per axis, non-negative."""
    if len(paddings) != 2 * rank:
        raise GraphError(f"paddings must hold 2 values per axis ({2 * rank} for rank {rank}), got {len(paddings)}")
    if min(paddings, default=0) < 0:
        raise GraphError(f"paddings must be non-negative, got {paddings}")
    return tuple(zip(paddings[::2], paddings[1::2]))


def _pad_vjp(g: Value, out: Value, x: Value, paddings: tuple[int, ...]) -> Value:
    """The cotangent with the padding sliced off."""
    if not x.ndim:
        return g
    pairs = _pairs(paddings, x.ndim)
    return F.StridedSlice(g, begin=tuple(b for b, _ in pairs), end=tuple(b + d for (b, _), d in zip(pairs, x.shape)), strides=(1,) * x.ndim)


def flat_pairs(paddings: Any) -> Any:
    """MindSpore's ((before, after), ...) as the flat (before_0, after_0, ...) this op takes; flat ints pass through."""
    if isinstance(paddings, np.ndarray):
        return tuple(paddings.reshape(-1).tolist())
    if isinstance(paddings, (tuple, list)) and paddings and all(isinstance(p, (tuple, list)) for p in paddings):
        return tuple(v for p in paddings for v in p)
    return paddings


defop(
    "Pad",
    ("x",),
    lambda t, paddings: TensorType(t[0].dtype, tuple(d + b + a for d, (b, a) in zip(t[0].shape, _pairs(paddings, len(t[0].shape))))),
    lambda x, paddings: np.pad(x, _pairs(paddings, x.ndim)) if x.ndim else x.copy(),
    _pad_vjp,
    attrs={"paddings": Attr("ints", doc="MindSpore's ((before, after), ...) flattened: before_0, after_0, before_1, after_1, ...",
                            convert=flat_pairs)},
    doc="pads x with zeros, paddings[2i] before and paddings[2i+1] after axis i",
    onnx=_pad_onnx,
)

# ---- PadV3: reflect, edge and circular padding ----

PAD_MODES = ("reflect", "edge", "circular")
"""PadV3's modes (MindSpore's names; its 'constant' is the Pad op): 'reflect' mirrors without repeating the edge,
'edge' repeats the edge (``ops.pad``'s 'replicate'), 'circular' wraps around."""


def _sources(mode: str, n: int, before: int, after: int) -> np.ndarray:
    """The input position each output position along one axis of length ``n`` reads."""
    p = np.arange(-before, n + after)
    if mode == "reflect":
        p = np.abs(p)
        return np.where(p > n - 1, 2 * (n - 1) - p, p)
    if mode == "edge":
        return np.clip(p, 0, n - 1)
    return p % n


def _check_mode(mode: str, pairs: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> None:
    """A known mode, and amounts the unpadded ``shape`` can give: reflect needs each below the axis's length, every
    mode a non-empty axis where it pads."""
    if mode not in PAD_MODES:
        raise GraphError(f"mode must be one of {PAD_MODES}, got {mode!r}")
    for i, ((b, a), n) in enumerate(zip(pairs, shape)):
        if (b or a) and n < 1:
            raise ShapeError(f"axis {i} of shape {shape} is empty: there is nothing to pad it with")
        if mode == "reflect" and max(b, a) >= n and (b or a):
            raise ShapeError(f"reflect padding ({b}, {a}) of axis {i} must be less than its length {n} (shape {shape})")


def _padv3_infer(types: list[TensorType], paddings: tuple[int, ...], mode: str) -> TensorType:
    """Each axis grows by its pair; the amounts must suit the mode."""
    t = types[0]
    pairs = _pairs(paddings, len(t.shape))
    _check_mode(mode, pairs, t.shape)
    return TensorType(t.dtype, tuple(d + b + a for d, (b, a) in zip(t.shape, pairs)))


def _padv3(x: np.ndarray, paddings: tuple[int, ...], mode: str) -> np.ndarray:
    """One take per padded axis from the positions it reads."""
    out = x
    for ax, (b, a) in enumerate(_pairs(paddings, x.ndim)):
        if b or a:
            out = np.take(out, _sources(mode, x.shape[ax], b, a), axis=ax)
    return out if out is not x else x.copy()


def _padv3_grad_infer(types: list[TensorType], paddings: tuple[int, ...], mode: str) -> TensorType:
    """Each axis shrinks by its pair (to the shape PadV3 pads from); numeric dy."""
    t = types[0]
    require_numeric(t, "dy")
    pairs = _pairs(paddings, len(t.shape))
    shape = tuple(d - b - a for d, (b, a) in zip(t.shape, pairs))
    if min(shape, default=0) < 0:
        raise ShapeError(f"paddings {paddings} remove more than the shape {t.shape} holds")
    _check_mode(mode, pairs, shape)
    return TensorType(t.dtype, shape)


def _padv3_grad(dy: np.ndarray, paddings: tuple[int, ...], mode: str) -> np.ndarray:
    """Each padded axis summed back into the positions PadV3 read (a scatter-add), last axis first."""
    out = dy
    pairs = _pairs(paddings, dy.ndim)
    for ax in reversed(range(dy.ndim)):
        b, a = pairs[ax]
        if b or a:
            n = out.shape[ax] - b - a
            moved = np.moveaxis(out, ax, 0)
            summed = np.zeros((n,) + moved.shape[1:], dy.dtype)
            np.add.at(summed, _sources(mode, n, b, a), moved)
            out = np.moveaxis(summed, 0, ax)
    return np.ascontiguousarray(out) if out is not dy else dy.copy()


def _steps_bytes(grow: int) -> Callable[[Any, Any, dict[str, Any]], int]:
    """An op entry's ``scratch_bytes``: the bytes of the arrays made one padded axis at a time from its input's shape
    (``grow`` 1: adding each pair, PadV3's takes; -1: removing them last axis first, PadV3Grad's sums), the result
    included (a bound of what a step holds besides its output, which the last of them may be copied into)."""
    return lambda i, o, attrs: _padded_bytes(i[0].shape, _pairs(attrs["paddings"], len(i[0].shape)), grow, i[0].dtype.itemsize)


def _padded_bytes(start: tuple[int, ...], pairs: tuple[tuple[int, int], ...], grow: int, itemsize: int) -> int:
    """``_steps_bytes`` for an input of shape ``start`` padded by ``pairs``."""
    shape, total = list(start), 0
    order = range(len(pairs)) if grow > 0 else reversed(range(len(pairs)))
    for ax in order:
        b, a = pairs[ax]
        if b or a:
            shape[ax] += grow * (b + a)
            total += math.prod(shape) * itemsize
    return total


def _padv3_onnx(c: OnnxCall) -> list[Spec]:
    """One Gather per padded axis from the positions it reads (any opset: ONNX Pad's 'wrap' needs 19)."""
    shape = c.types[0].shape
    pairs = [(ax, b, a) for ax, (b, a) in enumerate(_pairs(c.attrs["paddings"], len(shape))) if b or a]
    if not pairs:
        return [("Identity", c.x, c.y)]
    specs, cur = [], c.x[0]
    for k, (ax, b, a) in enumerate(pairs):
        nxt = c.y[0] if k == len(pairs) - 1 else c.tmp(str(ax))
        specs.append(("Gather", (cur, ints(_sources(c.attrs["mode"], shape[ax], b, a).tolist())), (nxt,), {"axis": ax}))
        cur = nxt
    return specs


def _padv3_grad_onnx(c: OnnxCall) -> list[Spec]:
    """One Einsum per padded axis with the 0/1 matrix that sums each padded position into the one it was read from."""
    shape, dt = c.types[0].shape, c.types[0].dtype
    pairs = [(ax, b, a) for ax, (b, a) in enumerate(_pairs(c.attrs["paddings"], len(shape))) if b or a]
    if not pairs:
        return [("Identity", c.x, c.y)]
    letters = "abcdefghijklmnopqrstuvwxy"[: len(shape)]
    specs, cur = [], c.x[0]
    for k, (ax, b, a) in reversed(list(enumerate(pairs))):
        n = shape[ax] - b - a
        src = _sources(c.attrs["mode"], n, b, a)
        matrix = np.zeros((len(src), n), dt)
        matrix[np.arange(len(src)), src] = 1
        nxt = c.y[0] if k == 0 else c.tmp(str(ax))
        out = letters[:ax] + "z" + letters[ax + 1:]
        specs.append(("Einsum", (cur, matrix), (nxt,), {"equation": f"{letters},{letters[ax]}z->{out}"}))
        cur = nxt
    return specs


_PAD_MODE_ATTRS = {
    "paddings": Attr("ints", doc="before_0, after_0, before_1, after_1, ... (Pad's form), each non-negative", convert=flat_pairs),
    "mode": Attr("str", "reflect", "'reflect' (mirrored, edge not repeated), 'edge' (edge repeated) or 'circular' (wrapped)"),
}
defop(
    "PadV3",
    ("x",),
    _padv3_infer,
    _padv3,
    lambda g, out, x, paddings, mode: F.PadV3Grad(g, paddings=paddings, mode=mode),
    attrs=_PAD_MODE_ATTRS,
    doc="pads x along each axis with values of x itself: mirrored ('reflect'), the edge repeated ('edge') or wrapped ('circular')",
    public=False,
    scratch_bytes=_steps_bytes(1),
    onnx=_padv3_onnx,
)
defop(
    "PadV3Grad",
    ("dy",),
    _padv3_grad_infer,
    _padv3_grad,
    lambda g, out, dy, paddings, mode: F.PadV3(g, paddings=paddings, mode=mode),
    attrs=_PAD_MODE_ATTRS,
    doc="PadV3's adjoint: each element of dy added to the position of x PadV3 read it from (a scatter-add)",
    public=False,
    scratch_bytes=_steps_bytes(-1),
    onnx=_padv3_grad_onnx,
)

# ---- OneHot ----


def _onehot_infer(types: list[TensorType], depth: int, axis: int) -> TensorType:
    """int indices, 0-d on_value and off_value of one dtype; a new axis of length depth at axis."""
    i, on, off = types
    require_index(i)
    dt = same_dtype([on, off], "on_value and off_value")
    if on.shape or off.shape:
        raise ShapeError(f"on_value and off_value must be scalars, got shapes {on.shape} and {off.shape}")
    if depth < 0:
        raise GraphError(f"depth must be >= 0, got {depth}")
    ax = norm_axis(axis, len(i.shape) + 1)
    return TensorType(dt, i.shape[:ax] + (depth,) + i.shape[ax:])


def _hot(indices: np.ndarray, depth: int, axis: int) -> np.ndarray:
    """The bool mask: True where the new axis's position equals the index (indices outside [0, depth) match none)."""
    ax = axis % (indices.ndim + 1)
    positions = np.arange(depth).reshape((depth,) + (1,) * (indices.ndim - ax))
    return np.expand_dims(indices, ax) == positions


def _onehot_vjp(g: Value, out: Value, indices: Value, on: Value, off: Value, depth: int, axis: int) -> tuple[None, Value, Value]:
    """on_value gets the cotangent summed over the hot positions, off_value over the others."""
    zero = F.ZerosLike(g)
    b = indices.builder
    ax = axis % (indices.ndim + 1)
    positions = b.const(np.arange(depth, dtype=indices.dtype).reshape((depth,) + (1,) * (indices.ndim - ax)))  # type: ignore[union-attr]
    hot = F.Equal(F.ExpandDims(indices, axis=ax), positions)
    return None, F.ReduceSum(F.Select(hot, g, zero)), F.ReduceSum(F.Select(hot, zero, g))


defop(
    "OneHot",
    ("indices", "on_value", "off_value"),
    _onehot_infer,
    lambda i, on, off, depth, axis: np.where(_hot(i, depth, axis), on, off),
    _onehot_vjp,
    attrs={"depth": Attr("int", doc="length of the new axis (an input in MindSpore, an attribute here)"),
           "axis": Attr("int", -1, "where the new axis goes")},
    nondiff=("indices",),
    doc="on_value where the new axis's position equals the index, off_value elsewhere",
    call_attrs=("depth",),
    call_order=("indices", "depth", "on_value", "off_value"),
    onnx=_onehot_onnx,
    functional="one_hot",
)

# ---- TopK ----


def _topk_infer(types: list[TensorType], k: int, sorted: bool) -> tuple[TensorType, TensorType]:
    """Numeric x of rank >= 1 with 0 <= k <= its last dimension; values and int32 indices of shape (.., k)."""
    t = types[0]
    require_numeric(t, "x")
    if not t.shape:
        raise ShapeError("x must have rank >= 1, got a scalar")
    if not 0 <= k <= t.shape[-1]:
        raise ShapeError(f"k {k} must be in [0, {t.shape[-1]}] for the last axis of shape {t.shape}")
    shape = t.shape[:-1] + (k,)
    return TensorType(t.dtype, shape), TensorType(np.dtype(np.int32), shape)


def _topk(x: np.ndarray, k: int, sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k largest along the last axis, largest first, ties by lower index (a stable sort of -x)."""
    descending = -x if x.dtype.kind == "f" else ~x  # ~x reverses the order of any integer without overflow
    idx = np.argsort(descending, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, axis=-1), idx.astype(np.int32)


def _topk_vjp(g: tuple[Value | None, Value | None], out: tuple[Value, Value], x: Value, k: int, sorted: bool) -> Value:
    """Scatter the values' cotangent back to the chosen positions (a flat UnsortedSegmentSum, whose rule is a Gather)."""
    if g[0] is None:
        return F.ZerosLike(x)
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    offsets = x.builder.const((np.arange(rows, dtype=np.int64) * n).reshape(x.shape[:-1] + (1,)))  # type: ignore[union-attr]
    flat = F.Reshape(F.Cast(out[1], dtype="int64") + offsets, shape=(-1,))
    return F.Reshape(F.UnsortedSegmentSum(F.Reshape(g[0], shape=(-1,)), flat, num_segments=math.prod(x.shape)), shape=x.shape)


defop(
    "TopK",
    ("x",),
    _topk_infer,
    _topk,
    _topk_vjp,
    attrs={"k": Attr("int", doc="how many (an input in MindSpore, an attribute here)"), "sorted": Attr("bool", True, "largest first (always so here)")},
    doc="the k largest elements along the last axis and their int32 indices; the gradient goes to the chosen positions",
    outputs=("values", "indices"),
    scratch=9,  # the int64 sort order (8 bytes per element, for inputs of any itemsize) and the negated copy
    call_attrs=("k",),
    onnx=lambda c: [("TopK", (c.x[0], ints([c.attrs["k"]])), (c.y[0], c.tmp("i")), {"axis": -1, "largest": 1, "sorted": 1}),
                    ("Cast", (c.tmp("i"),), (c.y[1],), {"to": np.dtype(np.int32)})],
)
