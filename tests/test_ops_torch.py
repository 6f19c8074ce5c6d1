"""New ops against PyTorch in float64: the forward value, the gradient of <op(x), v> and its derivative
along a direction u (a Hessian-vector product), so first and second order are checked against an
independent implementation."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

from gradserve.engine import Graph, GraphBuilder, Value, compile_graph, grad_operation

TOL = dict(rtol=1e-10, atol=1e-11)


def _dot(b: GraphBuilder, xs: list[Value], ys: list[Value]) -> Value:
    """sum_i <xs_i, ys_i> as a 0-d value."""
    terms = [b.op("ReduceSum", x * y) for x, y in zip(xs, ys)]
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def engine_orders(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], fixed: dict[int, np.ndarray], pick: int,
                  v: np.ndarray, u: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The op's output ``pick``, the gradient of <y, v> in the float inputs, and that gradient's derivative along u."""
    b = GraphBuilder("s0")
    xs = [b.input(f"x{i}", a.dtype, a.shape) for i, a in enumerate(arrays)]
    it = iter(xs)
    args = [b.const(fixed[k]) if k in fixed else next(it) for k in range(len(xs) + len(fixed))]
    outs = b.op(op, *args, **attrs)
    y = outs[pick] if isinstance(outs, tuple) else outs
    vv = b.input("v", y.dtype, y.shape)
    s0 = b.build(_dot(b, [y], [vv]))
    forward = compile_graph(_forward_graph(op, arrays, attrs, fixed, pick))(*arrays)
    grads = compile_graph(grad_operation(s0, get_all=True))(*arrays, v)[: len(arrays)]
    b1 = GraphBuilder("s1", library={"s0": s0})
    ins = [b1.input(x.name, x.dtype, x.shape) for x in s0.inputs]
    g = b1.op("GradOperation", *ins, fn="s0", get_all=True)[: len(arrays)]
    us = [b1.input(f"u{i}", a.dtype, a.shape) for i, a in enumerate(arrays)]
    s1 = b1.build(_dot(b1, list(g), us))
    hvp = compile_graph(grad_operation(s1, get_all=True))(*arrays, v, *u)[: len(arrays)]
    return forward, list(grads), list(hvp)


def _forward_graph(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], fixed: dict[int, np.ndarray], pick: int) -> Graph:
    """The op alone, returning output ``pick``."""
    b = GraphBuilder("f")
    xs = [b.input(f"x{i}", a.dtype, a.shape) for i, a in enumerate(arrays)]
    it = iter(xs)
    outs = b.op(op, *[b.const(fixed[k]) if k in fixed else next(it) for k in range(len(xs) + len(fixed))], **attrs)
    return b.build(outs[pick] if isinstance(outs, tuple) else outs)


def torch_orders(fn: Callable[..., torch.Tensor], arrays: list[np.ndarray], v: np.ndarray, u: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The same three quantities from torch.autograd with create_graph=True."""
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    s = (y * torch.tensor(v)).sum()
    grads = torch.autograd.grad(s, ts, create_graph=True, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, ts)]
    s1 = sum((g * torch.tensor(ui)).sum() for g, ui in zip(grads, u))
    hvp = torch.autograd.grad(s1, ts, allow_unused=True) if s1.requires_grad else [None] * len(ts)
    hvp = [h if h is not None else torch.zeros_like(t) for h, t in zip(hvp, ts)]
    return y.detach().numpy(), [g.detach().numpy() for g in grads], [h.numpy() for h in hvp]


def same_padding(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """MindSpore's 'same' padding (before, after) for one axis, written out for the torch side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_torch(stride: tuple[int, int], dilation: tuple[int, int], group: int, pads: tuple[int, int, int, int]) -> Callable[..., torch.Tensor]:
    """torch conv2d after explicit (top, bottom, left, right) zero padding."""
    t, b, left, r = pads
    return lambda x, w: tf.conv2d(tf.pad(x, (left, r, t, b)), w, stride=stride, dilation=dilation, groups=group)


CONV_CASES = [
    # x, weight, attrs, torch padding (top, bottom, left, right)
    ((2, 4, 7, 6), (6, 2, 3, 2), dict(out_channel=6, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2), group=2, pad_mode="pad", pad=(1, 2, 0, 1)), (1, 2, 0, 1)),
    ((1, 3, 5, 5), (3, 3, 3, 3), dict(out_channel=3, kernel_size=3, pad_mode="same"), (1, 1, 1, 1)),
    ((2, 2, 9, 8), (4, 1, 2, 3), dict(out_channel=4, kernel_size=(2, 3), stride=(3, 2), dilation=(2, 1), group=2, pad_mode="same"),
     same_padding(9, 2, 3, 2) + same_padding(8, 3, 2, 1)),
    ((2, 2, 6, 6), (2, 2, 3, 3), dict(out_channel=2, kernel_size=3, stride=2), (0, 0, 0, 0)),
]


