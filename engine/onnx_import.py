"""ONNX import: an ``onnx.ModelProto`` as an engine graph (inputs in order, initializers as parameters under their ONNX
names, outputs in order), through one table mapping each ONNX op type onto engine ops.

``onnx`` is an optional dependency (``gradserve[onnx]``): it is imported when a model is converted, so the engine,
the codec and the server load without it. Every ONNX semantic that differs from the engine op it maps onto
(broadcasting, attribute defaults, opset changes) is handled in this module's ``ONNX_OPS`` table alone.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import dtypes
from .builder import GraphBuilder
from .errors import EngineError, GraphError, shown
from .ir import Graph, Value
from .optable import OPS, broadcast, norm_axis

OPSETS = range(13, 22)
"""Versions of the default ONNX domain ("" or "ai.onnx") this importer reads: what PyTorch's exporters emit."""

MAX_FOLD_ELEMENTS = 1 << 20
"""Largest constant the importer computes while converting (shape arithmetic, Range, ConstantOfShape)."""

FOLD_ELEMENTS = 65_536
"""Largest computed constant written into the graph as a Const node (larger ones stay nodes, computed at run time)."""


class OnnxImportError(GraphError):
    """An ONNX model that cannot become an engine graph: unsupported op, opset, dtype, or a shape that is not static."""


def onnx_module() -> Any:
    """The ``onnx`` package, or an ImportError saying which extra provides it."""
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ImportError("ONNX import needs the onnx package: pip install 'gradserve[onnx]'") from exc


class FoldingBuilder(GraphBuilder):
    """A GraphBuilder that also computes every node whose inputs are all constants, so shape arithmetic that PyTorch's
    exporter writes as ops (Shape, Gather, Concat, Range ...) is known while converting. Such a node becomes Const
    nodes when its outputs are at most FOLD_ELEMENTS (the compiler's own folding limit); unused nodes are pruned."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.consts: dict[int, np.ndarray] = {}

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, **kw: Any) -> tuple[Value, ...]:
        """Add the node (checked as usual); when its inputs are known constants of modest size, compute it too."""
        outs = super().add_node(op, inputs, attrs, **kw)
        node = self.nodes[-1]
        known = [self.consts.get(id(v)) for v in node.inputs]
        if any(a is None for a in known) or any(o.type.size > MAX_FOLD_ELEMENTS for o in outs) or OPS[op].calls:
            return outs
        result = OPS[op].forward(*known, **node.attrs)
        arrays = [np.asarray(a, dtype=v.dtype).reshape(v.shape) for v, a in zip(outs, result if isinstance(result, tuple) else (result,))]
        if op != "Const" and all(a.size <= FOLD_ELEMENTS for a in arrays):
            self.nodes.pop()
            outs = tuple(self.const(a) for a in arrays)
        self.consts.update(zip(map(id, outs), arrays))
        return outs


@dataclass
class OnnxNode:
    """One ONNX node being converted: its inputs (None where omitted), attributes, opset and the builder."""

    b: FoldingBuilder
    name: str
    op_type: str
    inputs: list[Value | None]
    attrs: dict[str, Any]
    opset: int
    n_outputs: int

    def fail(self, why: str) -> OnnxImportError:
        """An error naming this node, its op type and domain."""
        return OnnxImportError(f"ONNX node {shown(self.name)} (op {self.op_type}, domain ai.onnx, opset {self.opset}): {why}")

    def x(self, i: int) -> Value:
        """Input ``i``, which must be given."""
        v = self.inputs[i] if i < len(self.inputs) else None
        if v is None:
            raise self.fail(f"input {i} is required")
        return v

    def opt(self, i: int) -> Value | None:
        """Input ``i``, or None when omitted."""
        return self.inputs[i] if i < len(self.inputs) else None

    def static(self, i: int, what: str) -> np.ndarray:
        """Input ``i``'s value, which must be computable while converting (a constant or folded shape arithmetic)."""
        v = self.x(i)
        a = self.b.consts.get(id(v))
        if a is None:
            raise self.fail(f"{what} (input {i}, {shown(v.name)}) must be static, but it depends on a graph input; "
                            f"give static input shapes (the `shapes` argument) so that it folds to a constant")
        return a

    def ints(self, i: int, what: str) -> list[int] | None:
        """An optional static int64 input as a list (None when omitted)."""
        return None if self.opt(i) is None else [int(v) for v in self.static(i, what).reshape(-1)]

    def const(self, value: Any, dtype: Any) -> Value:
        """A constant of ``dtype``, known to folding."""
        return self.b.const(np.asarray(value, dtype=dtype))

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Any:
        """One engine node."""
        return self.b.op(op, *inputs, **attrs)


Builder = Callable[[OnnxNode], Any]
ONNX_OPS: dict[str, Builder] = {}
"""ONNX op type (default domain) -> builder of engine ops returning the node's output Value (or tuple of Values)."""


def onnx_op(*names: str) -> Callable[[Builder], Builder]:
    """Register a builder for the given ONNX op types."""
    def register(fn: Builder) -> Builder:
        for n in names:
            ONNX_OPS[n] = fn
        return fn
    return register


def _axes(axes: Sequence[int], rank: int, n: OnnxNode) -> list[int]:
    try:
        return [norm_axis(int(a), rank) for a in axes]
    except GraphError as exc:
        raise n.fail(str(exc)) from None


# ---- elementwise: ONNX's multidirectional broadcasting is NumPy's, as the engine's binary ops ----

_UNARY = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "Erf": "Erf", "Sqrt": "Sqrt", "Exp": "Exp", "Log": "Log",
          "Neg": "Neg", "Abs": "Abs", "Floor": "Floor", "Ceil": "Ceil", "Round": "Round", "Sign": "Sign", "Sin": "Sin",
          "Cos": "Cos", "Tan": "Tan", "Softplus": "Softplus"}
