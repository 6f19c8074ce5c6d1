"""MindSpore's functional ops that are not one engine op's generated form (``ops.sum``, ``ops.mean``, ``ops.ones``, the
convolution and pooling functions ``ops.conv2d``, ``ops.max_pool2d``, ... whose arguments are not the op's attributes)
and the primitives that need more than one engine op (``ops.Shape``, ``ops.Print``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.engine import get_op
from gradserve.engine.ops import debug

from . import dtype as mstype
from .dispatch import apply_op
from .primitives import attr_value
from .tensor import Tensor
from .tracing import current_frame


def _shape_of(shape: Any) -> tuple[int, ...]:
    """A shape given as an int, a tuple/list of ints, or a 1-d integer Tensor."""
    if isinstance(shape, Tensor):
        shape = shape._concrete("a shape").tolist()
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return (int(shape),)
    if isinstance(shape, (tuple, list)) and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        return tuple(int(d) for d in shape)
    raise TypeError(f"a shape must be an int or a tuple of ints, got {shape!r}")


def _filled(shape: Any, dtype: Any, value: float) -> Tensor:
    dt = mstype.to_numpy(mstype.float32 if dtype is None else dtype)
    return Tensor._wrap(np.full(_shape_of(shape), value, dt))


def ones(shape: Any, dtype: Any = None) -> Tensor:
    """``ops.ones(shape, dtype=None)``: a Tensor of ones (float32 by default); a constant inside a construct."""
    return _filled(shape, dtype, 1)


def zeros(size: Any, dtype: Any = None) -> Tensor:
    """``ops.zeros(size, dtype=None)``: a Tensor of zeros (float32 by default); a constant inside a construct."""
    return _filled(size, dtype, 0)


def _axes(axis: Any) -> tuple[int, ...]:
    return () if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)


def sum(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    """``ops.sum(input, dim=None, keepdim=False, *, dtype=None)``: sum over ``dim`` (all axes when None)."""
    x = input if dtype is None else apply_op("Cast", input, dtype=mstype.to_numpy(dtype))
    return apply_op("ReduceSum", x, axis=_axes(dim), keep_dims=keepdim)


def mean(input: Any, axis: Any = None, keep_dims: bool = False) -> Any:
    """``ops.mean(input, axis=None, keep_dims=False)``: mean over ``axis`` (all axes when None)."""
    return apply_op("ReduceMean", input, axis=_axes(axis), keep_dims=keep_dims)


def _pair(v: Any, what: str) -> tuple[int, int]:
    """An int or a 1- or 2-tuple of ints as (h, w)."""
    t = (v,) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or len(t) not in (1, 2) or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in t):
        raise TypeError(f"{what} must be an int or a tuple of one or two ints, got {v!r}")
    return (int(t[0]), int(t[-1]))


def _no_padding(fn: str, padding: Any, *unsupported: tuple[str, Any, Any]) -> None:
    """Pooling here has no explicit padding or ceil mode: a clear error for the arguments it cannot honour."""
    pads = (padding,) if isinstance(padding, (int, np.integer)) else tuple(padding) if isinstance(padding, (tuple, list)) else None
    if pads is None or any(p != 0 for p in pads):
        raise ValueError(f"ops.{fn}: padding={padding!r} is not supported (only 0); pad the input with ops.pad first")
    for name, value, default in unsupported:
        if value != default:
            raise ValueError(f"ops.{fn}: {name}={value!r} is not supported (only {default!r})")


def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, pad_mode: str = "valid", padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Any:
    """``ops.conv2d(input, weight, bias=None, stride=1, pad_mode="valid", padding=0, dilation=1, groups=1)``:
    MindSpore 2.x's functional convolution, the Conv2D op (its kernel from ``weight``'s shape) plus ``bias`` per
    output channel. ``padding`` (with ``pad_mode="pad"``) is an int, (h, w) or (top, bottom, left, right)."""
    if not isinstance(weight, Tensor) or len(weight.shape) != 4:
        raise TypeError(f"ops.conv2d: weight must be a 4-D Tensor (out_channel, in_channel / groups, kh, kw), got {weight!r}")
    if pad_mode not in ("valid", "same", "pad"):
        raise ValueError(f"ops.conv2d: pad_mode must be 'valid', 'same' or 'pad', got {pad_mode!r}")
    pad = (padding,) if isinstance(padding, int) else tuple(padding)
    if len(pad) == 2:
        pad = (pad[0], pad[0], pad[1], pad[1])
    if pad_mode != "pad" and any(pad):
        raise ValueError(f"ops.conv2d: padding={padding!r} needs pad_mode='pad' (got {pad_mode!r})")
    o, _, kh, kw = weight.shape
    out = apply_op(
        "Conv2D", input, weight, out_channel=o, kernel_size=(kh, kw), pad_mode=pad_mode, pad=pad,
        stride=_pair(stride, "ops.conv2d: stride"), dilation=_pair(dilation, "ops.conv2d: dilation"), group=groups,
    )
    if bias is None:
        return out
    if not isinstance(bias, Tensor) or bias.shape != (o,):
        raise ValueError(f"ops.conv2d: bias must be a Tensor of shape ({o},), one per output channel, got {bias!r}")
    return out + bias.reshape((1, o, 1, 1))


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               return_indices: bool = False, ceil_mode: bool = False) -> Any:
    """``ops.max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False)``:
    the MaxPool op (``stride`` None is ``kernel_size``), or with ``return_indices`` MaxPoolWithArgmax: ``(output,
    argmax)``, argmax the int64 index into the H * W plane. Only MindSpore's defaults of padding, dilation and ceil mode
    are supported."""
    _no_padding("max_pool2d", padding, ("dilation", _pair(dilation, "ops.max_pool2d: dilation"), (1, 1)),
                ("ceil_mode", ceil_mode, False))
    kernel = _pair(kernel_size, "ops.max_pool2d: kernel_size")
    strides = kernel if stride is None else _pair(stride, "ops.max_pool2d: stride")
    return apply_op("MaxPoolWithArgmax" if return_indices else "MaxPool", x, kernel_size=kernel, strides=strides, pad_mode="valid")


def avg_pool2d(input_x: Any, kernel_size: Any = 1, stride: Any = 1, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Any = 0) -> Any:
    """``ops.avg_pool2d(input_x, kernel_size=1, stride=1, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=0)``: the AvgPool op; without padding ``count_include_pad`` changes nothing, and padding, ceil
    mode and a divisor override (0 or None: none) are not supported."""
    _no_padding("avg_pool2d", padding, ("ceil_mode", ceil_mode, False), ("divisor_override", divisor_override or 0, 0))
    kernel, strides = _pair(kernel_size, "ops.avg_pool2d: kernel_size"), _pair(stride, "ops.avg_pool2d: stride")
    return apply_op("AvgPool", input_x, kernel_size=kernel, strides=strides, pad_mode="valid")


def adaptive_avg_pool2d(input: Any, output_size: Any) -> Any:
    """``ops.adaptive_avg_pool2d(input, output_size)``: the AdaptiveAvgPool2D op (None in ``output_size`` keeps that
    dimension)."""
    return apply_op("AdaptiveAvgPool2D", input, output_size=attr_value(get_op("AdaptiveAvgPool2D"), "output_size", output_size))


class Shape:
    """``ops.Shape()(x)``: x's static shape as a tuple of ints (known while tracing too)."""

    def __call__(self, input_x: Any) -> tuple[int, ...]:
        if not isinstance(input_x, Tensor):
            raise TypeError(f"ops.Shape takes a Tensor, got {type(input_x).__name__}")
        return tuple(input_x.shape)

    def __repr__(self) -> str:
        return "Prim[Shape]"