def _check(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], fn: Callable[..., torch.Tensor], fixed: dict[int, np.ndarray] | None = None, pick: int = 0) -> None:
    """Compare forward, gradient and Hessian-vector product of the op with torch's at random v and u."""
    rng = np.random.default_rng(len(arrays) + sum(a.size for a in arrays))
    y_probe = fn(*[torch.tensor(a) for a in arrays]).detach().numpy()
    v = rng.standard_normal(y_probe.shape)
    u = [rng.standard_normal(a.shape) for a in arrays]
    y, g, h = engine_orders(op, arrays, attrs, fixed or {}, pick, v, u)
    ty, tg, th = torch_orders(fn, arrays, v, u)
    np.testing.assert_allclose(y, ty, **TOL, err_msg=f"{op} forward")
    for i, (a, b) in enumerate(zip(g, tg)):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"{op} gradient of input {i}")
    for i, (a, b) in enumerate(zip(h, th)):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"{op} second order, input {i}")


def _pair(attrs: dict[str, Any], key: str) -> tuple[int, int]:
    """A Conv2D stride or dilation attribute (an int or a pair, 1 when absent) as the pair torch takes."""
    v = attrs.get(key, 1)
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize(("x", "w", "attrs", "pads"), CONV_CASES)
def test_conv2d_matches_torch(x: tuple[int, ...], w: tuple[int, ...], attrs: dict[str, Any], pads: tuple[int, int, int, int]) -> None:
    """Conv2D over strides, dilation, groups and every pad mode: value, gradient and second order."""
    rng = np.random.default_rng(0)
    fn = _conv_torch(_pair(attrs, "stride"), _pair(attrs, "dilation"), attrs.get("group", 1), pads)
    _check("Conv2D", [rng.standard_normal(x), rng.standard_normal(w)], attrs, fn)


