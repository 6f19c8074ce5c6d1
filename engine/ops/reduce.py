"""Reductions over axes (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, LogSumExp; axis=() reduces every
axis), the scan CumSum, the index reductions Argmax and Argmin, and ArgMaxWithValue and ArgMinWithValue (an index
and its value along one axis, the gradient to that index alone)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from gradserve.engine.errors import DTypeError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, OnnxRule, defop, norm_axis, require_float, require_nonempty

from .common import INDEX_DTYPES, const, require_numeric, zero_grad
from .onnx_rules import Spec, ints, reduce

_ATTRS = {
    "axis": Attr("ints", (), "axes to reduce; () reduces all"),
    "keep_dims": Attr("bool", False, "keep reduced axes with length 1"),
}


def axes_of(axis: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """The reduced axes, non-negative and sorted; () means all (a scalar has none to reduce)."""
    if not axis:
        return tuple(range(ndim))
    return tuple(a for a in sorted({norm_axis(a, ndim) for a in axis}) if a < ndim)


def kept_shape(shape: tuple[int, ...], axis: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with the reduced axes set to 1."""
    ax = set(axes_of(axis, len(shape)))
    return tuple(1 if i in ax else d for i, d in enumerate(shape))


def _infer(floats: bool, identity: bool = True) -> Callable[..., TensorType]:
    """Inference for a reduction; ``floats`` restricts it to float dtypes; without an ``identity``
    (max) no reduced axis may be empty."""

    def infer(types: list[TensorType], axis: tuple[int, ...], keep_dims: bool) -> TensorType:
        """x's dtype; the reduced axes dropped, or kept as length 1."""
        t = types[0]
        if floats:
            require_float(t, "x")
        ax = set(axes_of(axis, len(t.shape)))
        if not identity:
            require_nonempty(t.shape, sorted(ax), "the reduction")
        if keep_dims:
            return TensorType(t.dtype, kept_shape(t.shape, axis))
        return TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in ax))

    return infer