_BINARY = {"Add": "Add", "Sub": "Sub", "Mul": "Mul", "Equal": "Equal", "Less": "Less", "Greater": "Greater",
           "LessOrEqual": "LessEqual", "GreaterOrEqual": "GreaterEqual", "Max": "Maximum", "Min": "Minimum",
           "Or": "Add", "And": "Mul", "Xor": "NotEqual"}
"""ONNX op -> engine op of the same meaning; on bools the engine's Add is or and Mul is and (NumPy's), Xor is !=."""


@onnx_op(*_UNARY)
def _unary(n: OnnxNode) -> Value:
    return n.op(_UNARY[n.op_type], n.x(0))


@onnx_op(*_BINARY)
def _binary(n: OnnxNode) -> Value:
    if n.op_type in ("Max", "Min") and len(n.inputs) != 2:
        raise n.fail("only the two-input form is supported")
    return n.op(_BINARY[n.op_type], n.x(0), n.x(1))


@onnx_op("Sum")
def _sum(n: OnnxNode) -> Value:
    """Any number of inputs, broadcast together (AddN needs one shape), as a chain of Adds."""
    xs = [v for v in n.inputs if v is not None]
    y = xs[0]
    for v in xs[1:]:
        y = n.op("Add", y, v)
    return y


@onnx_op("Mod")
def _mod(n: OnnxNode) -> Value:
    """fmod=0 (the default, integers only) takes the divisor's sign, as Python's %; fmod=1 the dividend's, as C's
    fmod. Computed as a - q * b with q = a / b rounded (floor, or toward zero) in float64: exact for integers below
    2**53, and for floats its gradients are 1 and -q."""
    a, b = n.x(0), n.x(1)
    fmod = bool(n.attrs.get("fmod", 0))
    if not fmod and dtypes.is_float(a.dtype):
        raise n.fail("fmod=0 is for integers; floats need fmod=1")
    work = a.dtype if dtypes.is_float(a.dtype) else np.dtype(np.float64)
    af, bf = (v if v.dtype == work else n.op("Cast", v, dtype=work) for v in (a, b))
    q = n.op("RealDiv", af, bf)
    q = n.op("Select", n.op("Less", q, n.const(0, work)), n.op("Ceil", q), n.op("Floor", q)) if fmod else n.op("Floor", q)
    y = n.op("Sub", af, n.op("Mul", q, bf))
    return y if y.dtype == a.dtype else n.op("Cast", y, dtype=a.dtype)


@onnx_op("Div")
def _div(n: OnnxNode) -> Value:
    """Float division is RealDiv; integer division (ONNX truncates) only on static values, as shape arithmetic."""
    a, b = n.x(0), n.x(1)
    if dtypes.is_float(a.dtype):
        return n.op("RealDiv", a, b)
    x, y = n.static(0, "an integer dividend"), n.static(1, "an integer divisor")
    return n.const(np.trunc(x / y), a.dtype)


@onnx_op("Pow")
def _pow(n: OnnxNode) -> Value:
    """ONNX lets the exponent have another dtype; it is cast to the base's."""
    x, y = n.x(0), n.x(1)
    return n.op("Pow", x, y if y.dtype == x.dtype else n.op("Cast", y, dtype=x.dtype))


@onnx_op("Reciprocal")
def _reciprocal(n: OnnxNode) -> Value:
    x = n.x(0)
    return n.op("RealDiv", n.const(1, x.dtype), x)


@onnx_op("LeakyRelu")
def _leaky_relu(n: OnnxNode) -> Value:
    """alpha defaults to 0.01; the slope at 0 is alpha (PyTorch's)."""
    x = n.x(0)
    alpha = n.attrs.get("alpha", 0.01)
    return n.op("Select", n.op("Greater", x, n.const(0, x.dtype)), x, n.op("Mul", x, n.const(alpha, x.dtype)))


@onnx_op("Gelu")
def _gelu(n: OnnxNode) -> Value:
    """Opset 20: approximate 'none' (default, erf) or 'tanh'."""
    return n.op("GeLU", n.x(0), approximate=n.attrs.get("approximate", "none"))


@onnx_op("Not")
def _not(n: OnnxNode) -> Value:
    return n.op("Equal", n.x(0), n.const(False, bool))


@onnx_op("Where")
def _where(n: OnnxNode) -> Value:
    return n.op("Select", n.x(0), n.x(1), n.x(2))


@onnx_op("Clip")
def _clip(n: OnnxNode) -> Value:
    """Opset 11+: min and max are optional inputs (absent: no bound)."""
    x = n.x(0)
    info = np.finfo(x.dtype) if dtypes.is_float(x.dtype) else np.iinfo(x.dtype)
    lo, hi = n.opt(1), n.opt(2)
    return n.op("ClipByValue", x, n.const(info.min, x.dtype) if lo is None else lo, n.const(info.max, x.dtype) if hi is None else hi)


@onnx_op("Cast")
def _cast(n: OnnxNode) -> Value:
    return n.op("Cast", n.x(0), dtype=_np_dtype(n.attrs["to"], n))


@onnx_op("Identity")
def _identity(n: OnnxNode) -> Value:
    return n.x(0)


@onnx_op("Dropout")
def _dropout(n: OnnxNode) -> Any:
    """Inference only: the output is the input (a static training_mode input must be false); no mask output."""
    if n.opt(2) is not None and bool(n.static(2, "training_mode").reshape(-1)[0]):
        raise n.fail("training_mode=True is not supported; export the model in eval mode")
    if n.n_outputs > 1:
        raise n.fail("the mask output is not supported")
    return n.x(0)


# ---- matrix products ----