@pytest.mark.parametrize(("x", "w", "attrs", "pads"), CONV_CASES)
def test_conv2d_transpose_matches_torch(x: tuple[int, ...], w: tuple[int, ...], attrs: dict[str, Any], pads: tuple[int, int, int, int]) -> None:
    """Conv2DTranspose (MindSpore's Conv2DBackpropInput) is torch's gradient of the convolution in x, written as a
    function of dout and the weight; compared with its value, gradient and second order in torch."""
    rng = np.random.default_rng(1)
    conv = _conv_torch(_pair(attrs, "stride"), _pair(attrs, "dilation"), attrs.get("group", 1), pads)
    out_shape = conv(torch.zeros(x, dtype=torch.float64), torch.zeros(w, dtype=torch.float64)).shape

    def transpose(dy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """d<conv(x, weight), dy>/dx, differentiable in dy and weight."""
        x0 = torch.zeros(x, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad((conv(x0, weight) * dy).sum(), x0, create_graph=True)[0]

    _check("Conv2DTranspose", [rng.standard_normal(tuple(out_shape)), rng.standard_normal(w)], dict(attrs, input_size=x), transpose)


@pytest.mark.parametrize(
    ("x", "attrs", "pads"),
    [((2, 3, 6, 6), dict(kernel_size=2, strides=2), (0, 0, 0, 0)),
     ((1, 2, 5, 7), dict(kernel_size=(3, 2), strides=(2, 3), pad_mode="same"), same_padding(5, 3, 2) + same_padding(7, 2, 3)),
     ((1, 2, 5, 5), dict(kernel_size=3, pad_mode="same"), (1, 1, 1, 1))],
)
def test_max_pool_matches_torch(x: tuple[int, ...], attrs: dict[str, Any], pads: tuple[int, int, int, int]) -> None:
    """MaxPool with -inf padding (torch pads explicitly the same way): value, gradient, second order (zero)."""
    rng = np.random.default_rng(2)
    data = rng.permutation(int(np.prod(x))).reshape(x) * 0.1 + rng.uniform(0, 0.01, x)
    k = attrs["kernel_size"] if isinstance(attrs["kernel_size"], tuple) else (attrs["kernel_size"],) * 2
    s = attrs.get("strides", 1)
    s = s if isinstance(s, tuple) else (s, s)
    t, b, left, r = pads
    _check("MaxPool", [data], attrs, lambda a: tf.max_pool2d(tf.pad(a, (left, r, t, b), value=-np.inf), k, s))


def test_avg_pool_and_adaptive_avg_pool_match_torch() -> None:
    """AvgPool 'valid' is torch's avg_pool2d; AdaptiveAvgPool2D is torch's adaptive_avg_pool2d, bins of unequal size included."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    _check("AvgPool", [x], dict(kernel_size=(3, 2), strides=2), lambda a: tf.avg_pool2d(a, (3, 2), 2))
    _check("AdaptiveAvgPool2D", [x], dict(output_size=(3, 4)), lambda a: tf.adaptive_avg_pool2d(a, (3, 4)))
    _check("AdaptiveAvgPool2D", [x[0]], dict(output_size=5), lambda a: tf.adaptive_avg_pool2d(a, 5))


def test_avg_pool_same_leaves_padding_out_of_the_mean() -> None:
    """With 'same', each window's mean is over its unpadded elements: torch's count_include_pad=False on symmetric padding."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 5))
    _check("AvgPool", [x], dict(kernel_size=3, pad_mode="same"), lambda a: tf.avg_pool2d(a, 3, 1, padding=1, count_include_pad=False))


POOL_ARGS = [  # MindSpore attributes, torch's (kernel, stride, padding, dilation, ceil_mode)
    (dict(kernel_size=3, strides=2, pad_mode="pad", pad=1), (3, 2, 1, 1, False)),
    (dict(kernel_size=(3, 2), strides=(2, 1), pad_mode="pad", pad=(1, 1)), ((3, 2), (2, 1), (1, 1), 1, False)),
    (dict(kernel_size=3, strides=2, ceil_mode=True), (3, 2, 0, 1, True)),
    (dict(kernel_size=(3, 2), strides=2, pad_mode="pad", pad=(1, 0), ceil_mode=True), ((3, 2), 2, (1, 0), 1, True)),
    (dict(kernel_size=2, strides=(1, 2), pad_mode="PAD", pad=1, dilation=2), (2, (1, 2), 1, 2, False)),
    (dict(kernel_size=3, strides=2, pad_mode="pad", pad=(1, 1, 1, 1), dilation=(2, 1), ceil_mode=True), (3, 2, 1, (2, 1), True)),
]


@pytest.mark.parametrize(("attrs", "targs"), POOL_ARGS)
def test_max_pool_padding_ceil_mode_and_dilation_match_torch(attrs: dict[str, Any], targs: tuple[Any, ...]) -> None:
    """MaxPool with explicit -inf padding, ceil_mode and dilation against torch's max_pool2d: value, gradient, second order."""
    rng = np.random.default_rng(5)
    x = (2, 2, 7, 8)
    data = rng.permutation(int(np.prod(x))).reshape(x) * 0.1 + rng.uniform(0, 0.01, x)
    k, s, pad, d, ceil = targs
    _check("MaxPool", [data], attrs, lambda a: tf.max_pool2d(a, k, s, pad, d, ceil_mode=ceil))


def test_max_pool_with_argmax_indices_match_torch() -> None:
    """MaxPoolWithArgmax's plane indices with padding, dilation and ceil_mode are torch's return_indices."""
    rng = np.random.default_rng(6)
    x = rng.permutation(2 * 2 * 7 * 8).reshape(2, 2, 7, 8).astype(np.float64)
    for attrs, (k, s, pad, d, ceil) in POOL_ARGS:
        b = GraphBuilder("argmax")
        y, idx = b.op("MaxPoolWithArgmax", b.input("x", "float64", x.shape), **attrs)
        got = compile_graph(b.build((y, idx)))(x)
        want, wanted = tf.max_pool2d(torch.from_numpy(x), k, s, pad, d, ceil_mode=ceil, return_indices=True)
        np.testing.assert_array_equal(got[0], want.numpy())
        np.testing.assert_array_equal(got[1], wanted.numpy())


@pytest.mark.parametrize(("attrs", "targs"), [(a, t) for a, t in POOL_ARGS if t[3] == 1])
@pytest.mark.parametrize(("include", "divisor"), [(True, 0), (False, 0), (True, 5), (False, 2)])
def test_avg_pool_padding_ceil_mode_count_include_pad_and_divisor_match_torch(attrs: dict[str, Any], targs: tuple[Any, ...],
                                                                              include: bool, divisor: int) -> None:
    """AvgPool with explicit padding, ceil_mode, count_include_pad and divisor_override against torch's avg_pool2d:
    value, gradient and second order (AvgPoolGrad's own rule)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 7, 8))
    k, s, pad, _, ceil = targs
    full = dict(attrs, count_include_pad=include, divisor_override=divisor)
    _check("AvgPool", [x], full, lambda a: tf.avg_pool2d(a, k, s, pad, ceil, include, divisor or None))


def _cumsum(x: torch.Tensor, dim: int, exclusive: bool, reverse: bool) -> torch.Tensor:
    """MindSpore's CumSum flags written with torch.cumsum, flip and a shift."""
    y = x.flip(dim) if reverse else x
    y = y.cumsum(dim)
    if exclusive:
        y = y - (x.flip(dim) if reverse else x)
    return y.flip(dim) if reverse else y


R = np.random.default_rng(5)
A23 = R.standard_normal((2, 3))
A234 = R.standard_normal((2, 3, 4))
DISTINCT = (R.permutation(24).reshape(2, 3, 4) - 12) * 0.25
WITH_ZEROS = np.array([[0.5, 0.0, 2.0, -1.5], [0.0, 3.0, 0.7, 1.2], [1.1, -0.7, 0.9, 2.0]])  # one zero per product
MATH_CASES = [
    ("Erf", [A23], {}, torch.erf),
    ("Erfc", [A23], {}, torch.erfc),
    ("GeLU", [A23], {"approximate": "none"}, lambda a: tf.gelu(a)),
    ("GeLU", [A23], {}, lambda a: tf.gelu(a, approximate="tanh")),
    ("SiLU", [A23], {}, tf.silu),
    ("LogSumExp", [A234], {"axis": (0, 2)}, lambda a: torch.logsumexp(a, (0, 2))),
    ("LogSumExp", [A234], {"axis": (1,), "keep_dims": True}, lambda a: torch.logsumexp(a, 1, keepdim=True)),
    ("ReduceMin", [DISTINCT], {"axis": (1,)}, lambda a: torch.amin(a, 1)),
    ("ReduceProd", [A234], {"axis": (2,)}, lambda a: torch.prod(a, 2)),
    ("ReduceProd", [WITH_ZEROS], {"axis": (1,)}, lambda a: torch.prod(a, 1)),
    ("CumSum", [A234], {"axis": 1}, lambda a: torch.cumsum(a, 1)),
    ("CumSum", [A234], {"axis": -1, "exclusive": True, "reverse": True}, lambda a: _cumsum(a, -1, True, True)),
    ("CumSum", [A234], {"axis": 0, "exclusive": True}, lambda a: _cumsum(a, 0, True, False)),
    ("ClipByValue", [A23, np.array(-0.5), np.array([[0.3], [0.8]])], {}, lambda a, lo, hi: torch.clamp(a, lo, hi)),
    ("Pad", [A23], {"paddings": (1, 0, 2, 3)}, lambda a: tf.pad(a, (2, 3, 1, 0))),
    ("PadV3", [A234], {"paddings": (0, 0, 1, 2, 3, 2)}, lambda a: tf.pad(a, (3, 2, 1, 2), mode="reflect")),
    ("PadV3", [A234], {"paddings": (0, 0, 2, 1, 1, 3), "mode": "edge"}, lambda a: tf.pad(a, (1, 3, 2, 1), mode="replicate")),
    ("PadV3", [A234], {"paddings": (0, 0, 1, 2, 3, 4), "mode": "circular"}, lambda a: tf.pad(a, (3, 4, 1, 2), mode="circular")),
    ("Stack", [A23, A23 * 2], {"axis": 1}, lambda a, b: torch.stack([a, b], 1)),
    ("Einsum", [A234, R.standard_normal((2, 4, 5))], {"equation": "bij,bjk->bik"}, lambda a, b: torch.einsum("bij,bjk->bik", a, b)),
    ("Einsum", [A23, R.standard_normal(4), R.standard_normal(3)], {"equation": "ab,c,b->ca"}, lambda a, b, c: torch.einsum("ab,c,b->ca", a, b, c)),
]


@pytest.mark.parametrize(("op", "arrays", "attrs", "fn"), MATH_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MATH_CASES)])
def test_math_ops_match_torch(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], fn: Callable[..., torch.Tensor]) -> None:
    """Value, gradient and second order of each op against torch (ReduceProd also with zeros in a row)."""
    _check(op, [np.asarray(a, dtype=np.float64) for a in arrays], attrs, fn)