def _np(fn: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """A NumPy reduction computed and returned in x's own dtype (a bool sum is a logical or)."""

    def forward(x: np.ndarray, axis: tuple[int, ...], keep_dims: bool) -> np.ndarray:
        """``fn`` over the axes, with dtype= so integer sums stay in x's dtype."""
        return np.asarray(fn(x, axis=axes_of(axis, x.ndim), keepdims=keep_dims, dtype=x.dtype))

    return forward


def _expand(g: Value, x: Value, axis: tuple[int, ...]) -> Value:
    """Broadcast a reduced cotangent back to x's shape."""
    return F.BroadcastTo(F.Reshape(g, shape=kept_shape(x.shape, axis)), shape=x.shape)


def _count(x: Value, axis: tuple[int, ...]) -> int:
    """How many elements each output of a reduction of x over ``axis`` combines."""
    return math.prod(x.shape[a] for a in axes_of(axis, x.ndim))


def _reduce_onnx(op_type: str) -> OnnxRule:
    """The ONNX reduction over the op's axes (all when axis is ()), keeping them when keep_dims."""

    def rule(c: OnnxCall) -> list[Spec]:
        """One reduction node (an Identity when there is no axis to reduce)."""
        return [reduce(op_type, c.x[0], axes_of(c.attrs["axis"], len(c.types[0].shape)), c.attrs["keep_dims"], c.y[0])]

    return rule


def _max_vjp(g: Value, out: Value, x: Value, axis: tuple[int, ...], keep_dims: bool) -> Value:
    """Tied maxima share the gradient evenly (MindSpore's MinOrMaxGrad)."""
    mask = F.Cast(F.Equal(x, _expand(out, x, axis)), dtype=x.dtype)
    ties = _expand(F.ReduceSum(mask, axis=axis, keep_dims=True), x, axis)
    return _expand(g, x, axis) * mask / ties


defop("ReduceSum", ("x",), _infer(False), _np(np.sum), lambda g, out, x, axis, keep_dims: _expand(g, x, axis), attrs=_ATTRS, doc="sum over axes", call_attrs=("axis",),
      onnx=_reduce_onnx("ReduceSum"), functional="reduce_sum")
defop(
    "ReduceMean",
    ("x",),
    _infer(True),
    _np(np.mean),
    lambda g, out, x, axis, keep_dims: _expand(g, x, axis) / _count(x, axis),
    attrs=_ATTRS,
    doc="mean over axes",
    call_attrs=("axis",),
    onnx=_reduce_onnx("ReduceMean"),
)
defop(
    "ReduceMax",
    ("x",),
    _infer(False, identity=False),
    lambda x, axis, keep_dims: np.asarray(np.max(x, axis=axes_of(axis, x.ndim), keepdims=keep_dims)),
    _max_vjp,
    attrs=_ATTRS,
    doc="max over axes; tied maxima share the gradient evenly",
    call_attrs=("axis",),
    onnx=_reduce_onnx("ReduceMax"),
)
defop(
    "ReduceMin",
    ("x",),
    _infer(False, identity=False),
    lambda x, axis, keep_dims: np.asarray(np.min(x, axis=axes_of(axis, x.ndim), keepdims=keep_dims)),
    _max_vjp,
    attrs=_ATTRS,
    doc="min over axes; tied minima share the gradient evenly",
    call_attrs=("axis",),
    onnx=_reduce_onnx("ReduceMin"),
)


def _prod_vjp(g: Value, out: Value, x: Value, axis: tuple[int, ...], keep_dims: bool) -> Value:
    """The product of the other elements, exact with zeros: out / x where x != 0; where x == 0, the product of
    the non-zero elements when it is the group's only zero, else 0. Higher orders are exact wherever a product
    has at most one zero (with two, the mixed second derivative of the two zeros is lost, as in MindSpore)."""
    zero = F.Equal(x, const(x, 0))
    ones = F.OnesLike(x)
    others_nonzero = _expand(F.ReduceProd(F.Select(zero, ones, x), axis=axis, keep_dims=True), x, axis)
    zeros = _expand(F.ReduceSum(F.Cast(zero, dtype=x.dtype), axis=axis, keep_dims=True), x, axis)
    at_zero = F.Select(F.Equal(zeros, const(x, 1)), others_nonzero, F.ZerosLike(x))
    full = _expand(F.Reshape(out, shape=kept_shape(x.shape, axis)), x, axis)
    return _expand(g, x, axis) * F.Select(zero, at_zero, full / F.Select(zero, ones, x))


defop(
    "ReduceProd",
    ("x",),
    _infer(False),
    _np(np.prod),
    _prod_vjp,
    attrs=_ATTRS,
    doc="product over axes; the gradient is the product of the other elements, exact when some are zero",
    call_attrs=("axis",),
    onnx=_reduce_onnx("ReduceProd"),
)


def _logsumexp(x: np.ndarray, axis: tuple[int, ...], keep_dims: bool) -> np.ndarray:
    """log(sum(exp(x))) shifted by the max, so it neither overflows nor underflows."""
    ax = axes_of(axis, x.ndim)
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
    return np.asarray(out if keep_dims else np.squeeze(out, axis=ax))


defop(
    "LogSumExp",
    ("x",),
    _infer(True, identity=False),
    _logsumexp,
    lambda g, out, x, axis, keep_dims: _expand(g, x, axis) * F.Exp(x - _expand(F.Reshape(out, shape=kept_shape(x.shape, axis)), x, axis)),
    attrs=_ATTRS,
    doc="log(sum(exp(x))) over axes, computed stably; the gradient is the softmax over those axes",
    scratch=2,
    onnx=_reduce_onnx("ReduceLogSumExp"),
    functional="logsumexp",
)

# ---- CumSum ----


def _cumsum(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """Running sums along axis, from the end with reverse, each leaving its own element out with exclusive."""
    ax = axis % x.ndim
    y = np.flip(x, ax) if reverse else x
    y = np.cumsum(y, axis=ax, dtype=x.dtype)
    if exclusive:
        shifted = np.zeros_like(y)
        lead = (slice(None),) * ax
        shifted[lead + (slice(1, None),)] = y[lead + (slice(None, -1),)]
        y = shifted
    return np.ascontiguousarray(np.flip(y, ax) if reverse else y)


def _cumsum_infer(types: list[TensorType], axis: int, exclusive: bool, reverse: bool) -> TensorType:
    """Numeric x of rank >= 1 and a valid axis; the output has x's type."""
    require_numeric(types[0], "x")
    if not types[0].shape:
        raise ShapeError("x must have rank >= 1, got a scalar")
    norm_axis(axis, len(types[0].shape))
    return types[0]


defop(
    "CumSum",
    ("x",),
    _cumsum_infer,
    _cumsum,
    lambda g, out, x, axis, exclusive, reverse: F.CumSum(g, axis=axis, exclusive=exclusive, reverse=not reverse),
    attrs={
        "axis": Attr("int", doc="the axis to scan (an input in MindSpore, an attribute here)"),
        "exclusive": Attr("bool", False, "each sum leaves its own element out"),
        "reverse": Attr("bool", False, "sum from the end of the axis"),
    },
    doc="cumulative sum along axis; the gradient is the cumulative sum of g in the other direction",
    scratch=2,
    call_attrs=("axis",),
    onnx=lambda c: [("CumSum", (c.x[0], ints([c.attrs["axis"]]).reshape(())), c.y,
                     {"exclusive": int(c.attrs["exclusive"]), "reverse": int(c.attrs["reverse"])})],
)

# ---- Argmax and Argmin ----


def _arg_infer(types: list[TensorType], axis: int, output_type: np.dtype) -> TensorType:
    """Numeric x of rank >= 1 with a non-empty axis; the axis is removed; int32 or int64 indices."""
    t = types[0]
    require_numeric(t, "x")
    if output_type not in INDEX_DTYPES:
        raise DTypeError(f"output_type must be int32 or int64, got {output_type.name}")
    if not t.shape:
        raise ShapeError("x must have rank >= 1, got a scalar")
    ax = norm_axis(axis, len(t.shape))
    require_nonempty(t.shape, (ax,), "the index reduction")
    return TensorType(output_type, t.shape[:ax] + t.shape[ax + 1:])


def _arg_onnx(op_type: str) -> OnnxRule:
    """ONNX ArgMax or ArgMin (first index on ties, int64), cast to the output type."""

    def rule(c: OnnxCall) -> list[Spec]:
        """The index reduction and the Cast."""
        return [(op_type, c.x, (c.tmp("i"),), {"axis": c.attrs["axis"], "keepdims": 0, "select_last_index": 0}),
                ("Cast", (c.tmp("i"),), c.y, {"to": c.attrs["output_type"]})]

    return rule


_ARG_ATTRS = {
    "axis": Attr("int", -1, "the axis to search"),
    "output_type": Attr("dtype", np.dtype(np.int32), "int32 or int64"),
}
for _name, _fn in (("Argmax", np.argmax), ("Argmin", np.argmin)):
    defop(
        _name,
        ("x",),
        _arg_infer,
        lambda x, axis, output_type, _fn=_fn: np.asarray(_fn(x, axis=axis), dtype=output_type),
        zero_grad,
        attrs=_ARG_ATTRS,
        doc=f"index of the first {'largest' if _name == 'Argmax' else 'smallest'} element along axis; an integer output without gradient",
        onnx=_arg_onnx("Arg" + _name[3:].capitalize()),
    )

# ---- ArgMaxWithValue and ArgMinWithValue ----


def _with_value_infer(types: list[TensorType], axis: int, keep_dims: bool) -> tuple[TensorType, TensorType]:
    """Numeric x of rank >= 1 with a non-empty axis; int32 indices and x's values, the axis removed or kept as 1."""
    t = types[0]
    require_numeric(t, "x")
    if not t.shape:
        raise ShapeError("x must have rank >= 1, got a scalar")
    ax = norm_axis(axis, len(t.shape))
    require_nonempty(t.shape, (ax,), "the index reduction")
    shape = t.shape[:ax] + ((1,) if keep_dims else ()) + t.shape[ax + 1:]
    return TensorType(np.dtype(np.int32), shape), TensorType(t.dtype, shape)


def _with_value(fn: Callable[..., Any]) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The forward of an index reduction that also gives the value there (the first extremum on ties)."""

    def forward(x: np.ndarray, axis: int, keep_dims: bool) -> tuple[np.ndarray, np.ndarray]:
        """The index along ``axis`` and the value taken there."""
        ax = axis % x.ndim
        index = np.expand_dims(fn(x, axis=ax), ax)
        values = np.take_along_axis(x, index, axis=ax)
        if not keep_dims:
            index, values = np.squeeze(index, ax), np.squeeze(values, ax)
        return index.astype(np.int32), values

    return forward


def _with_value_vjp(g: tuple[Value | None, Value | None], out: tuple[Value, Value], x: Value, axis: int,
                    keep_dims: bool) -> Value:
    """The values' cotangent at the chosen index alone (MindSpore's ArgMaxWithValue bprop: a one-hot of the index
    along the axis times the cotangent), zeros elsewhere, so tied extremes after the first get nothing."""
    if g[1] is None:
        return F.ZerosLike(x)
    ax = axis % x.ndim
    index, dv = (out[0], g[1]) if keep_dims else (F.ExpandDims(out[0], axis=ax), F.ExpandDims(g[1], axis=ax))
    n = x.shape[ax]
    positions = index.builder.const(np.arange(n, dtype=np.int32).reshape((n,) + (1,) * (x.ndim - ax - 1)))  # type: ignore[union-attr]
    return F.Select(F.Equal(index, positions), dv, F.ZerosLike(x))


def _with_value_onnx(op_type: str, reduce_type: str) -> OnnxRule:
    """ONNX ArgMax/ArgMin (first index on ties) cast to int32, and the values as ReduceMax/ReduceMin over the axis."""

    def rule(c: OnnxCall) -> list[Spec]:
        """The index reduction, its Cast, and the value reduction."""
        ax, keep = norm_axis(c.attrs["axis"], len(c.types[0].shape)), int(c.attrs["keep_dims"])
        return [(op_type, c.x, (c.tmp("i"),), {"axis": ax, "keepdims": keep, "select_last_index": 0}),
                ("Cast", (c.tmp("i"),), (c.y[0],), {"to": np.dtype(np.int32)}),
                reduce(reduce_type, c.x[0], (ax,), bool(keep), c.y[1])]

    return rule


for _name, _fn in (("ArgMaxWithValue", np.argmax), ("ArgMinWithValue", np.argmin)):
    _which = "largest" if _name == "ArgMaxWithValue" else "smallest"
    defop(
        _name,
        ("x",),
        _with_value_infer,
        _with_value(_fn),
        _with_value_vjp,
        attrs={"axis": Attr("int", 0, "the axis to search"), "keep_dims": Attr("bool", False, "keep the axis with length 1")},
        doc=f"the index (int32) of the first {_which} element along axis and its value; the values' gradient goes to "
            f"that index alone (ties after it get none, unlike {'ReduceMax' if _which == 'largest' else 'ReduceMin'})",
        outputs=("index", "values"),
        onnx=_with_value_onnx("Arg" + _name[3:6].capitalize(), "ReduceMax" if _which == "largest" else "ReduceMin"),
    )
