"""Reductions over axes: ReduceSum, ReduceMean, ReduceMax (axis=() reduces every axis)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..ir import TensorType, Value
from ..optable import Attr, F, defop, norm_axis, require_float, require_nonempty

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


def _max_vjp(g: Value, out: Value, x: Value, axis: tuple[int, ...], keep_dims: bool) -> Value:
    """Tied maxima share the gradient evenly (MindSpore's MinOrMaxGrad)."""
    mask = F.Cast(F.Equal(x, _expand(out, x, axis)), dtype=x.dtype)
    ties = _expand(F.ReduceSum(mask, axis=axis, keep_dims=True), x, axis)
    return _expand(g, x, axis) * mask / ties


defop("ReduceSum", ("x",), _infer(False), _np(np.sum), lambda g, out, x, axis, keep_dims: _expand(g, x, axis), attrs=_ATTRS, doc="sum over axes")
defop(
    "ReduceMean",
    ("x",),
    _infer(True),
    _np(np.mean),
    lambda g, out, x, axis, keep_dims: _expand(g, x, axis) / _count(x, axis),
    attrs=_ATTRS,
    doc="mean over axes",
)
defop(
    "ReduceMax",
    ("x",),
    _infer(False, identity=False),
    lambda x, axis, keep_dims: np.asarray(np.max(x, axis=axes_of(axis, x.ndim), keepdims=keep_dims)),
    _max_vjp,
    attrs=_ATTRS,
    doc="max over axes; tied maxima share the gradient evenly",
)