@onnx_op("MatMul")
def _matmul(n: OnnxNode) -> Value:
    """NumPy's matmul: 1-D operands get a unit axis that is removed afterwards; batch axes broadcast."""
    a, b = n.x(0), n.x(1)
    a2 = n.op("ExpandDims", a, axis=0) if a.ndim == 1 else a
    b2 = n.op("ExpandDims", b, axis=1) if b.ndim == 1 else b
    y = n.op("MatMul" if a2.ndim == b2.ndim == 2 else "BatchMatMul", a2, b2)
    drop = ([y.ndim - 2] if a.ndim == 1 else []) + ([y.ndim - 1] if b.ndim == 1 else [])
    return n.op("Squeeze", y, axis=tuple(drop)) if drop else y


@onnx_op("Gemm")
def _gemm(n: OnnxNode) -> Value:
    """alpha * A' @ B' + beta * C with transA/transB (defaults 0) and alpha/beta (defaults 1); C broadcasts."""
    a, b = n.x(0), n.x(1)
    y = n.op("MatMul", a, b, transpose_a=bool(n.attrs.get("transA", 0)), transpose_b=bool(n.attrs.get("transB", 0)))
    alpha, beta = n.attrs.get("alpha", 1.0), n.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = n.op("Mul", y, n.const(alpha, y.dtype))
    c = n.opt(2)
    if c is not None:
        y = n.op("Add", y, c if beta == 1.0 else n.op("Mul", c, n.const(beta, y.dtype)))
    return y


# ---- convolution and pooling (2-D, NCHW; 1-D as 2-D with a unit height) ----


_LIFT_1D: dict[str, tuple[int | None, Callable[[list[int]], list[int]]]] = {
    "kernel_shape": (1, lambda v: [1, *v]), "strides": (1, lambda v: [1, *v]), "dilations": (1, lambda v: [1, *v]),
    "output_padding": (1, lambda v: [0, *v]), "pads": (2, lambda v: [0, v[0], 0, v[1]]), "output_shape": (None, lambda v: [1, v[-1]]),
}
"""A 1-D spatial attribute (its length, None for any) as the 2-D one over (1, L): unit height, no padding on it."""


def _one_d(weight: bool) -> Callable[[Builder], Builder]:
    """A 2-D NCHW builder made to take 1-D (N, C, L) inputs too, as PyTorch exports Conv1d and MaxPool1d: the input
    (and, with ``weight``, input 1, a convolution's weight) get a unit axis 2, the attributes a unit height, and the
    outputs lose the axis."""
    def wrap(build: Builder) -> Builder:
        def wrapped(n: OnnxNode) -> Any:
            x = n.x(0)
            if x.ndim != 3:
                return build(n)
            attrs = dict(n.attrs)
            for key, (size, lift) in _LIFT_1D.items():
                if key in attrs:
                    value = list(attrs[key])
                    if size is not None and len(value) != size:
                        raise n.fail(f"{key} {value} does not fit a 1-D input of shape {x.shape}")
                    attrs[key] = lift(value)
            inputs = list(n.inputs)
            inputs[0] = n.op("ExpandDims", x, axis=2)
            if weight:
                inputs[1] = n.op("ExpandDims", n.x(1), axis=2)
            out = build(replace(n, inputs=inputs, attrs=attrs))
            outs = tuple(n.op("Squeeze", o, axis=(2,)) for o in (out if isinstance(out, tuple) else (out,)))
            return outs if isinstance(out, tuple) else outs[0]
        wrapped.__doc__ = build.__doc__
        return wrapped
    return wrap


def _spatial(n: OnnxNode, x: Value, k: Sequence[int]) -> tuple[list[int], list[int], list[int], str]:
    """(pads as top, bottom, left, right; strides; dilations; engine pad_mode) from ONNX's auto_pad, pads (begin...,
    end...), strides and dilations (defaults 0 and 1)."""
    if x.ndim != 4 or len(k) != 2:
        raise n.fail(f"only 1-D (NCL) and 2-D (NCHW) inputs are supported, got input shape {x.shape}")
    auto = n.attrs.get("auto_pad", "NOTSET")
    pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
    strides = list(n.attrs.get("strides", [1, 1]))
    dil = list(n.attrs.get("dilations", [1, 1]))
    if auto in ("NOTSET", "VALID"):
        mode = "pad" if auto == "NOTSET" and any(pads) else "valid"
    elif auto == "SAME_UPPER":
        mode = "same"
    else:
        raise n.fail(f"auto_pad {auto} is not supported (NOTSET, VALID, SAME_UPPER are)")
    return [pads[0], pads[2], pads[1], pads[3]], strides, dil, mode


@onnx_op("Conv")
@_one_d(weight=True)
def _conv(n: OnnxNode) -> Value:
    x, w = n.x(0), n.x(1)
    pads, strides, dil, mode = _spatial(n, x, w.shape[2:])
    y = n.op("Conv2D", x, w, out_channel=w.shape[0], kernel_size=tuple(w.shape[2:]), pad_mode=mode, pad=tuple(pads),
             stride=tuple(strides), dilation=tuple(dil), group=n.attrs.get("group", 1))
    bias = n.opt(2)
    return y if bias is None else n.op("Add", y, n.op("Reshape", bias, shape=(1, -1, 1, 1)))