class Print:
    """``ops.Print()(*inputs)``: prints strings and Tensors (numbers become Tensors), one per line, when the network
    runs: at once outside a construct, else each time the traced graph runs (embedded, or in the server's output).

    Inside a construct the printed Tensors are rebound to the Print node's pass-through outputs, so the print runs
    before their later uses; a print whose Tensors are never used afterwards is pruned with them, and one of
    constants only runs once, when the graph is compiled. Returns the first Tensor, passed through."""

    def __call__(self, *inputs: Any) -> Any:
        strings: list[str] = []
        slots: list[int] = []
        tensors: list[Tensor] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                strings.append(item)
                slots.append(i)
            elif isinstance(item, (Tensor, bool, int, float)):
                tensors.append(item if isinstance(item, Tensor) else Tensor(item))
            else:
                raise TypeError(f"ops.Print prints Tensors, numbers and strings; input {i} is a {type(item).__name__}")
        if not tensors:
            if current_frame() is not None:
                raise TypeError("ops.Print inside a construct needs at least one Tensor to print (strings alone have nothing to run with)")
            debug.sink("\n".join(strings))
            return None
        outs = apply_op("Print", *tensors, strings=tuple(strings), slots=tuple(slots))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for t, o in zip(tensors, outs):
            if t.is_traced:
                t._value = o._value
        return outs[0]

    def __repr__(self) -> str:
        return "Prim[Print]"


FUNCTIONS = {f.__name__: f for f in (ones, zeros, sum, mean, conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d)} | {"Shape": Shape, "Print": Print}
"""What ``gradserve.ops`` offers besides the op table's primitives and their functional forms."""
