"""2-D pooling in NCHW: MaxPool, MaxPoolWithArgmax, AvgPool with its adjoint AvgPoolGrad, AdaptiveAvgPool2D.

Windows are reduced one kernel offset at a time: each offset reads a strided slice of the (padded) input. MaxPool's gradient
scatters the cotangent to each window's first maximum through MaxPoolWithArgmax's indices and
UnsortedSegmentSum, ops with their own rules, so MaxPool differentiates to any order (the second
derivative is zero almost everywhere and the first stays exact). AvgPool and AvgPoolGrad are each
other's adjoints; AdaptiveAvgPool2D is a product with constant averaging matrices on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, defop, require_float

from .conv import onnx_output_padding, onnx_window, pad_mode_of, pair, ufunc_buffers, window_geometry
from .onnx_rules import Spec, ints

POOL_ATTRS = {
    "kernel_size": Attr("ints", (1,), "window height and width: an int, a pair or (1, 1, kh, kw)"),
    "strides": Attr("ints", (1,), "an int, a pair or (1, 1, sh, sw)"),
    "pad_mode": Attr("str", "valid", "'valid', 'same' (output ceil(input / stride)) or 'pad' (the pad attribute), either case"),
    "pad": Attr("ints", (0,), "with pad_mode 'pad': an int, (h, w) or (top, bottom, left, right), each at most half the "
                "window's extent"),
    "ceil_mode": Attr("bool", False, "with 'valid' or 'pad': the output size rounds up, the last window starting inside the "
                      "input or its top/left padding (the part past the padding is never counted)"),
    "data_format": Attr("str", "NCHW", "only NCHW"),
}
MAX_ATTRS = {**POOL_ATTRS, "dilation": Attr("ints", (1,), "spacing of a window's elements: an int, a pair or (1, 1, dh, dw)")}
AVG_ATTRS = {
    **POOL_ATTRS,
    "count_include_pad": Attr("bool", True, "with pad_mode 'pad': the explicit padding counts in each window's divisor "
                              "('same' padding and the ceil_mode overhang never do)"),
    "divisor_override": Attr("int", 0, "when positive, every window's sum is divided by it instead of its count"),
}


@dataclass(frozen=True)
class Window:
    """One pooling's geometry: input plane, kernel, output plane, padding (top, bottom, left, right) including the
    ceil_mode overhang, strides, dilation, the padding that counts in an average's divisor and its override (0: none)."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    ho: int
    wo: int
    pads: tuple[int, int, int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    counted: tuple[int, int, int, int] = (0, 0, 0, 0)
    divisor: int = 0


def _explicit_pads(pad: tuple[int, ...], mode: str, pad_mode: str) -> tuple[int, int, int, int]:
    """The pad attribute as (top, bottom, left, right); non-zero only with pad_mode 'pad'."""
    if len(pad) not in (1, 2, 4) or min(pad) < 0:
        raise GraphError(f"pad must be a non-negative int, (h, w) or (top, bottom, left, right), got {pad}")
    pads = pad * 4 if len(pad) == 1 else (pad[0], pad[0], pad[1], pad[1]) if len(pad) == 2 else tuple(pad)
    if mode != "pad" and any(pads):
        raise GraphError(f"pad must be 0 unless pad_mode is 'pad', got pad {pad} with pad_mode {pad_mode!r}")
    return pads  # type: ignore[return-value]


def _axis(size: int, keff: int, stride: int, mode: str, pads: tuple[int, int], ceil: bool) -> tuple[int, int, int]:
    """(output length, pad before, pad after including the ceil_mode overhang) of one spatial axis."""
    if mode == "same":
        return window_geometry(size, keff, stride, mode, (0, 0))
    before, after = pads
    if 2 * max(before, after) > keff:
        raise GraphError(f"pad {pads} is more than half the window's extent {keff}: a window could hold padding only")
    span = size + before + after - keff
    if span < 0:
        raise ShapeError(f"the window of extent {keff} is larger than the padded input length {size + before + after}")
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + before:
        out -= 1
    return out, before, after + max((out - 1) * stride + keff - (size + before + after), 0)


def pool_window(shape: tuple[int, ...], kernel_size: tuple[int, ...], strides: tuple[int, ...], pad_mode: str, data_format: str,
                pad: tuple[int, ...] = (0,), ceil_mode: bool = False, dilation: tuple[int, ...] = (1,),
                count_include_pad: bool = True, divisor_override: int = 0) -> Window:
    """Check the attributes against x (N, C, H, W); errors name the attribute or shape at fault."""
    if data_format != "NCHW":
        raise GraphError(f"data_format must be 'NCHW', got {data_format!r}")
    mode = pad_mode_of(pad_mode, ("valid", "same", "pad"))
    explicit = _explicit_pads(tuple(pad), mode, pad_mode)
    kh, kw = pair(kernel_size, "kernel_size")
    s = pair(strides, "strides")
    d = pair(dilation, "dilation")
    if divisor_override < 0:
        raise GraphError(f"divisor_override must be 0 (none) or positive, got {divisor_override}")
    if len(shape) != 4:
        raise ShapeError(f"x must be NCHW (rank 4), got shape {shape}")
    n, c, h, w = shape
    ho, top, bottom = _axis(h, d[0] * (kh - 1) + 1, s[0], mode, explicit[:2], ceil_mode)
    wo, left, right = _axis(w, d[1] * (kw - 1) + 1, s[1], mode, explicit[2:], ceil_mode)
    if ho < 1 or wo < 1:
        raise ShapeError(f"x of shape {shape} gives an empty output plane ({ho}, {wo})")
    counted = explicit if count_include_pad else (0, 0, 0, 0)
    return Window(n, c, h, w, kh, kw, ho, wo, (top, bottom, left, right), s, d, counted, divisor_override)


def _pool_infer(types: list[TensorType], **attrs: Any) -> TensorType:
    """Float x (N, C, H, W) gives (N, C, ho, wo)."""
    require_float(types[0], "x")
    p = pool_window(types[0].shape, **attrs)
    return TensorType(types[0].dtype, (p.n, p.c, p.ho, p.wo))


def _window_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """Each element of the larger side touches kh·kw window positions at most; plus the traffic."""
    kh, kw = pair(attrs["kernel_size"], "kernel_size")
    return kh * kw * max(inputs[0].size, outputs[0].size) + sum(t.size for t in inputs) + sum(t.size for t in outputs)


def _pool_buffers(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> tuple[int, int, int]:
    """(padded copy's bytes, output elements, bytes of the one ufunc buffer a reduction into the output from a strided
    slice takes) for a pooling node."""
    p = pool_window(inputs[0].shape, **{k: v for k, v in attrs.items() if k != "input_size"})
    item = inputs[0].dtype.itemsize
    t, b, left, r = p.pads
    padded = p.n * p.c * (p.h + t + b) * (p.w + left + r) * item if any(p.pads) else 0
    elements = p.n * p.c * p.ho * p.wo
    return padded, elements, min(elements, np.getbufsize()) * item


def _maxpool_scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """The -inf padded copy and the ufunc buffer of np.maximum over a strided slice (the running maximum is the
    output); measured with tracemalloc in tests/test_engine_scratch.py."""
    padded, _, buffer = _pool_buffers(inputs, outputs, attrs)
    return padded + buffer


def _maxpool_argmax_scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """MaxPool's (a second buffer for the comparison), plus the int64 offset index, the comparison mask and the
    row, column and clipped index arrays (at most five output-sized int64 arrays and one bool array at a time
    besides the result)."""
    padded, elements, buffer = _pool_buffers(inputs, outputs, attrs)
    return padded + 2 * buffer + elements * (5 * 8 + 1)


def _avgpool_scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """The zero-padded copy, the window sums before the division (output-sized), the (ho, wo) counts and the ufunc
    buffer of the strided in-place adds."""
    padded, elements, buffer = _pool_buffers(inputs, outputs, attrs)
    item = inputs[0].dtype.itemsize
    return padded + elements * item + outputs[0].shape[-2] * outputs[0].shape[-1] * item + buffer


# ---- MaxPool and MaxPoolWithArgmax ----


def _padded_input(x: np.ndarray, p: Window, fill: float) -> np.ndarray:
    """x with ``fill`` around its last two axes as the window geometry asks (x itself without padding)."""
    return x if not any(p.pads) else np.pad(x, ((0, 0), (0, 0), p.pads[:2], p.pads[2:]), constant_values=fill)


def _offsets(xp: np.ndarray, p: Window) -> Any:
    """For each kernel offset (i, j): i, j and the (N, C, ho, wo) strided slice of the padded input it reads."""
    sh, sw = p.strides
    dh, dw = p.dilation
    for i in range(p.kh):
        for j in range(p.kw):
            yield i, j, xp[:, :, i * dh:i * dh + sh * (p.ho - 1) + 1:sh, j * dw:j * dw + sw * (p.wo - 1) + 1:sw]


def _max_and_argmax(x: np.ndarray, p: Window, want_index: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Window maxima by one pass per kernel offset, and (if asked) the index into each H * W plane of the first
    maximum (int64; a window holding only -inf keeps its first real position)."""
    best: np.ndarray | None = None
    index: np.ndarray | None = None
    xp = _padded_input(x, p, -np.inf)
    for i, j, piece in _offsets(xp, p):
        if best is None:
            best = piece.copy()
            index = np.zeros(best.shape, np.int64) if want_index else None
            continue
        if want_index:
            better = piece > best
            index[better] = i * p.kw + j  # type: ignore[index]
        np.maximum(best, piece, out=best)
    assert best is not None
    if index is None:
        return best, None
    rows = np.arange(p.ho).reshape(-1, 1) * p.strides[0] - p.pads[0] + index // p.kw * p.dilation[0]
    cols = np.arange(p.wo) * p.strides[1] - p.pads[2] + index % p.kw * p.dilation[1]
    # Clipping keeps an all -inf window's index on a real element of that window.
    return best, np.clip(rows, 0, p.h - 1) * p.w + np.clip(cols, 0, p.w - 1)


def _scatter_to_planes(g: Value, argmax: Value, x: Value) -> Value:
    """dx: each output's cotangent added at its plane index (a flat UnsortedSegmentSum, whose rule is a Gather)."""
    n, c, h, w = x.shape
    offsets = x.builder.const((np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1))  # type: ignore[union-attr]
    flat = F.Reshape(argmax + offsets, shape=(-1,))
    return F.Reshape(F.UnsortedSegmentSum(F.Reshape(g, shape=(-1,)), flat, num_segments=n * c * h * w), shape=x.shape)


def _maxpool_vjp(g: Value, out: Value, x: Value, **attrs: Any) -> Value:
    """Route g to each window's first maximum."""
    return _scatter_to_planes(g, F.MaxPoolWithArgmax(x, **attrs)[1], x)


def _maxpool_argmax_vjp(g: tuple[Value | None, Value | None], out: tuple[Value, Value], x: Value, **attrs: Any) -> Value:
    """The values route their cotangent to the maxima; the indices take none."""
    return _scatter_to_planes(g[0], out[1], x) if g[0] is not None else F.ZerosLike(x)


def _maxpool_argmax_infer(types: list[TensorType], **attrs: Any) -> tuple[TensorType, TensorType]:
    """Pooled values in x's dtype and int64 plane indices, both (N, C, ho, wo)."""
    y = _pool_infer(types, **attrs)
    return y, TensorType(np.dtype(np.int64), y.shape)


def _maxpool(x: np.ndarray, **attrs: Any) -> np.ndarray:
    """Max over each window of x padded with -inf."""
    return _max_and_argmax(x, pool_window(x.shape, **attrs), False)[0]


def _maxpool_argmax(x: np.ndarray, **attrs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The maxima and their plane indices."""
    y, index = _max_and_argmax(x, pool_window(x.shape, **attrs), True)
    return y, index  # type: ignore[return-value]


def _onnx_pool(c: OnnxCall, shape: tuple[int, ...]) -> tuple[Window, dict[str, list[int]]]:
    """The window of a pooling of input ``shape`` and its ONNX attributes: the ceil_mode overhang is folded into the pads
    (ceil_mode stays 0, so no runtime's rounding rule matters) and dilations appear only when not 1."""
    p = pool_window(shape, **{k: v for k, v in c.attrs.items() if k != "input_size"})
    attrs = onnx_window((p.kh, p.kw), p.pads, p.strides, p.dilation)
    if p.dilation == (1, 1):
        del attrs["dilations"]
    return p, attrs


def _maxpool_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX MaxPool (its padding never wins a max, as -inf here)."""
    return [("MaxPool", c.x, c.y, _onnx_pool(c, c.types[0].shape)[1])]


def _maxpool_argmax_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX MaxPool with Indices (flat over the whole tensor, first maximum of each window) reduced to plane indices."""
    p, attrs = _onnx_pool(c, c.types[0].shape)
    return [("MaxPool", c.x, (c.y[0], c.tmp("flat")), attrs), ("Mod", (c.tmp("flat"), ints([p.h * p.w]).reshape(())), (c.y[1],))]


defop(
    "MaxPool",
    ("x",),
    _pool_infer,
    _maxpool,
    _maxpool_vjp,
    attrs=MAX_ATTRS,
    doc="max over kernel_size windows (elements dilation apart) of x (N, C, H, W) moved by strides; 'same', 'pad' and "
        "ceil_mode pad with -inf; the gradient goes to each window's first maximum",
    onnx=_maxpool_onnx,
    cost=_window_cost,
    scratch_bytes=_maxpool_scratch,
)
defop(
    "MaxPoolWithArgmax",
    ("x",),
    _maxpool_argmax_infer,
    _maxpool_argmax,
    _maxpool_argmax_vjp,
    attrs=MAX_ATTRS,
    doc="MaxPool's output and argmax (int64): the index into the H * W plane of each window's first maximum",
    onnx=_maxpool_argmax_onnx,
    outputs=("output", "argmax"),
    cost=_window_cost,
    scratch_bytes=_maxpool_argmax_scratch,
)

# ---- AvgPool and AvgPoolGrad ----


def _counts(p: Window, dtype: np.dtype) -> np.ndarray:
    """Each window's divisor as (ho, wo): divisor_override, else how many of its elements lie in the input or in the
    padding that counts (count_include_pad with pad_mode 'pad')."""
    if p.divisor:
        return np.full((p.ho, p.wo), p.divisor, dtype)

    def axis(size: int, k: int, s: int, before: int, out: int, counted: tuple[int, int]) -> np.ndarray:
        start = np.arange(out) * s - before
        return np.minimum(start + k, size + counted[1]) - np.maximum(start, -counted[0])

    rows = axis(p.h, p.kh, p.strides[0], p.pads[0], p.ho, p.counted[:2])
    return np.outer(rows, axis(p.w, p.kw, p.strides[1], p.pads[2], p.wo, p.counted[2:])).astype(dtype)


def _avgpool(x: np.ndarray, **attrs: Any) -> np.ndarray:
    """Sum over each zero-padded window divided by the number of unpadded elements in it."""
    p = pool_window(x.shape, **attrs)
    total = np.zeros((p.n, p.c, p.ho, p.wo), x.dtype)
    for _, _, piece in _offsets(_padded_input(x, p, 0), p):
        total += piece
    return total / _counts(p, x.dtype)


def _avgpool_grad(dy: np.ndarray, input_size: tuple[int, ...], **attrs: Any) -> np.ndarray:
    """The adjoint of AvgPool: dy / count added to every element of its window, one slice add per kernel offset."""
    p = pool_window(tuple(input_size), **attrs)
    share = dy / _counts(p, dy.dtype)
    t, b, left, r = p.pads
    dxp = np.zeros((p.n, p.c, p.h + t + b, p.w + left + r), dy.dtype)
    for _, _, piece in _offsets(dxp, p):
        piece += share
    return np.ascontiguousarray(dxp[:, :, t:t + p.h, left:left + p.w])


def _avgpool_grad_infer(types: list[TensorType], input_size: tuple[int, ...], **attrs: Any) -> TensorType:
    """dout must have the shape AvgPool gives for input_size; the result has input_size."""
    require_float(types[0], "dout")
    if len(input_size) != 4 or min(input_size) < 0:
        raise GraphError(f"input_size must hold 4 non-negative dimensions, got {input_size}")
    p = pool_window(tuple(input_size), **attrs)
    if types[0].shape != (p.n, p.c, p.ho, p.wo):
        raise ShapeError(f"dout has shape {types[0].shape}, but AvgPool of input_size {tuple(input_size)} gives {(p.n, p.c, p.ho, p.wo)}")
    return TensorType(types[0].dtype, tuple(input_size))


def _avgpool_grad_scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """dout divided by the counts, the padded result before the crop (the result itself without padding), and
    the ufunc buffers of the strided in-place adds."""
    p = pool_window(outputs[0].shape, **{k: v for k, v in attrs.items() if k != "input_size"})
    t, b, left, r = p.pads
    padded = p.n * p.c * (p.h + t + b) * (p.w + left + r) * outputs[0].dtype.itemsize if any(p.pads) else 0
    return inputs[0].nbytes + padded + ufunc_buffers(outputs[0].dtype.itemsize)


def _avgpool_grad_onnx(c: OnnxCall) -> list[Spec]:
    """dout divided by the window counts, spread over each window by a depthwise ConvTranspose with a kernel of ones."""
    p, attrs = _onnx_pool(c, tuple(c.attrs["input_size"]))
    dt = c.types[0].dtype
    ones = np.ones((p.c, 1, p.kh, p.kw), dt)
    extra = onnx_output_padding((p.h, p.w), (p.kh, p.kw), (p.ho, p.wo), p.pads, p.strides)
    return [("Div", (c.x[0], _counts(p, dt)), (c.tmp("share"),)),
            ("ConvTranspose", (c.tmp("share"), ones), c.y, {**attrs, "group": p.c, "output_padding": extra})]


def _avgpool_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX AveragePool over the same padding, counting it (count_include_pad 1: every divisor kh * kw) when the
    explicit padding counts here, else not; a Mul by a constant (ho, wo) rescales where the divisors differ (the
    ceil_mode overhang, divisor_override)."""
    p, attrs = _onnx_pool(c, c.types[0].shape)
    include = any(p.counted)
    dt = c.types[0].dtype
    native = np.full((p.ho, p.wo), p.kh * p.kw, dt) if include else _counts(Window(**{**p.__dict__, "divisor": 0}), dt)
    wanted = _counts(p, dt)
    if np.array_equal(native, wanted):
        return [("AveragePool", c.x, c.y, {**attrs, "count_include_pad": int(include)})]
    return [("AveragePool", c.x, (c.tmp("mean"),), {**attrs, "count_include_pad": int(include)}),
            ("Mul", (c.tmp("mean"), native / wanted), c.y)]


def _adaptive_onnx(c: OnnxCall) -> list[Spec]:
    """Two MatMuls with the constant bin matrices."""
    shape = c.types[0].shape
    oh, ow = _adaptive_size(shape, c.attrs["output_size"])
    dt = c.types[0].dtype
    return [("MatMul", (_bins(shape[-2], oh).astype(dt), c.x[0]), (c.tmp("rows"),)),
            ("MatMul", (c.tmp("rows"), np.ascontiguousarray(_bins(shape[-1], ow).T.astype(dt))), c.y)]


defop(
    "AvgPool",
    ("x",),
    _pool_infer,
    _avgpool,
    lambda g, out, x, **attrs: F.AvgPoolGrad(g, input_size=x.shape, **attrs),
    attrs=AVG_ATTRS,
    doc="sum over kernel_size windows of x (N, C, H, W) moved by strides, divided by divisor_override or by the window's "
        "count: its input elements, plus its 'pad' padding with count_include_pad ('same' padding never counts)",
    onnx=_avgpool_onnx,
    cost=_window_cost,
    scratch_bytes=_avgpool_scratch,
)
defop(
    "AvgPoolGrad",
    ("dout",),
    _avgpool_grad_infer,
    _avgpool_grad,
    lambda g, out, dy, input_size, **attrs: F.AvgPool(g, **attrs),
    attrs={**AVG_ATTRS, "input_size": Attr("ints", doc="shape (N, C, H, W) of AvgPool's input, the result's shape")},
    doc="gradient of AvgPool: each dout element divided by its window's count and added over the window; its own gradient is AvgPool",
    cost=_window_cost,
    scratch_bytes=_avgpool_grad_scratch,
    onnx=_avgpool_grad_onnx,
)

# ---- AdaptiveAvgPool2D ----


def _bins(size: int, out: int) -> np.ndarray:
    """The (out, size) averaging matrix of adaptive pooling: row i averages [floor(i*size/out), ceil((i+1)*size/out))."""
    i = np.arange(out)
    start, stop = i * size // out, -(-(i + 1) * size // out)
    j = np.arange(size)
    inside = (j >= start[:, None]) & (j < stop[:, None])
    return inside / (stop - start)[:, None]


def _adaptive_size(shape: tuple[int, ...], output_size: tuple[int, ...]) -> tuple[int, int]:
    """The output plane: an int or a pair; -1 (MindSpore's None) keeps that input dimension."""
    if len(shape) not in (3, 4):
        raise ShapeError(f"x must be (C, H, W) or (N, C, H, W), got shape {shape}")
    size = output_size * 2 if len(output_size) == 1 else output_size
    if len(size) != 2 or any(d == 0 or d < -1 for d in size):
        raise GraphError(f"output_size must be a positive int or pair (-1 keeps the input's size), got {output_size}")
    return tuple(shape[-2 + i] if d == -1 else d for i, d in enumerate(size))  # type: ignore[return-value]


def _adaptive_infer(types: list[TensorType], output_size: tuple[int, ...]) -> TensorType:
    """Float x (.., H, W) gives (.., oh, ow)."""
    require_float(types[0], "x")
    oh, ow = _adaptive_size(types[0].shape, output_size)
    return TensorType(types[0].dtype, types[0].shape[:-2] + (oh, ow))


def _adaptive(x: np.ndarray, output_size: tuple[int, ...]) -> np.ndarray:
    """Rows then columns averaged by the bin matrices: two matmuls."""
    oh, ow = _adaptive_size(x.shape, output_size)
    return _bins(x.shape[-2], oh).astype(x.dtype) @ x @ _bins(x.shape[-1], ow).T.astype(x.dtype)


def _adaptive_vjp(g: Value, out: Value, x: Value, output_size: tuple[int, ...]) -> Value:
    """dx = Phᵀ g Pw, as BatchMatMul nodes over constant bin matrices."""
    oh, ow = _adaptive_size(x.shape, output_size)
    b = x.builder
    ph = b.const(_bins(x.shape[-2], oh), dtype=x.dtype)  # type: ignore[union-attr]
    pw = b.const(_bins(x.shape[-1], ow), dtype=x.dtype)  # type: ignore[union-attr]
    return F.BatchMatMul(F.BatchMatMul(ph, g, transpose_a=True), pw)


def _adaptive_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """The two products: 2·oh·H·W plus 2·oh·W·ow per plane, and the traffic."""
    x, y = inputs[0], outputs[0]
    planes = x.size // max(x.shape[-2] * x.shape[-1], 1)
    h, w = x.shape[-2:]
    oh, ow = y.shape[-2:]
    return 2 * planes * (oh * h * w + oh * w * ow) + x.size + y.size


def _adaptive_scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """The row-averaged intermediate (oh rows of W per plane) and the two bin matrices, in float64 and cast."""
    x, y = inputs[0], outputs[0]
    planes = x.size // max(x.shape[-2] * x.shape[-1], 1)
    h, w = x.shape[-2:]
    oh, ow = y.shape[-2:]
    return planes * oh * w * x.dtype.itemsize + (oh * h + w * ow) * (8 + x.dtype.itemsize)


def _none_as_minus_one(output_size: Any) -> Any:
    """MindSpore's output_size: an int, or a pair whose None entries keep that input dimension (-1 here)."""
    if isinstance(output_size, (tuple, list)):
        return tuple(-1 if d is None else d for d in output_size)
    return output_size


defop(
    "AdaptiveAvgPool2D",
    ("x",),
    _adaptive_infer,
    _adaptive,
    _adaptive_vjp,
    attrs={"output_size": Attr("ints", doc="output (oh, ow): an int or a pair; -1 keeps that input dimension (MindSpore's None)",
                               convert=_none_as_minus_one)},
    doc="averages x (.., H, W) over adaptive bins [floor(i H / oh), ceil((i + 1) H / oh)) per axis",
    onnx=_adaptive_onnx,
    cost=_adaptive_cost,
    scratch_bytes=_adaptive_scratch,
)