@onnx_op("ConvTranspose")
@_one_d(weight=True)
def _conv_transpose(n: OnnxNode) -> Value:
    """The adjoint of a convolution whose weight is ONNX's (C_in, C_out / group, kh, kw); the size comes from pads
    and output_padding, or from output_shape (its last two entries) or auto_pad SAME_UPPER/SAME_LOWER (input times
    stride), which set the pads: an odd total's extra one goes at the end for SAME_UPPER, else at the start (ONNX's
    rule, as ONNX Runtime computes it)."""
    x, w = n.x(0), n.x(1)
    k, strides = w.shape[2:], list(n.attrs.get("strides", [1, 1]))
    dil, outpad = list(n.attrs.get("dilations", [1, 1])), list(n.attrs.get("output_padding", [0, 0]))
    auto = n.attrs.get("auto_pad", "NOTSET")
    if "output_shape" in n.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(n.attrs["output_shape"])[-2:] if "output_shape" in n.attrs else [x.shape[2 + i] * strides[i] for i in range(2)]
        if len(target) != 2:
            raise n.fail(f"output_shape {n.attrs['output_shape']} does not give the output's height and width")
        total = [strides[i] * (x.shape[2 + i] - 1) + outpad[i] + dil[i] * (k[i] - 1) + 1 - target[i] for i in range(2)]
        if min(total) < 0:
            raise n.fail(f"output size {target} is larger than the unpadded transposed convolution's "
                         f"{[t + s for t, s in zip(total, target)]}; give output_padding")
        small = [t // 2 for t in total]
        begin = small if auto == "SAME_UPPER" else [t - s for t, s in zip(total, small)]
        n = replace(n, attrs={**n.attrs, "auto_pad": "NOTSET", "pads": [*begin, *(t - b for t, b in zip(total, begin))]})
    pads, strides, dil, mode = _spatial(n, x, k)
    group = n.attrs.get("group", 1)
    size = [strides[i] * (x.shape[2 + i] - 1) + outpad[i] + dil[i] * (w.shape[2 + i] - 1) + 1 - pads[2 * i] - pads[2 * i + 1]
            for i in range(2)]
    y = n.op("Conv2DTranspose", x, w, input_size=(x.shape[0], w.shape[1] * group, *size), out_channel=w.shape[0],
             kernel_size=tuple(w.shape[2:]), pad_mode=mode, pad=tuple(pads), stride=tuple(strides), dilation=tuple(dil),
             group=group)
    bias = n.opt(2)
    return y if bias is None else n.op("Add", y, n.op("Reshape", bias, shape=(1, -1, 1, 1)))


def _border(n: OnnxNode, x: Value, pads: Sequence[int], fill: float) -> Value:
    """x with constant ``fill`` blocks concatenated around its last two axes (pads: top, bottom, left, right)."""
    for axis, (before, after) in ((2, pads[0:2]), (3, pads[2:4])):
        parts = []
        for size in (before, after):
            shape = list(x.shape)
            shape[axis] = size
            parts.append(n.const(np.full(shape, fill), x.dtype) if size else None)
        pieces = [p for p in (parts[0], x, parts[1]) if p is not None]
        if len(pieces) > 1:
            x = n.op("Concat", *pieces, axis=axis)
    return x


def _pool_pads(n: OnnxNode, x: Value) -> tuple[list[int], list[int], list[int]]:
    """Kernel, strides and explicit padding (top, bottom, left, right) of an ONNX pooling; ceil_mode adds end
    padding for a last partial window; dilations must be 1 but for MaxPool's (read again there)."""
    k = list(n.attrs["kernel_shape"])
    pads, strides, dil, mode = _spatial(n, x, k)
    if any(d != 1 for d in dil) and n.op_type != "MaxPool":
        raise n.fail(f"dilations {dil} are not supported for pooling")
    k = [dil[i] * (k[i] - 1) + 1 for i in range(2)]  # the extent, for the padding below
    if mode == "same":
        total = [max((-(-x.shape[2 + i] // strides[i]) - 1) * strides[i] + k[i] - x.shape[2 + i], 0) for i in range(2)]
        pads = [total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2]
    if n.attrs.get("ceil_mode", 0):
        for i in range(2):
            span = x.shape[2 + i] + pads[2 * i] + pads[2 * i + 1] - k[i]
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= x.shape[2 + i] + pads[2 * i]:
                out -= 1
            pads[2 * i + 1] += max((out - 1) * strides[i] + k[i] - (x.shape[2 + i] + pads[2 * i] + pads[2 * i + 1]), 0)
    return list(n.attrs["kernel_shape"]), strides, pads


@onnx_op("MaxPool")
@_one_d(weight=False)
def _max_pool(n: OnnxNode) -> Value | tuple[Value, Value]:
    """Padding is -inf borders around the input, dilations go to the op. The Indices output
    (storage_order 0) is each window's first maximum as a flat index over the unpadded (N, C, H, W) input: the
    engine's argmax in the padded plane, mapped through a constant table, plus each plane's offset."""
    x = n.x(0)
    k, strides, pads = _pool_pads(n, x)
    padded = _border(n, x, pads, -np.inf)
    dilation = tuple(_spatial(n, x, k)[2])
    if n.n_outputs < 2:
        return n.op("MaxPool", padded, kernel_size=tuple(k), strides=tuple(strides), dilation=dilation)
    if n.attrs.get("storage_order", 0):
        raise n.fail("storage_order=1 (column-major Indices) is not supported")
    y, plane = n.op("MaxPoolWithArgmax", padded, kernel_size=tuple(k), strides=tuple(strides), dilation=dilation)
    (batch, channels, h, w), wp = x.shape, padded.shape[3]
    p = np.arange(padded.shape[2] * wp)
    table = n.const((p // wp - pads[0]) * w + (p % wp - pads[2]), np.int64)
    offsets = n.const((np.arange(batch * channels) * (h * w)).reshape(batch, channels, 1, 1), np.int64)
    return y, n.op("Add", n.op("Gather", table, plane, axis=0), offsets)


@onnx_op("AveragePool")
@_one_d(weight=False)
def _avg_pool(n: OnnxNode) -> Value:
    """count_include_pad (default 0) decides whether padded zeros count: if not, the sum of each window is divided
    by a constant count of its real elements."""
    x = n.x(0)
    k, strides, pads = _pool_pads(n, x)
    y = n.op("AvgPool", _border(n, x, pads, 0.0), kernel_size=tuple(k), strides=tuple(strides))
    if not any(pads) or n.attrs.get("count_include_pad", 0):
        return y
    ones = np.pad(np.ones((1, 1, *x.shape[2:])), ((0, 0), (0, 0), tuple(pads[0:2]), tuple(pads[2:4])))
    frac = n.op("AvgPool", n.const(ones, x.dtype), kernel_size=tuple(k), strides=tuple(strides))
    return n.op("RealDiv", y, frac)


@onnx_op("GlobalAveragePool")
def _global_avg_pool(n: OnnxNode) -> Value:
    x = n.x(0)
    return n.op("ReduceMean", x, axis=tuple(range(2, x.ndim)), keep_dims=True)


# ---- normalization and softmax ----


@onnx_op("BatchNormalization")
def _batch_norm(n: OnnxNode) -> Value:
    """Inference form (training_mode 0) as elementwise ops, so the gradients reach scale, bias, mean and variance
    at every order; epsilon defaults to 1e-5; the statistics outputs are not supported."""
    if n.attrs.get("training_mode", 0) or n.n_outputs > 1:
        raise n.fail("only inference (training_mode=0, one output) is supported; export the model in eval mode")
    x, scale, bias, mean, var = (n.x(i) for i in range(5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = [n.op("Reshape", v, shape=shape) for v in (scale, bias, mean, var)]
    inv = n.op("Rsqrt", n.op("Add", r[3], n.const(n.attrs.get("epsilon", 1e-5), x.dtype)))
    return n.op("Add", n.op("Mul", n.op("Sub", x, r[2]), n.op("Mul", r[0], inv)), r[1])


@onnx_op("LayerNormalization")
def _layer_norm(n: OnnxNode) -> Value:
    """Opset 17: normalized over axis (default -1) through the last; epsilon defaults to 1e-5; Scale and B broadcast
    to the normalized shape; the Mean and InvStdDev outputs are not supported."""
    if n.n_outputs > 1:
        raise n.fail("the Mean and InvStdDev outputs are not supported")
    x = n.x(0)
    axis = _axes([n.attrs.get("axis", -1)], x.ndim, n)[0]
    shape = x.shape[axis:]
    gamma = n.x(1)
    beta = n.opt(2)
    beta = n.const(np.zeros(shape), x.dtype) if beta is None else beta
    gamma, beta = (v if v.shape == shape else n.op("BroadcastTo", v, shape=shape) for v in (gamma, beta))
    return n.op("LayerNorm", x, gamma, beta, begin_norm_axis=axis, begin_params_axis=axis, epsilon=n.attrs.get("epsilon", 1e-5))[0]


@onnx_op("Softmax", "LogSoftmax")
def _softmax(n: OnnxNode) -> Value:
    """Opset 13+: over one axis (default -1)."""
    x = n.x(0)
    axis = _axes([n.attrs.get("axis", -1)], x.ndim, n)[0]
    return n.op(n.op_type, x, axis=(axis,) if n.op_type == "Softmax" else axis)


# ---- reductions: axes are an attribute (ReduceMean/ReduceMax before opset 18) or an input (ReduceSum from 13, the
# others from 18); keepdims defaults to 1; no axes reduces all unless noop_with_empty_axes ----


_REDUCE = {"ReduceMean": "ReduceMean", "ReduceSum": "ReduceSum", "ReduceMax": "ReduceMax", "ReduceMin": "ReduceMin",
           "ReduceProd": "ReduceProd", "ReduceLogSumExp": "LogSumExp"}


@onnx_op(*_REDUCE)
def _reduce(n: OnnxNode) -> Value:
    x = n.x(0)
    axes = n.attrs.get("axes")
    if axes is None:
        axes = n.ints(1, "axes")
    if not axes:
        if n.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.ndim))
    return n.op(_REDUCE[n.op_type], x, axis=tuple(_axes(axes, x.ndim, n)), keep_dims=bool(n.attrs.get("keepdims", 1)))


@onnx_op("ArgMax", "ArgMin")
def _arg(n: OnnxNode) -> Value:
    """axis defaults to 0 and keepdims to 1; int64 indices of the first extreme (select_last_index=1 is not supported)."""
    if n.attrs.get("select_last_index", 0):
        raise n.fail("select_last_index=1 is not supported")
    x = n.x(0)
    axis = _axes([n.attrs.get("axis", 0)], x.ndim, n)[0]
    y = n.op("Argmax" if n.op_type == "ArgMax" else "Argmin", x, axis=axis, output_type=np.dtype(np.int64))
    return n.op("ExpandDims", y, axis=axis) if n.attrs.get("keepdims", 1) else y


@onnx_op("CumSum")
def _cumsum(n: OnnxNode) -> Value:
    """axis is a static input; exclusive and reverse attributes default to 0."""
    x = n.x(0)
    axis = _axes(n.ints(1, "axis") or [], x.ndim, n)
    if len(axis) != 1:
        raise n.fail("axis must be one integer")
    return n.op("CumSum", x, axis=axis[0], exclusive=bool(n.attrs.get("exclusive", 0)), reverse=bool(n.attrs.get("reverse", 0)))


@onnx_op("Einsum")
def _einsum(n: OnnxNode) -> Value:
    xs = [v for v in n.inputs if v is not None]
    return n.op("Einsum", *xs, equation=n.attrs["equation"])


@onnx_op("TopK")
def _topk(n: OnnxNode) -> tuple[Value, Value]:
    """K is a static input; only the k largest along the last axis (largest=1, the defaults' axis -1); int64 indices."""
    x = n.x(0)
    k = n.ints(1, "K") or []
    if _axes([n.attrs.get("axis", -1)], x.ndim, n)[0] != x.ndim - 1 or not n.attrs.get("largest", 1):
        raise n.fail("only the largest elements along the last axis are supported (axis=-1, largest=1)")
    values, indices = n.op("TopK", x, k=k[0], sorted=bool(n.attrs.get("sorted", 1)))
    return values, n.op("Cast", indices, dtype=np.dtype(np.int64))


@onnx_op("ScatterND")
def _scatter_nd(n: OnnxNode) -> Value:
    """reduction 'none' (the default; duplicate indices sum, where ONNX leaves the result undefined) or 'add': the
    index tuples (last axis of indices, negatives counting from the end) become rows of data flattened over the
    axes they index, and UnsortedSegmentSum gathers the updates there, so updates and data both get gradients."""
    data, idx, upd = n.x(0), n.x(1), n.x(2)
    reduction = n.attrs.get("reduction", "none")
    if reduction not in ("none", "add"):
        raise n.fail(f"reduction {reduction!r} is not supported ('none' and 'add' are)")
    k = idx.shape[-1]
    lead, rest = data.shape[:k], data.shape[k:]
    if k > data.ndim or upd.shape != idx.shape[:-1] + rest:
        raise n.fail(f"updates of shape {upd.shape} do not fit indices {idx.shape} into data {data.shape}")
    idx = idx if idx.dtype == np.int64 else n.op("Cast", idx, dtype=np.dtype(np.int64))
    idx = n.op("Select", n.op("Less", idx, n.const(0, np.int64)), n.op("Add", idx, n.const(lead, np.int64)), idx)
    strides = np.cumprod((1, *lead[:0:-1]))[::-1]
    flat = n.op("ReduceSum", n.op("Mul", idx, n.const(strides, np.int64)), axis=(idx.ndim - 1,), keep_dims=False)
    rows = int(np.prod(lead))
    base = n.op("Reshape", data, shape=(rows, *rest))
    sums = n.op("UnsortedSegmentSum", upd, flat, num_segments=rows)
    if reduction == "add":
        y = n.op("Add", base, sums)
    else:
        hit = n.op("UnsortedSegmentSum", n.const(np.ones(upd.shape), upd.dtype), flat, num_segments=rows)
        y = n.op("Select", n.op("Greater", hit, n.const(0, upd.dtype)), sums, base)
    return n.op("Reshape", y, shape=data.shape)


# ---- shapes: every shape operand must be static ----


@onnx_op("Reshape")
def _reshape(n: OnnxNode) -> Value:
    """A 0 in shape copies the input's dimension (allowzero=0, the default; allowzero=1 is not supported)."""
    x = n.x(0)
    if n.attrs.get("allowzero", 0):
        raise n.fail("allowzero=1 is not supported")
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(n.ints(1, "shape") or [])]
    return n.op("Reshape", x, shape=tuple(shape))


@onnx_op("Flatten")
def _flatten(n: OnnxNode) -> Value:
    """To 2-D at axis (default 1)."""
    x = n.x(0)
    axis = n.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return n.op("Reshape", x, shape=(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


@onnx_op("Transpose")
def _transpose(n: OnnxNode) -> Value:
    """perm defaults to reversing the axes."""
    x = n.x(0)
    return n.op("Transpose", x, perm=tuple(n.attrs.get("perm", range(x.ndim - 1, -1, -1))))


@onnx_op("Unsqueeze")
def _unsqueeze(n: OnnxNode) -> Value:
    """axes is an input from opset 13, relative to the output's rank."""
    x = n.x(0)
    axes = sorted(_axes(n.ints(1, "axes") or [], x.ndim + len(n.ints(1, "axes") or []), n))
    for a in axes:
        x = n.op("ExpandDims", x, axis=a)
    return x


@onnx_op("Squeeze")
def _squeeze(n: OnnxNode) -> Value:
    """axes is an optional input from opset 13 (absent: every axis of length 1)."""
    x = n.x(0)
    axes = n.ints(1, "axes")
    return n.op("Squeeze", x, axis=tuple(_axes(axes, x.ndim, n)) if axes else ())


@onnx_op("Expand")
def _expand(n: OnnxNode) -> Value:
    """Broadcasts both ways: the output shape is the broadcast of the input's and the given one."""
    x = n.x(0)
    try:
        shape = broadcast(x.shape, tuple(n.ints(1, "shape") or []))
    except GraphError as exc:
        raise n.fail(str(exc)) from None
    return x if shape == x.shape else n.op("BroadcastTo", x, shape=shape)


@onnx_op("Tile")
def _tile(n: OnnxNode) -> Value:
    return n.op("Tile", n.x(0), multiples=tuple(n.ints(1, "repeats") or []))


@onnx_op("Pad")
def _pad(n: OnnxNode) -> Value:
    """mode 'constant' (the default) only; pads (begins then ends, over axes, an input from opset 18, or every axis)
    must be static and non-negative; a constant_value other than a static zero fills the border through a constant
    mask, so it gets a gradient too."""
    x = n.x(0)
    if n.attrs.get("mode", "constant") != "constant":
        raise n.fail(f"mode {n.attrs['mode']!r} is not supported (only 'constant' is)")
    pads = n.ints(1, "pads") or []
    axes = _axes(n.ints(3, "axes") or range(x.ndim), x.ndim, n)
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        raise n.fail(f"pads {pads} must be {2 * len(axes)} non-negative integers")
    paddings = [0] * (2 * x.ndim)
    for i, a in enumerate(axes):
        paddings[2 * a], paddings[2 * a + 1] = pads[i], pads[len(axes) + i]
    y = n.op("Pad", x, paddings=tuple(paddings))
    fill = n.opt(2)
    known = None if fill is None else n.b.consts.get(id(fill))
    if fill is None or (known is not None and not known.any()):
        return y
    inside = np.pad(np.ones(x.shape, bool), [(paddings[2 * a], paddings[2 * a + 1]) for a in range(x.ndim)])
    return n.op("Select", n.const(inside, bool), y, fill)


@onnx_op("Concat")
def _concat(n: OnnxNode) -> Value:
    xs = [v for v in n.inputs if v is not None]
    axis = _axes([n.attrs["axis"]], xs[0].ndim, n)[0]
    return xs[0] if len(xs) == 1 else n.op("Concat", *xs, axis=axis)


def _slice(n: OnnxNode, x: Value, axis: int, start: int, stop: int, step: int) -> Value:
    """x[start:stop:step] on one axis, with Python's clamping, as a StridedSlice."""
    begin, end, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
    s, e, st = slice(start, stop, step).indices(x.shape[axis])
    begin[axis], end[axis], strides[axis] = s, e, st
    mask = 1 << axis if st < 0 and e < 0 else 0
    return n.op("StridedSlice", x, begin=tuple(begin), end=tuple(end), strides=tuple(strides), end_mask=mask)


@onnx_op("Slice")
def _slice_op(n: OnnxNode) -> Value:
    """starts, ends, axes (default all) and steps (default 1) are inputs (opset 10+); ends beyond the axis clamp."""
    x = n.x(0)
    starts, ends = n.ints(1, "starts") or [], n.ints(2, "ends") or []
    axes = _axes(n.ints(3, "axes") or range(len(starts)), x.ndim, n)
    steps = n.ints(4, "steps") or [1] * len(starts)
    for a, s, e, st in zip(axes, starts, ends, steps):
        x = _slice(n, x, a, s, e, st)
    return x


@onnx_op("Split")
def _split(n: OnnxNode) -> tuple[Value, ...]:
    """split is an optional input (opset 13+); without it, num_outputs (opset 18) or the node's output count gives
    equal parts, the last one smaller when the axis does not divide."""
    x = n.x(0)
    axis = _axes([n.attrs.get("axis", 0)], x.ndim, n)[0]
    sizes = n.ints(1, "split")
    if sizes is None:
        parts = n.attrs.get("num_outputs", n.n_outputs)
        each = -(-x.shape[axis] // parts)
        sizes = [min(each, x.shape[axis] - i * each) for i in range(parts)]
    if sum(sizes) != x.shape[axis]:
        raise n.fail(f"split sizes {sizes} do not add up to the axis length {x.shape[axis]}")
    starts = np.cumsum([0, *sizes])
    return tuple(_slice(n, x, axis, int(starts[i]), int(starts[i + 1]), 1) for i in range(len(sizes)))


@onnx_op("Gather")
def _gather(n: OnnxNode) -> Value:
    """axis defaults to 0; static negative indices count from the end (dynamic ones must be non-negative)."""
    x, idx = n.x(0), n.x(1)
    axis = _axes([n.attrs.get("axis", 0)], x.ndim, n)[0]
    known = n.b.consts.get(id(idx))
    if known is not None and (known < 0).any():
        idx = n.const(np.where(known < 0, known + x.shape[axis], known), idx.dtype)
    return n.op("Gather", x, idx, axis=axis)


# ---- constants ----


@onnx_op("Constant")
def _constant(n: OnnxNode) -> Value:
    """value (a tensor), value_float(s) or value_int(s); sparse and string values are not supported."""
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in n.attrs:
            return n.const(n.attrs[key], dtype or n.attrs[key].dtype)
    raise n.fail(f"only value, value_float(s) and value_int(s) are supported, got attributes {sorted(n.attrs)}")


@onnx_op("ConstantOfShape")
def _constant_of_shape(n: OnnxNode) -> Value:
    """value defaults to a float32 zero."""
    value = n.attrs.get("value", np.zeros(1, np.float32))
    shape = tuple(n.ints(0, "shape") or [])
    if int(np.prod(shape)) > MAX_FOLD_ELEMENTS:
        raise n.fail(f"a constant of shape {shape} is larger than {MAX_FOLD_ELEMENTS} elements")
    return n.const(np.full(shape, value.reshape(-1)[0]), value.dtype)


@onnx_op("Shape")
def _shape(n: OnnxNode) -> Value:
    """The static shape, start and end (opset 15) slicing it."""
    shape = n.x(0).shape
    return n.const(shape[n.attrs.get("start", 0):n.attrs.get("end", len(shape))], np.int64)


@onnx_op("Range")
def _range(n: OnnxNode) -> Value:
    start, limit, delta = (n.static(i, what) for i, what in enumerate(("start", "limit", "delta")))
    count = max(int(np.ceil((limit - start) / delta)), 0)
    if count > MAX_FOLD_ELEMENTS:
        raise n.fail(f"a range of {count} elements is larger than {MAX_FOLD_ELEMENTS}")
    return n.const(start + delta * np.arange(count), start.dtype)


# ---- the model ----


def _np_dtype(onnx_type: int, n: OnnxNode | None = None, where: str = "") -> np.dtype:
    """An ONNX TensorProto data type as an engine dtype, or an error naming where it appears."""
    helper = onnx_module().helper
    try:
        return dtypes.as_dtype(helper.tensor_dtype_to_np_dtype(onnx_type))
    except (TypeError, KeyError, ValueError):
        name = onnx_module().TensorProto.DataType.Name(onnx_type) if onnx_type in onnx_module().TensorProto.DataType.values() else str(onnx_type)
        why = f"dtype {name} is not supported; supported: {', '.join(dtypes.DTYPES)}"
        if n is not None:
            raise n.fail(why) from None
        raise OnnxImportError(f"{where}: {why}") from None


def _array(t: Any, where: str) -> np.ndarray:
    """The array of an ONNX TensorProto (an initializer or a tensor attribute), or an error naming ``where`` it is when
    its dtype is not one the engine has, its data is in an external file (never read: a caller could name any file the
    server can read), a dimension is negative or its data does not fill its dims."""
    _np_dtype(t.data_type, where=where)
    if t.data_location == t.EXTERNAL:  # onnx would read the file it names, relative to this process's directory
        raise OnnxImportError(f"{where}: its data is stored in an external file; send a self-contained model")
    if any(d < 0 for d in t.dims):
        raise OnnxImportError(f"{where}: dims {list(t.dims)} has a negative dimension")
    try:
        return np.asarray(onnx_module().numpy_helper.to_array(t))
    except (ValueError, TypeError, KeyError) as exc:  # its data does not fill its dims, or is of another type
        raise OnnxImportError(f"{where}: its data does not make a tensor of dims {list(t.dims)} ({exc})") from None


def _attrs(proto: Any, where: str) -> dict[str, Any]:
    """An ONNX node's attributes as Python values (strings decoded, tensors as arrays), or an error naming the node
    (``where``) and the attribute that cannot be read."""
    onnx = onnx_module()
    out: dict[str, Any] = {}
    for a in proto.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                raise OnnxImportError(f"{where}: attribute {shown(a.name)} is not valid UTF-8") from None
        elif isinstance(v, onnx.TensorProto):
            v = _array(v, f"{where}: attribute {shown(a.name)}")
        out[a.name] = v
    return out


def _opset(model: Any) -> int:
    """The model's version of the default domain, or an error when it is outside ``OPSETS``."""
    versions = {o.domain: o.version for o in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise OnnxImportError("the model imports no version of the default ONNX domain")
    if version not in OPSETS:
        raise OnnxImportError(f"opset {version} is not supported; supported: {OPSETS.start} to {OPSETS.stop - 1}")
    return int(version)


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) this importer converts."""
    return sorted(ONNX_OPS)


def _input_shape(vi: Any, shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """A graph input's static shape: its declared dims, or the caller's for inputs with symbolic dims."""
    if vi.name in shapes:
        return tuple(int(d) for d in shapes[vi.name])
    if not vi.type.tensor_type.HasField("shape"):
        raise OnnxImportError(f"ONNX input {shown(vi.name)} has no shape; give it in `shapes`")
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if not d.HasField("dim_value"):
            raise OnnxImportError(f"ONNX input {shown(vi.name)}: dimension {i} is dynamic ({d.dim_param or '?'}); "
                                  f"give a static shape in `shapes`, e.g. shapes={{{vi.name!r}: (...)}}")
        dims.append(d.dim_value)
    return tuple(dims)


def convert(model: Any, trainable: bool = True, shapes: Mapping[str, Sequence[int]] | None = None, name: str = "onnx") -> Graph:
    """The engine graph of an ``onnx.ModelProto``: its inputs (not initializers) in order, its initializers as
    parameters under their ONNX names (``requires_grad=trainable``), its outputs in order (one Value, or a tuple
    for several). Raises OnnxImportError naming the first node that cannot be converted; nothing is kept then."""
    onnx_module()
    opset = _opset(model)
    g = model.graph
    b = FoldingBuilder(name)
    env: dict[str, Value] = {}
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in inits:
            continue
        dt = _np_dtype(vi.type.tensor_type.elem_type, where=f"ONNX input {shown(vi.name)}")
        env[vi.name] = b.input(vi.name, dt, _input_shape(vi, shapes or {}))
    for t in g.initializer:
        arr = _array(t, f"ONNX initializer {shown(t.name)}")
        if dtypes.is_float(arr.dtype):
            env[t.name] = b.param(t.name, arr, trainable)
        else:
            env[t.name] = b.const(arr)
    for i, proto in enumerate(g.node):
        node_name = proto.name or f"{proto.op_type}_{i}"
        if proto.domain not in ("", "ai.onnx") or proto.op_type not in ONNX_OPS:
            raise OnnxImportError(
                f"ONNX node {shown(node_name)}: op {shown(proto.op_type)} of domain {shown(proto.domain or 'ai.onnx')} is not "
                f"supported; supported ops (domain ai.onnx): {', '.join(supported_ops())}")
        missing = [x for x in proto.input if x and x not in env]
        if missing:
            raise OnnxImportError(f"ONNX node {shown(node_name)} (op {proto.op_type}): input {shown(missing[0])} is not defined before it")
        attrs = _attrs(proto, f"ONNX node {shown(node_name)} (op {proto.op_type})")
        n = OnnxNode(b, node_name, proto.op_type, [env[x] if x else None for x in proto.input], attrs, opset, len(proto.output))
        try:
            out = ONNX_OPS[proto.op_type](n)
        except OnnxImportError:
            raise
        except EngineError as exc:  # a malformed node, or one whose constant inputs its op refuses when folded
            raise n.fail(str(exc)) from None
        except (ValueError, IndexError, ArithmeticError) as exc:  # NumPy refusing the node's constants or attributes
            raise n.fail(f"its attributes or constant inputs cannot be used: {type(exc).__name__}: {exc}") from None
        outs = out if isinstance(out, tuple) else (out,)
        if len([o for o in proto.output if o]) > len(outs):
            raise n.fail(f"{len(proto.output)} outputs are used, the conversion gives {len(outs)}")
        for o, v in zip(proto.output, outs):
            if o:
                env[o] = v
    missing = [o.name for o in g.output if o.name not in env]
    if missing:
        raise OnnxImportError(f"ONNX output {shown(missing[0])} is not computed by any node")
    results = tuple(env[o.name] for o in g.output)
    return b.build(results[0] if len(results) == 1 else results).pruned()


def load_model(source: Any) -> Any:
    """An ``onnx.ModelProto`` from a path, the bytes of a model, or a ModelProto (returned as it is)."""
    onnx = onnx_module()
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except Exception as exc:  # protobuf's DecodeError
            raise OnnxImportError(f"the bytes are not an ONNX model: {exc}") from None
        return model
    return onnx.load(str(source))
