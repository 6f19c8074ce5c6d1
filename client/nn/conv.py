"""Convolution and pooling layers (MindSpore 2.x nn.Conv2d, nn.Conv2dTranspose, nn.MaxPool2d, nn.AvgPool2d,
nn.AdaptiveAvgPool2d) over the engine's Conv2D, Conv2DTranspose, MaxPool, AvgPool and AdaptiveAvgPool2D ops; NCHW."""
from __future__ import annotations

import math
from typing import Any

from gradserve.client import dtype as mstype
from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.parameter import Parameter

from .initializer import HeUniform, Uniform, initializer


def _pair(v: Any, layer: str, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in pair):
        raise ValueError(f"nn.{layer}: {name} must be a positive int or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


def _padding(v: Any, pad_mode: str, layer: str) -> tuple[int, int, int, int]:
    """MindSpore's padding: an int, or (top, bottom, left, right); non-zero only with pad_mode 'pad'."""
    pads = (v,) * 4 if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(pads) != 4 or not all(isinstance(x, int) and x >= 0 for x in pads):
        raise ValueError(f"nn.{layer}: padding must be a non-negative int or (top, bottom, left, right), got {v!r}")
    if pad_mode != "pad" and any(pads):
        raise ValueError(f"nn.{layer}: padding must be 0 unless pad_mode is 'pad', got {v!r} with pad_mode {pad_mode!r}")
    return pads  # type: ignore[return-value]


class _Conv(Cell):
    def __init__(self, layer: str, in_channels: int, out_channels: int, kernel_size: Any, stride: Any, pad_mode: str,
                 padding: Any, dilation: Any, group: int, has_bias: bool, weight_init: Any, bias_init: Any,
                 weight_shape: tuple[int, ...], dtype: Any) -> None:
        super().__init__()
        if pad_mode not in ("same", "valid", "pad"):
            raise ValueError(f"nn.{layer}: pad_mode must be 'same', 'valid' or 'pad', got {pad_mode!r}")
        if group <= 0 or in_channels % group or out_channels % group:
            raise ValueError(f"nn.{layer}: group {group} must divide in_channels {in_channels} and out_channels {out_channels}")
        self.in_channels, self.out_channels, self.group, self.has_bias = in_channels, out_channels, group, bool(has_bias)
        self.kernel_size = _pair(kernel_size, layer, "kernel_size")
        self.stride = _pair(stride, layer, "stride")
        self.dilation = _pair(dilation, layer, "dilation")
        self.pad_mode, self.padding = pad_mode, _padding(padding, pad_mode, layer)
        shape = weight_shape + self.kernel_size
        self.weight = Parameter(initializer(HeUniform(math.sqrt(5)) if weight_init is None else weight_init, shape, dtype), name="weight")
        if self.has_bias:
            fan_in = math.prod(shape[1:])
            self.bias = Parameter(initializer(Uniform(1 / math.sqrt(fan_in)) if bias_init is None else bias_init,
                                              (out_channels,), dtype), name="bias")

    def _attrs(self) -> dict[str, Any]:
        return {"out_channel": self.out_channels, "kernel_size": self.kernel_size, "pad_mode": self.pad_mode,
                "pad": self.padding, "stride": self.stride, "dilation": self.dilation, "group": self.group}

    def _add_bias(self, y: Any) -> Any:
        return y + self.bias.reshape(1, -1, 1, 1) if self.has_bias else y


class Conv2d(_Conv):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, pad_mode='same', padding=0, dilation=1, group=1,
    has_bias=False, weight_init=None, bias_init=None, data_format='NCHW', dtype=float32)``: weight
    (out, in / group, kh, kw) defaults to HeUniform(sqrt(5)), bias to Uniform(1/sqrt(fan_in))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, pad_mode: str = "same",
                 padding: Any = 0, dilation: Any = 1, group: int = 1, has_bias: bool = False, weight_init: Any = None,
                 bias_init: Any = None, data_format: str = "NCHW", dtype: Any = mstype.float32) -> None:
        if data_format != "NCHW":
            raise ValueError(f"nn.Conv2d: only data_format 'NCHW' is supported, got {data_format!r}")
        super().__init__("Conv2d", in_channels, out_channels, kernel_size, stride, pad_mode, padding, dilation, group,
                         has_bias, weight_init, bias_init, (out_channels, in_channels // max(group, 1)), dtype)

    def construct(self, x: Any) -> Any:
        return self._add_bias(apply_op("Conv2D", x, self.weight, **self._attrs()))


class Conv2dTranspose(_Conv):
    """``Conv2dTranspose(in_channels, out_channels, kernel_size, stride=1, pad_mode='same', padding=0,
    output_padding=0, dilation=1, group=1, has_bias=False, weight_init=None, bias_init=None, dtype=float32)``: the
    adjoint of Conv2d; weight (in, out / group, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, pad_mode: str = "same",
                 padding: Any = 0, output_padding: Any = 0, dilation: Any = 1, group: int = 1, has_bias: bool = False,
                 weight_init: Any = None, bias_init: Any = None, dtype: Any = mstype.float32) -> None:
        super().__init__("Conv2dTranspose", in_channels, out_channels, kernel_size, stride, pad_mode, padding, dilation,
                         group, has_bias, weight_init, bias_init, (in_channels, out_channels // max(group, 1)), dtype)
        op = (output_padding,) * 2 if isinstance(output_padding, int) else tuple(output_padding)
        if len(op) != 2 or any(not 0 <= p < max(s, d) for p, s, d in zip(op, self.stride, self.dilation)):
            raise ValueError(f"nn.Conv2dTranspose: output_padding must be smaller than stride or dilation, got {output_padding!r}")
        self.output_padding = op

    def _out_size(self, x: Any) -> tuple[int, int, int, int]:
        n, _, h, w = x.shape
        size = []
        for i, length in enumerate((h, w)):
            s, d, k = self.stride[i], self.dilation[i], self.kernel_size[i]
            if self.pad_mode == "same":
                size.append(length * s)
            else:
                pads = self.padding[2 * i] + self.padding[2 * i + 1]
                size.append((length - 1) * s + d * (k - 1) + 1 - pads + self.output_padding[i])
        return n, self.out_channels, size[0], size[1]

    def construct(self, x: Any) -> Any:
        attrs = {**self._attrs(), "out_channel": self.in_channels}
        return self._add_bias(apply_op("Conv2DTranspose", x, self.weight, input_size=self._out_size(x), **attrs))


def _pool_padding(v: Any, mode: str, layer: str) -> tuple[int, ...]:
    """MindSpore's pooling padding: an int, or a tuple of one, two (h, w) or four (top, bottom, left, right) ints;
    non-zero only with pad_mode 'pad'."""
    pads = (v,) if isinstance(v, int) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else ()
    if len(pads) not in (1, 2, 4) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pads):
        raise ValueError(f"nn.{layer}: padding must be a non-negative int or a tuple of 1, 2 or 4 of them, got {v!r}")
    if any(pads) and mode != "pad":
        raise ValueError(f"nn.{layer}: padding must be 0 unless pad_mode is 'pad', got padding={v!r} with pad_mode={mode!r}")
    return pads


class _Pool(Cell):
    def __init__(self, layer: str, kernel_size: Any, stride: Any, pad_mode: str, padding: Any, ceil_mode: bool,
                 data_format: str) -> None:
        super().__init__()
        mode = pad_mode.lower() if isinstance(pad_mode, str) else pad_mode
        if mode not in ("valid", "same", "pad"):
            raise ValueError(f"nn.{layer}: pad_mode must be 'valid', 'same' or 'pad', got {pad_mode!r}")
        if data_format != "NCHW":
            raise ValueError(f"nn.{layer}: only data_format 'NCHW' is supported, got {data_format!r}")
        self.kernel_size = _pair(kernel_size, layer, "kernel_size")
        self.stride = _pair(stride, layer, "stride")
        self.pad_mode, self.padding, self.ceil_mode = mode, _pool_padding(padding, mode, layer), bool(ceil_mode)

    def _pool(self, op: str, x: Any, **attrs: Any) -> Any:
        squeeze = x.ndim == 3
        if squeeze:
            x = x.reshape(1, *x.shape)
        y = apply_op(op, x, kernel_size=self.kernel_size, strides=self.stride, pad_mode=self.pad_mode, pad=self.padding,
                     ceil_mode=self.ceil_mode, **attrs)
        if not squeeze:
            return y
        return tuple(t.reshape(*t.shape[1:]) for t in y) if isinstance(y, tuple) else y.reshape(*y.shape[1:])


class MaxPool2d(_Pool):
    """``MaxPool2d(kernel_size=1, stride=1, pad_mode='valid', padding=0, dilation=1, return_indices=False,
    ceil_mode=False, data_format='NCHW')``: the max of each window (explicit padding never wins: it is -inf); with
    ``return_indices`` also the int64 index into the H * W plane of each window's first maximum."""

    def __init__(self, kernel_size: Any = 1, stride: Any = 1, pad_mode: str = "valid", padding: Any = 0,
                 dilation: Any = 1, return_indices: bool = False, ceil_mode: bool = False,
                 data_format: str = "NCHW") -> None:
        super().__init__("MaxPool2d", kernel_size, stride, pad_mode, padding, ceil_mode, data_format)
        self.dilation = _pair(dilation, "MaxPool2d", "dilation")
        self.return_indices = bool(return_indices)

    def construct(self, x: Any) -> Any:
        return self._pool("MaxPoolWithArgmax" if self.return_indices else "MaxPool", x, dilation=self.dilation)


class AvgPool2d(_Pool):
    """``AvgPool2d(kernel_size=1, stride=1, pad_mode='valid', padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None, data_format='NCHW')``: the mean of each window; ``count_include_pad`` counts the explicit
    padding (pad_mode 'pad') in the divisor, ``divisor_override`` replaces it."""

    def __init__(self, kernel_size: Any = 1, stride: Any = 1, pad_mode: str = "valid", padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
                 data_format: str = "NCHW") -> None:
        super().__init__("AvgPool2d", kernel_size, stride, pad_mode, padding, ceil_mode, data_format)
        if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override < 0):
            raise ValueError(f"nn.AvgPool2d: divisor_override must be None or a positive int, got {divisor_override!r}")
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override or 0

    def construct(self, x: Any) -> Any:
        return self._pool("AvgPool", x, count_include_pad=self.count_include_pad, divisor_override=self.divisor_override)


class AdaptiveAvgPool2d(Cell):
    """``AdaptiveAvgPool2d(output_size)``: averages over bins giving an (oh, ow) plane; None keeps that dimension."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        pair = (output_size, output_size) if isinstance(output_size, int) or output_size is None else tuple(output_size)
        if len(pair) != 2:
            raise ValueError(f"nn.AdaptiveAvgPool2d: output_size must be an int or a pair, got {output_size!r}")
        self.output_size = tuple(-1 if v is None else v for v in pair)

    def construct(self, x: Any) -> Any:
        return apply_op("AdaptiveAvgPool2D", x, output_size=self.output_size)
