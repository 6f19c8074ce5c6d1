"""2-D convolution in NCHW: Conv2D and the two products its gradient is made of, Conv2DBackpropInput
(also registered as Conv2DTranspose, as in MindSpore) and Conv2DBackpropFilter.

All three run as im2col through one batched matmul: the windows are a strided view of the padded
input, copied once into columns (or, for the input gradient, columns added back at each of the
kernel's kh*kw offsets). The three are linear in each input and each one's VJP is made of the
other two, so every order of gradient stays inside this family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, defop, require_float, same_dtype

from .onnx_rules import Spec, ints, reshape

CONV_ATTRS = {
    "out_channel": Attr("int", doc="number of output channels (the weight's first dimension)"),
    "kernel_size": Attr("ints", doc="kernel height and width: an int or a pair"),
    "mode": Attr("int", 1, "MindSpore's convolution mode; only 1 is defined"),
    "pad_mode": Attr("str", "valid", "'valid' (no padding), 'same' (output = ceil(input / stride)) or 'pad' (the pad attribute)"),
    "pad": Attr("ints", (0,), "with pad_mode 'pad': an int, or (top, bottom, left, right)"),
    "stride": Attr("ints", (1,), "an int, a pair, or (1, 1, sh, sw)"),
    "dilation": Attr("ints", (1,), "an int, a pair, or (1, 1, dh, dw)"),
    "group": Attr("int", 1, "number of channel groups; in and out channels must divide by it"),
    "data_format": Attr("str", "NCHW", "only NCHW"),
}


def pair(v: tuple[int, ...], what: str) -> tuple[int, int]:
    """An int, a pair or MindSpore's 4-tuple (1, 1, h, w) as (h, w) of positive values."""
    if len(v) == 1:
        v = (v[0], v[0])
    elif len(v) == 4:
        v = v[2:]
    if len(v) != 2 or min(v) < 1:
        raise GraphError(f"{what} must be a positive int, a pair or a 4-tuple, got {v}")
    return v[0], v[1]


def pad_mode_of(pad_mode: str, allowed: Sequence[str]) -> str:
    """The pad mode in lower case (MindSpore accepts either case), or a GraphError listing the allowed ones."""
    mode = pad_mode.lower()
    if mode not in allowed:
        raise GraphError(f"pad_mode must be one of {', '.join(allowed)}, got {pad_mode!r}")
    return mode


def window_geometry(size: int, k: int, stride: int, mode: str, pads: tuple[int, int]) -> tuple[int, int, int]:
    """(output length, pad before, pad after) of one spatial axis for a window of effective length k."""
    if mode == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    before, after = pads if mode == "pad" else (0, 0)
    span = size + before + after - k
    if span < 0:
        raise ShapeError(f"the window of extent {k} is larger than the padded input length {size + before + after}")
    return span // stride + 1, before, after


@dataclass(frozen=True)
class Geometry:
    """Everything the NumPy code needs about one convolution: sizes, padding, stride, dilation, groups."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    ho: int
    wo: int
    pads: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    group: int

    @property
    def k(self) -> int:
        """Length of one column: input channels per group times the kernel's positions."""
        return self.c // self.group * self.kh * self.kw

    @property
    def flops(self) -> int:
        """Multiply-adds of the product, counted as two operations each."""
        return 2 * self.n * self.o * self.ho * self.wo * self.k


def geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict[str, Any]) -> Geometry:
    """Check the attributes against x (N, C, H, W) and the weight (O, C/group, kh, kw); a ShapeError or
    GraphError names the attribute or dimension at fault."""
    if attrs["mode"] != 1:
        raise GraphError(f"mode must be 1, got {attrs['mode']}")
    if attrs["data_format"] != "NCHW":
        raise GraphError(f"data_format must be 'NCHW', got {attrs['data_format']!r}")
    mode = pad_mode_of(attrs["pad_mode"], ("valid", "same", "pad"))
    pad = attrs["pad"]
    if len(pad) not in (1, 4) or min(pad) < 0:
        raise GraphError(f"pad must be a non-negative int or (top, bottom, left, right), got {pad}")
    pad4 = pad * 4 if len(pad) == 1 else pad
    if mode != "pad" and any(pad4):
        raise GraphError(f"pad must be 0 unless pad_mode is 'pad', got pad {pad} with pad_mode {attrs['pad_mode']!r}")
    kh, kw = pair(attrs["kernel_size"], "kernel_size")
    stride = pair(attrs["stride"], "stride")
    dilation = pair(attrs["dilation"], "dilation")
    group, o = attrs["group"], attrs["out_channel"]
    if len(x_shape) != 4:
        raise ShapeError(f"x must be NCHW (rank 4), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ShapeError(f"weight must be (out_channel, in_channel / group, kh, kw), got shape {w_shape}")
    n, c, h, w = x_shape
    if group < 1 or c % group or o % group:
        raise GraphError(f"group {group} must be positive and divide the {c} input and {o} output channels")
    want = (o, c // group, kh, kw)
    if tuple(w_shape) != want:
        raise ShapeError(f"weight has shape {w_shape}, expected (out_channel, in_channel / group, kh, kw) = {want} for x {x_shape}")
    ho, top, bottom = window_geometry(h, dilation[0] * (kh - 1) + 1, stride[0], mode, pad4[:2])
    wo, left, right = window_geometry(w, dilation[1] * (kw - 1) + 1, stride[1], mode, pad4[2:])
    return Geometry(n, c, h, w, o, kh, kw, ho, wo, (top, bottom, left, right), stride, dilation, group)


def padded(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """x with zero rows and columns added around its last two axes (x itself when there are none)."""
    if not any(pads):
        return x
    t, b, left, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))


def windows(xp: np.ndarray, kh: int, kw: int, ho: int, wo: int, stride: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """A read-only strided view (N, C, kh, kw, ho, wo) of every window of the padded input: no copy."""
    sn, sc, sh, sw = xp.strides
    shape = xp.shape[:2] + (kh, kw, ho, wo)
    steps = (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1])
    return as_strided(xp, shape, steps, writeable=False)


def _columns(x: np.ndarray, g: Geometry) -> np.ndarray:
    """im2col: (group, C/group * kh * kw, N * ho * wo), one copy of the windows' view."""
    view = windows(padded(x, g.pads), g.kh, g.kw, g.ho, g.wo, g.stride, g.dilation)
    view = view.reshape(g.n, g.group, g.c // g.group, g.kh, g.kw, g.ho, g.wo).transpose(1, 2, 3, 4, 0, 5, 6)
    return view.reshape(g.group, g.k, g.n * g.ho * g.wo)


def _out_rows(dy: np.ndarray, g: Geometry) -> np.ndarray:
    """The output-shaped dy (N, O, ho, wo) as (group, O/group, N * ho * wo)."""
    return dy.reshape(g.n, g.group, g.o // g.group, g.ho * g.wo).transpose(1, 2, 0, 3).reshape(g.group, g.o // g.group, -1)


def _grouped(a: np.ndarray, b: np.ndarray, transpose_a: bool = False, transpose_b: bool = False) -> np.ndarray:
    """One 2-D matrix product per group (BLAS sees each transposed operand as such; a stacked matmul over
    transposed views falls back to NumPy's slow loop)."""
    pairs = [(ai.T if transpose_a else ai, bi.T if transpose_b else bi) for ai, bi in zip(a, b)]
    out = np.empty((len(pairs), pairs[0][0].shape[0], pairs[0][1].shape[1]), np.result_type(a, b))
    for k, (ai, bi) in enumerate(pairs):
        np.dot(ai, bi, out=out[k])
    return out


def conv2d(x: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """y (N, O, ho, wo) = weight rows times the input's columns, one matmul per group."""
    y = _grouped(w.reshape(g.group, g.o // g.group, g.k), _columns(x, g))
    return np.ascontiguousarray(y.reshape(g.o, g.n, g.ho, g.wo).transpose(1, 0, 2, 3))


def conv2d_filter_grad(dy: np.ndarray, x: np.ndarray, g: Geometry) -> np.ndarray:
    """dW (O, C/group, kh, kw) = dy's rows times the transposed columns of x."""
    dw = _grouped(_out_rows(dy, g), _columns(x, g), transpose_b=True)
    return dw.reshape(g.o, g.c // g.group, g.kh, g.kw)


def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """dX (N, C, H, W): columns = Wᵀ dy, added back into the padded input at each of the kh*kw offsets."""
    cols = _grouped(w.reshape(g.group, g.o // g.group, g.k), _out_rows(dy, g), transpose_a=True)
    cols = cols.reshape(g.c, g.kh, g.kw, g.n, g.ho, g.wo)
    t, b, left, r = g.pads
    dxp = np.zeros((g.n, g.c, g.h + t + b, g.w + left + r), dy.dtype)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    for i in range(g.kh):
        for j in range(g.kw):
            rows = slice(i * dh, i * dh + sh * (g.ho - 1) + 1, sh)
            cols_ = slice(j * dw, j * dw + sw * (g.wo - 1) + 1, sw)
            dxp[:, :, rows, cols_] += cols[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, t:t + g.h, left:left + g.w])


def _size(v: tuple[int, ...], what: str) -> tuple[int, ...]:
    """A 4-d size attribute (input_size, filter_size) with non-negative entries."""
    if len(v) != 4 or min(v) < 0:
        raise GraphError(f"{what} must hold 4 non-negative dimensions, got {v}")
    return tuple(v)


def _conv_cost(which: int) -> Any:
    """Cost of a member of the family: the product's FLOPs plus its traffic; ``which`` says where x's shape is."""

    def cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
        """2·N·O·ho·wo·(C/group·kh·kw) plus every element read and written."""
        shapes = [inputs[0].shape, inputs[1].shape, outputs[0].shape]
        x_shape = shapes[which]
        w_shape = shapes[1] if which != 1 else shapes[2]
        g = geometry(x_shape, w_shape, attrs)
        return g.flops + sum(t.size for t in inputs) + outputs[0].size

    return cost


def ufunc_buffers(itemsize: int) -> int:
    """Bytes of the two buffers NumPy's ufunc machinery may take for an in-place add into a strided slice."""
    return 2 * np.getbufsize() * itemsize


def _padded_bytes(g: Geometry, itemsize: int) -> int:
    """Bytes of the zero-padded input copy (none when there is no padding)."""
    t, b, left, r = g.pads
    return g.n * g.c * (g.h + t + b) * (g.w + left + r) * itemsize if any(g.pads) else 0


def _columns_bytes(g: Geometry, itemsize: int) -> int:
    """Bytes of the im2col columns: C·kh·kw rows of N·ho·wo, about kh·kw·ho·wo/(H·W) times the input."""
    return g.group * g.k * g.n * g.ho * g.wo * itemsize


def _conv_scratch(which: int) -> Any:
    """Temporaries of a member of the family, from the same geometry as its cost; ``which`` as in ``_conv_cost``."""

    def scratch(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
        """Beyond the output, counted by the planner for the whole step. Conv2D: the columns with the padded copy,
        then with the product (output-sized) before its transpose. Filter gradient: dout's rows, the padded copy
        and the columns at once. Input gradient: the columns with dout's rows, then with the padded result, which
        strided in-place adds fill through NumPy's ufunc buffers."""
        shapes = [inputs[0].shape, inputs[1].shape, outputs[0].shape]
        g = geometry(shapes[which], shapes[1] if which != 1 else shapes[2], attrs)
        item = outputs[0].dtype.itemsize
        cols, pad, dout = _columns_bytes(g, item), _padded_bytes(g, item), g.n * g.o * g.ho * g.wo * item
        if which == 0:
            return max(cols + max(pad - dout, 0), dout)
        if which == 1:
            return dout + pad + cols
        return cols + max(dout, pad) + ufunc_buffers(item)

    return scratch


def onnx_window(kernel: tuple[int, int], pads: tuple[int, int, int, int], stride: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> dict[str, list[int]]:
    """ONNX's attributes of a 2-D window: pads as (top, left, bottom, right)."""
    t, b, left, r = pads
    return {"kernel_shape": list(kernel), "pads": [t, left, b, r], "strides": list(stride), "dilations": list(dilation)}


def onnx_output_padding(size: tuple[int, int], keff: tuple[int, int], out: tuple[int, int], pads: tuple[int, int, int, int],
                        stride: tuple[int, int]) -> list[int]:
    """The rows and columns past the last window that a transposed convolution must add back so that its result has
    the forward input's size (those a strided window never reached)."""
    t, b, left, r = pads
    return [size[0] + t + b - keff[0] - (out[0] - 1) * stride[0], size[1] + left + r - keff[1] - (out[1] - 1) * stride[1]]


def _conv_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX Conv with the same padding, strides, dilations and groups."""
    g = geometry(c.types[0].shape, c.types[1].shape, c.attrs)
    return [("Conv", c.x, c.y, {**onnx_window((g.kh, g.kw), g.pads, g.stride, g.dilation), "group": g.group})]


def _bpi_onnx(c: OnnxCall) -> list[Spec]:
    """ConvTranspose of dout with the same weight (its layout (O, C/group, kh, kw) is ConvTranspose's), padding cropped
    and the rows no window reached added back as output padding."""
    g = geometry(tuple(c.attrs["input_size"]), c.types[1].shape, c.attrs)
    keff = (g.dilation[0] * (g.kh - 1) + 1, g.dilation[1] * (g.kw - 1) + 1)
    extra = onnx_output_padding((g.h, g.w), keff, (g.ho, g.wo), g.pads, g.stride)
    return [("ConvTranspose", c.x, c.y, {**onnx_window((g.kh, g.kw), g.pads, g.stride, g.dilation), "group": g.group,
                                         "output_padding": extra})]


def _bpf_onnx(c: OnnxCall) -> list[Spec]:
    """dW as a Conv with batch and channel axes swapped: x as (C/group, group * N, H, W) convolved with dout as the
    kernel (O, N, ho, wo), strides and dilations exchanged, in groups; windows past the kernel cropped, then
    (C/group, O, kh, kw) transposed to (O, C/group, kh, kw)."""
    (dy, x), t = c.x, c.tmp
    g = geometry(c.types[1].shape, tuple(c.attrs["filter_size"]), c.attrs)
    cg, og = g.c // g.group, g.o // g.group
    specs: list[Spec] = [
        reshape(x, (g.n, g.group, cg, g.h, g.w), t("x5")), ("Transpose", (t("x5"),), (t("xt"),), {"perm": [2, 1, 0, 3, 4]}),
        reshape(t("xt"), (cg, g.group * g.n, g.h, g.w), t("xs")),
        reshape(dy, (g.n, g.group, og, g.ho, g.wo), t("d5")), ("Transpose", (t("d5"),), (t("dt"),), {"perm": [1, 2, 0, 3, 4]}),
        reshape(t("dt"), (g.o, g.n, g.ho, g.wo), t("ds")),
        ("Conv", (t("xs"), t("ds")), (t("full"),),
         {**onnx_window((g.ho, g.wo), g.pads, g.dilation, g.stride), "group": g.group}),
        ("Slice", (t("full"), ints((0, 0)), ints((g.kh, g.kw)), ints((2, 3))), (t("cropped"),)),
        ("Transpose", (t("cropped"),), c.y, {"perm": [1, 0, 2, 3]}),
    ]
    return specs


# ---- Conv2D ----


def _conv_infer(types: list[TensorType], **attrs: Any) -> TensorType:
    """Float x (N, C, H, W) and weight (O, C/group, kh, kw) of one dtype give (N, O, ho, wo)."""
    dt = same_dtype(types, "x and weight")
    require_float(types[0], "x and weight")
    g = geometry(types[0].shape, types[1].shape, attrs)
    return TensorType(dt, (g.n, g.o, g.ho, g.wo))


def _conv_vjp(dy: Value, out: Value, x: Value, w: Value, **attrs: Any) -> tuple[Value, Value]:
    """The input gradient is Conv2DBackpropInput, the weight gradient Conv2DBackpropFilter."""
    return (F.Conv2DBackpropInput(dy, w, input_size=x.shape, **attrs),
            F.Conv2DBackpropFilter(dy, x, filter_size=w.shape, **attrs))


defop(
    "Conv2D",
    ("x", "weight"),
    _conv_infer,
    lambda x, w, **attrs: conv2d(x, w, geometry(x.shape, w.shape, attrs)),
    _conv_vjp,
    attrs=CONV_ATTRS,
    doc="2-D cross-correlation of x (N, C, H, W) with weight (O, C/group, kh, kw): y (N, O, ho, wo)",
    cost=_conv_cost(0),
    scratch_bytes=_conv_scratch(0),
    onnx=_conv_onnx,
)

# ---- Conv2DBackpropInput and Conv2DTranspose ----


def _bpi_infer(types: list[TensorType], input_size: tuple[int, ...], **attrs: Any) -> TensorType:
    """dout must have the shape Conv2D gives for an input of input_size; the output has input_size."""
    dt = same_dtype(types, "dout and weight")
    require_float(types[0], "dout and weight")
    size = _size(input_size, "input_size")
    g = geometry(size, types[1].shape, attrs)
    if types[0].shape != (g.n, g.o, g.ho, g.wo):
        raise ShapeError(f"dout has shape {types[0].shape}, but Conv2D of input_size {size} gives {(g.n, g.o, g.ho, g.wo)}")
    return TensorType(dt, size)


def _bpi_vjp(gx: Value, out: Value, dy: Value, w: Value, input_size: tuple[int, ...], **attrs: Any) -> tuple[Value, Value]:
    """The adjoint of the input gradient is Conv2D of the cotangent; its weight gradient is a filter gradient."""
    return F.Conv2D(gx, w, **attrs), F.Conv2DBackpropFilter(dy, gx, filter_size=w.shape, **attrs)


_BPI_ATTRS = {**CONV_ATTRS, "input_size": Attr("ints", doc="shape (N, C, H, W) of the convolution's input, the result's shape")}
for _name, _doc in (
    ("Conv2DBackpropInput", "gradient of Conv2D with respect to its input: dout (N, O, ho, wo), weight -> (N, C, H, W) = input_size"),
    ("Conv2DTranspose", "transposed convolution, MindSpore's alias of Conv2DBackpropInput: x (N, O, ho, wo), weight -> input_size"),
):
    defop(
        _name,
        ("dout", "weight"),
        _bpi_infer,
        lambda dy, w, input_size, **attrs: conv2d_input_grad(dy, w, geometry(input_size, w.shape, attrs)),
        _bpi_vjp,
        attrs=_BPI_ATTRS,
        doc=_doc,
        cost=_conv_cost(2),
        scratch_bytes=_conv_scratch(2),
        call_attrs=("input_size",),
        onnx=_bpi_onnx,
    )

# ---- Conv2DBackpropFilter ----


def _bpf_infer(types: list[TensorType], filter_size: tuple[int, ...], **attrs: Any) -> TensorType:
    """dout must have the shape Conv2D gives for x and a weight of filter_size; the output has filter_size."""
    dt = same_dtype(types, "dout and x")
    require_float(types[0], "dout and x")
    size = _size(filter_size, "filter_size")
    g = geometry(types[1].shape, size, attrs)
    if types[0].shape != (g.n, g.o, g.ho, g.wo):
        raise ShapeError(f"dout has shape {types[0].shape}, but Conv2D of x {types[1].shape} gives {(g.n, g.o, g.ho, g.wo)}")
    return TensorType(dt, size)


def _bpf_vjp(gw: Value, out: Value, dy: Value, x: Value, filter_size: tuple[int, ...], **attrs: Any) -> tuple[Value, Value]:
    """The adjoint of the filter gradient in dout is Conv2D of x with the cotangent; in x it is an input gradient."""
    return F.Conv2D(x, gw, **attrs), F.Conv2DBackpropInput(dy, gw, input_size=x.shape, **attrs)


defop(
    "Conv2DBackpropFilter",
    ("dout", "x"),
    _bpf_infer,
    lambda dy, x, filter_size, **attrs: conv2d_filter_grad(dy, x, geometry(x.shape, filter_size, attrs)),
    _bpf_vjp,
    attrs={**CONV_ATTRS, "filter_size": Attr("ints", doc="shape (O, C/group, kh, kw) of the weight, the result's shape")},
    doc="gradient of Conv2D with respect to its weight: dout (N, O, ho, wo), x (N, C, H, W) -> filter_size",
    cost=_conv_cost(1),
    scratch_bytes=_conv_scratch(1),
    call_attrs=("filter_size",),
    onnx=_bpf_onnx,
)
