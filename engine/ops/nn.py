"""Neural-network ops: Softmax, LogSoftmax, SoftmaxCrossEntropyWithLogits and LayerNorm.

Their VJP rules are exact for every cotangent, including those of the auxiliary outputs
(SCE's backprop, LayerNorm's mean and rstd) that MindSpore's rules ignore, so that gradients
of gradients, which feed those outputs, come out right.
"""
from __future__ import annotations

import math

import numpy as np

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import (
    Attr,
    F,
    OnnxCall,
    defop,
    norm_axis,
    require_float,
    require_nonempty,
    same_dtype,
    scaled_cost,
    total,
)

from .onnx_rules import Spec, reduce, scalar

# ---- Softmax and LogSoftmax ----


def _axes(axis: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Softmax axes, non-negative and sorted; at least one is required."""
    if not axis:
        raise GraphError("axis must name at least one axis")
    return tuple(sorted({norm_axis(a, ndim) for a in axis}))


def _softmax_infer(types: list[TensorType], axis: tuple[int, ...]) -> TensorType:
    """Float x of rank >= 1 with valid, non-empty axes (the stable form takes a max over them); the output has x's type."""
    require_float(types[0], "x")
    if not types[0].shape:
        raise ShapeError("x must have rank >= 1, got a scalar")
    require_nonempty(types[0].shape, _axes(axis, len(types[0].shape)), "normalizing")
    return types[0]


def _log_softmax(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Stable log-softmax: shift by the max before exponentiating."""
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _softmax(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Stable softmax: shift by the max before exponentiating."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _softmax_vjp(g: Value, out: Value, x: Value, axis: tuple[int, ...]) -> Value:
    """out * (g - sum(out * g)) over the softmax axes."""
    return out * (g - F.ReduceSum(out * g, axis=axis, keep_dims=True))


def _log_softmax_vjp(g: Value, out: Value, x: Value, axis: int) -> Value:
    """g - exp(out) * sum(g) over the axis."""
    return g - F.Exp(out) * F.ReduceSum(g, axis=(axis,), keep_dims=True)


def _softmax_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Softmax over one axis; over several, the stable formula with reductions."""
    axes = _axes(c.attrs["axis"], len(c.types[0].shape))
    if len(axes) == 1:
        return [("Softmax", c.x, c.y, {"axis": axes[0]})]
    t = c.tmp
    return [reduce("ReduceMax", c.x[0], axes, True, t("max")), ("Sub", (c.x[0], t("max")), (t("shifted"),)),
            ("Exp", (t("shifted"),), (t("e"),)), reduce("ReduceSum", t("e"), axes, True, t("sum")), ("Div", (t("e"), t("sum")), c.y)]


def _sce_onnx(c: OnnxCall) -> list[Spec]:
    """loss = -sum(labels * LogSoftmax(logits), 1), backprop = exp(LogSoftmax(logits)) - labels."""
    (z, y), t = c.x, c.tmp
    return [("LogSoftmax", (z,), (t("logp"),), {"axis": 1}), ("Mul", (y, t("logp")), (t("prod"),)),
            reduce("ReduceSum", t("prod"), (1,), False, t("sum")), ("Neg", (t("sum"),), (c.y[0],)),
            ("Exp", (t("logp"),), (t("p"),)), ("Sub", (t("p"), y), (c.y[1],))]


def _ln_onnx(c: OnnxCall) -> list[Spec]:
    """The engine's formula in ONNX arithmetic (LayerNormalization's statistics outputs differ in shape and meaning)."""
    (x, gamma, beta), t = c.x, c.tmp
    rank = len(c.types[0].shape)
    axes = tuple(range(c.attrs["begin_norm_axis"] % rank, rank))
    return [reduce("ReduceMean", x, axes, True, c.y[1]), ("Sub", (x, c.y[1]), (t("c"),)), ("Mul", (t("c"), t("c")), (t("c2"),)),
            reduce("ReduceMean", t("c2"), axes, True, t("var")), ("Add", (t("var"), scalar(c.attrs["epsilon"], c.types[0].dtype)), (t("ve"),)),
            ("Sqrt", (t("ve"),), (t("std"),)), ("Reciprocal", (t("std"),), (c.y[2],)), ("Mul", (t("c"), c.y[2]), (t("xhat"),)),
            ("Mul", (t("xhat"), gamma), (t("scaled"),)), ("Add", (t("scaled"), beta), (c.y[0],))]


defop(
    "Softmax",
    ("x",),
    _softmax_infer,
    lambda x, axis: _softmax(x, _axes(axis, x.ndim)),
    _softmax_vjp,
    attrs={"axis": Attr("ints", (-1,), "axes to normalize over (an int or a tuple)")},
    doc="exp(x) / sum(exp(x)) over axis, computed stably",
    cost=scaled_cost(4),
    scratch=2,
    onnx=_softmax_onnx,
    functional="softmax",
)
defop(
    "LogSoftmax",
    ("x",),
    lambda t, axis: _softmax_infer(t, (axis,)),
    lambda x, axis: _log_softmax(x, (axis,)),
    _log_softmax_vjp,
    attrs={"axis": Attr("int", -1, "the axis to normalize over")},
    doc="x - log(sum(exp(x))) over axis, computed stably",
    cost=scaled_cost(4),
    scratch=2,
    onnx=lambda c: [("LogSoftmax", c.x, c.y, {"axis": norm_axis(c.attrs["axis"], len(c.types[0].shape))})],
    functional="log_softmax",
)

# ---- SoftmaxCrossEntropyWithLogits ----


def _sce_infer(types: list[TensorType]) -> tuple[TensorType, TensorType]:
    """Float (N, C) logits and labels of one dtype give loss (N,) and backprop (N, C)."""
    z, y = types
    dt = same_dtype(types, "logits and labels")
    require_float(z, "logits and labels")
    if len(z.shape) != 2 or z.shape != y.shape:
        raise ShapeError(f"logits and labels must both be (N, C), got {z.shape} and {y.shape}")
    require_nonempty(z.shape, (1,), "the log-softmax of the logits")
    return TensorType(dt, z.shape[:1]), TensorType(dt, z.shape)


def _sce(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss from a stable log-softmax, and softmax minus labels."""
    logp = _log_softmax(logits, (1,))
    return -np.sum(labels * logp, axis=1), np.exp(logp) - labels


def _sce_vjp(g: tuple[Value | None, Value | None], out: tuple[Value, Value], logits: Value, labels: Value) -> tuple[Value, Value]:
    """loss = lse(z) sum(y) - <y, z> and backprop = softmax(z) - y, differentiated exactly
    (MindSpore's rule assumes sum(y) = 1, zeros d_labels and ignores backprop's cotangent)."""
    g_loss, g_bp = g
    logp = F.LogSoftmax(logits, axis=-1)
    p = F.Exp(logp)
    d_logits: list[Value] = []
    d_labels: list[Value] = []
    if g_loss is not None:
        gl = F.ExpandDims(g_loss, axis=-1)
        d_logits.append(gl * (p * F.ReduceSum(labels, axis=(1,), keep_dims=True) - labels))
        d_labels.append(-(gl * logp))
    if g_bp is not None:
        d_logits.append(p * (g_bp - F.ReduceSum(p * g_bp, axis=(1,), keep_dims=True)))
        d_labels.append(-g_bp)
    return total(d_logits) or F.ZerosLike(logits), total(d_labels) or F.ZerosLike(labels)


defop(
    "SoftmaxCrossEntropyWithLogits",
    ("logits", "labels"),
    _sce_infer,
    _sce,
    _sce_vjp,
    doc="outputs loss (N,) = -sum(labels * log_softmax(logits), 1) and backprop (N, C) = softmax(logits) - labels",
    outputs=("loss", "backprop"),
    cost=scaled_cost(4),
    scratch=2,
    onnx=_sce_onnx,
)

# ---- LayerNorm ----

_LN_ATTRS = {
    "begin_norm_axis": Attr("int", 1, "first axis normalized over (through the last)"),
    "begin_params_axis": Attr("int", 1, "gamma and beta have shape x.shape[begin_params_axis:]"),
    "epsilon": Attr("float", 1e-7, "added to the variance"),
}


def _ln_infer(types: list[TensorType], begin_norm_axis: int, begin_params_axis: int, epsilon: float) -> tuple[TensorType, ...]:
    """y like x; mean and rstd keep the normalized axes as length 1."""
    x, gamma, beta = types
    dt = same_dtype(types, "x, gamma and beta")
    require_float(x, "x, gamma and beta")
    rank = len(x.shape)
    if rank == 0:
        raise ShapeError("x must have rank >= 1, got a scalar")
    bn = norm_axis(begin_norm_axis, rank, "begin_norm_axis")
    bp = norm_axis(begin_params_axis, rank, "begin_params_axis")
    want = x.shape[bp:]
    if gamma.shape != want or beta.shape != want:
        raise ShapeError(f"gamma {gamma.shape} and beta {beta.shape} must have shape x.shape[{bp}:] = {want} for x {x.shape}")
    stats = TensorType(dt, x.shape[:bn] + (1,) * (rank - bn))
    return TensorType(dt, x.shape), stats, stats


def _ln(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, begin_norm_axis: int, begin_params_axis: int, epsilon: float) -> tuple[np.ndarray, ...]:
    """Biased variance over the normalized axes, as MindSpore computes it."""
    axes = tuple(range(begin_norm_axis % x.ndim, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    rstd = 1 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + epsilon)
    return centered * rstd * gamma + beta, mean, rstd


def _ln_vjp(g: tuple[Value | None, Value | None, Value | None], out: tuple[Value, Value, Value], x: Value, gamma: Value, beta: Value,
            begin_norm_axis: int, begin_params_axis: int, epsilon: float) -> tuple[Value, Value | None, Value | None]:
    """With xhat = (x - mean) rstd over n normalized elements: dx = rstd (dxhat - mean(dxhat) -
    xhat mean(dxhat xhat)) + g_mean / n - g_rstd rstd^2 xhat / n, where dxhat = g_y gamma."""
    g_y, g_mean, g_rstd = g
    _, mean, rstd = out
    axes = tuple(range(begin_norm_axis % x.ndim, x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    xhat = (x - mean) * rstd
    dx: list[Value] = []
    if g_y is not None:
        dxhat = g_y * gamma
        centered = dxhat - F.ReduceMean(dxhat, axis=axes, keep_dims=True)
        dx.append(rstd * (centered - xhat * F.ReduceMean(dxhat * xhat, axis=axes, keep_dims=True)))
    if g_mean is not None:
        dx.append(F.BroadcastTo(g_mean / n, shape=x.shape))
    if g_rstd is not None:
        dx.append(-(g_rstd * rstd * rstd * xhat) / n)
    return total(dx) or F.ZerosLike(x), (g_y * xhat if g_y is not None else None), g_y


defop(
    "LayerNorm",
    ("x", "gamma", "beta"),
    _ln_infer,
    _ln,
    _ln_vjp,
    attrs=_LN_ATTRS,
    doc="outputs y = (x - mean) * rstd * gamma + beta, mean and rstd = 1/sqrt(var + epsilon) "
    "(statistics over axes begin_norm_axis.., kept as length 1)",
    outputs=("y", "mean", "rstd"),
    cost=scaled_cost(4),
    scratch=3,
    onnx=_ln_onnx,
)
