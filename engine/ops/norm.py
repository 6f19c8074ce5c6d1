"""BatchNorm over the channel axis 1 of (N, C, ...), in training (batch statistics) and inference (moving statistics).

A graph cannot update a Parameter in place, so where MindSpore writes the new moving mean and variance
into its mean and variance Parameters, this op returns them as outputs 1 and 2; the caller (the nn
layer) assigns them. The VJP rule is exact for the cotangents of all five outputs, so gradients of
gradients come out right.
"""
from __future__ import annotations

import math

import numpy as np

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, defop, require_float, same_dtype, scaled_cost, total

from .onnx_rules import Spec, reduce, reshape, scalar

_ATTRS = {
    "is_training": Attr("bool", False, "normalize with the batch's statistics and update the moving ones; else use mean and variance"),
    "epsilon": Attr("float", 1e-5, "added to the variance, in (0, 1]"),
    "momentum": Attr("float", 0.1, "new moving = (1 - momentum) * moving + momentum * batch statistic, in [0, 1]"),
    "data_format": Attr("str", "NCHW", "only NCHW (channels on axis 1)"),
}


def _infer(types: list[TensorType], is_training: bool, epsilon: float, momentum: float, data_format: str) -> tuple[TensorType, ...]:
    """Float x (N, C, ...) and four (C,) vectors of its dtype; y like x and four (C,) statistics."""
    dt = same_dtype(types, "x, scale, bias, mean and variance")
    require_float(types[0], "x, scale, bias, mean and variance")
    if data_format != "NCHW":
        raise GraphError(f"data_format must be 'NCHW', got {data_format!r}")
    if not 0 < epsilon <= 1:
        raise GraphError(f"epsilon must be in (0, 1], got {epsilon}")
    if not 0 <= momentum <= 1:
        raise GraphError(f"momentum must be in [0, 1], got {momentum}")
    x = types[0].shape
    if len(x) < 2:
        raise ShapeError(f"x must be (N, C, ...) of rank >= 2, got shape {x}")
    names = ("scale", "bias", "mean", "variance")
    bad = [f"{n} {t.shape}" for n, t in zip(names, types[1:]) if t.shape != (x[1],)]
    if bad:
        raise ShapeError(f"{', '.join(bad)} must have shape (C,) = ({x[1]},) for x {x}")
    if is_training and x[0] * math.prod(x[2:]) == 0:
        raise ShapeError(f"x {x} has no elements per channel, so the batch statistics are undefined")
    stat = TensorType(dt, (x[1],))
    return (TensorType(dt, x), stat, stat, stat, stat)


def _axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1."""
    return (0,) + tuple(range(2, ndim))


def _forward(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, variance: np.ndarray, is_training: bool,
             epsilon: float, momentum: float, data_format: str) -> tuple[np.ndarray, ...]:
    """y, new moving mean, new moving variance, the statistics used (batch mean and biased variance in training)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if is_training:
        axes = _axes(x.ndim)
        mu = x.mean(axis=axes)
        var = np.square(x - mu.reshape(shape)).mean(axis=axes)
        new_mean = (1 - momentum) * mean + momentum * mu
        new_var = (1 - momentum) * variance + momentum * var
    else:
        mu, var, new_mean, new_var = mean, variance, mean.copy(), variance.copy()
    rstd = 1 / np.sqrt(var + np.asarray(epsilon, x.dtype))
    y = (x - mu.reshape(shape)) * (rstd * scale).reshape(shape) + bias.reshape(shape)
    dt = x.dtype
    return y.astype(dt, copy=False), new_mean.astype(dt), new_var.astype(dt), np.array(mu, dt), np.array(var, dt)