def test_top_k_and_unstack_match_torch() -> None:
    """TopK's values and indices, and the gradient through the values; Unstack's pieces and their gradient."""
    x = DISTINCT.reshape(6, 4)
    _check("TopK", [x], {"k": 3}, lambda a: torch.topk(a, 3).values, pick=0)
    got = compile_graph(_forward_graph("TopK", [x], {"k": 3}, {}, 1))(x)
    np.testing.assert_array_equal(got, torch.topk(torch.tensor(x), 3).indices.numpy())
    _check("Unstack", [A234], {"axis": 1}, lambda a: torch.unbind(a, 1)[2], pick=2)


def test_batch_norm_matches_torch_in_training_and_inference() -> None:
    """y and its first and second order in x, scale and bias against torch's batch_norm with batch statistics and with
    running statistics; the new moving statistics against MindSpore's CPU formula (biased batch variance)."""
    rng = np.random.default_rng(6)
    x, scale, bias = rng.standard_normal((4, 3, 2, 3)), rng.standard_normal(3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    fixed = {3: mean, 4: var}
    train = dict(is_training=True, momentum=0.2, epsilon=1e-3)
    _check("BatchNorm", [x, scale, bias], train, lambda a, s, b: tf.batch_norm(a, None, None, s, b, training=True, eps=1e-3), fixed=fixed)
    rm, rv = torch.tensor(mean), torch.tensor(var)
    _check("BatchNorm", [x, scale, bias], dict(epsilon=1e-3), lambda a, s, b: tf.batch_norm(a, rm, rv, s, b, training=False, eps=1e-3), fixed=fixed)
    outs = compile_graph(_forward_graph("BatchNorm", [x, scale, bias, mean, var], train, {}, 1))(x, scale, bias, mean, var)
    np.testing.assert_allclose(outs, 0.8 * mean + 0.2 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    outs = compile_graph(_forward_graph("BatchNorm", [x, scale, bias, mean, var], train, {}, 2))(x, scale, bias, mean, var)
    np.testing.assert_allclose(outs, 0.8 * var + 0.2 * x.var(axis=(0, 2, 3)), rtol=1e-12)