def _vjp(g: tuple[Value | None, ...], out: tuple[Value, ...], x: Value, scale: Value, bias: Value, mean: Value, variance: Value,
         is_training: bool, epsilon: float, momentum: float, data_format: str) -> tuple[Value, ...]:
    """Gradients for all five outputs. In training, with xhat = (x - mu) rstd over n elements per channel:
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) plus the statistics outputs' terms."""
    g_y, g_mean, g_var, g_mu, g_v = g
    shape = (1, -1) + (1,) * (x.ndim - 2)
    axes = _axes(x.ndim)
    mu, var = F.Reshape(out[3], shape=shape), F.Reshape(out[4], shape=shape)
    rstd = F.Rsqrt(var + epsilon)
    centered = x - mu
    xhat = centered * rstd
    d_x: list[Value] = []
    d_scale = d_bias = None
    d_mean: list[Value] = []
    d_var: list[Value] = []
    if g_y is not None:
        d_scale = F.ReduceSum(g_y * xhat, axis=axes)
        d_bias = F.ReduceSum(g_y, axis=axes)
        dxhat = g_y * F.Reshape(scale, shape=shape)
        if is_training:
            mean_dxhat = F.ReduceMean(dxhat, axis=axes, keep_dims=True)
            d_x.append(rstd * (dxhat - mean_dxhat - xhat * F.ReduceMean(dxhat * xhat, axis=axes, keep_dims=True)))
        else:
            d_x.append(dxhat * rstd)
            d_mean.append(-F.ReduceSum(dxhat * rstd, axis=axes))
            d_var.append(F.ReduceSum(dxhat * centered * rstd * rstd * rstd, axis=axes) * -0.5)
    n = math.prod(x.shape[a] for a in axes)
    # Cotangents reaching the batch mean and the batch variance (training) or the mean and variance inputs (inference).
    g_batch_mean = [t for t in (g_mu,) if t is not None]
    g_batch_var = [t for t in (g_v,) if t is not None]
    if is_training:
        if g_mean is not None:
            d_mean.append(g_mean * (1 - momentum))
            g_batch_mean.append(g_mean * momentum)
        if g_var is not None:
            d_var.append(g_var * (1 - momentum))
            g_batch_var.append(g_var * momentum)
        gm, gv = total(g_batch_mean), total(g_batch_var)
        if gm is not None:
            d_x.append(F.BroadcastTo(F.Reshape(gm, shape=shape) / n, shape=x.shape))
        if gv is not None:
            d_x.append(F.Reshape(gv, shape=shape) * centered * (2 / n))
    else:
        d_mean += [t for t in (g_mean, g_mu) if t is not None]
        d_var += [t for t in (g_var, g_v) if t is not None]
    zeros = F.ZerosLike(scale)
    return (total(d_x) or F.ZerosLike(x), d_scale if d_scale is not None else zeros, d_bias if d_bias is not None else zeros,
            total(d_mean) or zeros, total(d_var) or zeros)


def _onnx(c: OnnxCall) -> list[Spec]:
    """The engine's formula in ONNX arithmetic: batch statistics and moving averages in training, the inputs otherwise."""
    (x, scale, bias, mean, variance), t = c.x, c.tmp
    xt = c.types[0]
    dt, shape = xt.dtype, (1, xt.shape[1]) + (1,) * (len(xt.shape) - 2)
    specs: list[Spec] = []
    if c.attrs["is_training"]:
        m = c.attrs["momentum"]
        axes = _axes(len(xt.shape))
        specs += [
            reduce("ReduceMean", x, axes, False, c.y[3]), reshape(c.y[3], shape, t("mu")), ("Sub", (x, t("mu")), (t("c"),)),
            ("Mul", (t("c"), t("c")), (t("c2"),)), reduce("ReduceMean", t("c2"), axes, False, c.y[4]),
        ]
        for moving, batch, out in ((mean, c.y[3], c.y[1]), (variance, c.y[4], c.y[2])):
            specs += [("Mul", (moving, scalar(1 - m, dt)), (t(f"{out}/old"),)), ("Mul", (batch, scalar(m, dt)), (t(f"{out}/new"),)),
                      ("Add", (t(f"{out}/old"), t(f"{out}/new")), (out,))]
        var = c.y[4]
    else:
        specs += [("Identity", (mean,), (c.y[1],)), ("Identity", (variance,), (c.y[2],)), ("Identity", (mean,), (c.y[3],)),
                  ("Identity", (variance,), (c.y[4],)), reshape(mean, shape, t("mu")), ("Sub", (x, t("mu")), (t("c"),))]
        var = variance
    return [
        *specs, ("Add", (var, scalar(c.attrs["epsilon"], dt)), (t("ve"),)), ("Sqrt", (t("ve"),), (t("std"),)),
        ("Div", (scale, t("std")), (t("k"),)), reshape(t("k"), shape, t("ks")), ("Mul", (t("c"), t("ks")), (t("scaled"),)),
        reshape(bias, shape, t("b")), ("Add", (t("scaled"), t("b")), (c.y[0],)),
    ]


defop(
    "BatchNorm",
    ("x", "scale", "bias", "mean", "variance"),
    _infer,
    _forward,
    _vjp,
    attrs=_ATTRS,
    doc="y = (x - m) / sqrt(v + epsilon) * scale + bias per channel (axis 1); training: m, v are the batch mean and biased "
    "variance, outputs 1-2 the new moving mean and variance (what MindSpore assigns to its mean and variance Parameters), "
    "outputs 3-4 m and v; inference: m, v are the mean and variance inputs, returned unchanged in outputs 1-4",
    outputs=("y", "batch_mean", "batch_variance", "reserve_space_1", "reserve_space_2"),
    cost=scaled_cost(4),
    scratch=2,
    onnx=_onnx,
)
