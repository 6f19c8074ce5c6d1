"""MindSpore 2.x's padding layers: ``ConstantPad1d/2d/3d``, ``ZeroPad2d``, ``ReflectionPad1d/2d/3d``,
``ReplicationPad1d/2d/3d`` (``ops.pad`` over the last one, two or three axes) and ``Pad`` (pairs for every axis).
Plain Cells over ``ops.pad``; none holds a gradient rule."""
from __future__ import annotations

from typing import Any

from gradserve.client.cell import Cell
from gradserve.client.pad import pad


def _padding(layer: str, padding: Any, dims: int) -> tuple[int, ...]:
    """An int for every side, or ``2 * dims`` ints (left, right, top, bottom, front, back: last axis first)."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        return (padding,) * (2 * dims)
    if isinstance(padding, (tuple, list)) and len(padding) == 2 * dims and all(isinstance(p, int) and not isinstance(p, bool) for p in padding):
        return tuple(padding)
    raise ValueError(f"nn.{layer}: padding must be an int or a tuple of {2 * dims} ints, got {padding!r}")


class _PadNd(Cell):
    """``ops.pad(x, padding, mode, value)`` over the last ``dims`` axes."""

    dims = 1
    mode = "constant"

    def __init__(self, padding: Any, value: Any = None) -> None:
        super().__init__()
        self.padding = _padding(type(self).__name__, padding, self.dims)
        self.value = value

    def construct(self, x: Any) -> Any:
        return pad(x, self.padding, self.mode, self.value)


class ConstantPad1d(_PadNd):
    """``ConstantPad1d(padding, value)``: the last axis padded with ``value``."""

    def __init__(self, padding: Any, value: Any) -> None:
        super().__init__(padding, value)


class ConstantPad2d(ConstantPad1d):
    """``ConstantPad2d(padding, value)``: the last two axes padded with ``value`` (left, right, top, bottom)."""

    dims = 2


class ConstantPad3d(ConstantPad1d):
    """``ConstantPad3d(padding, value)``: the last three axes padded with ``value``."""

    dims = 3


class ZeroPad2d(_PadNd):
    """``ZeroPad2d(padding)``: the last two axes padded with zeros."""

    dims = 2


class ReflectionPad1d(_PadNd):
    """``ReflectionPad1d(padding)``: the last axis mirrored without repeating its edge."""

    mode = "reflect"


class ReflectionPad2d(ReflectionPad1d):
    """``ReflectionPad2d(padding)``: the last two axes mirrored."""

    dims = 2


class ReflectionPad3d(ReflectionPad1d):
    """``ReflectionPad3d(padding)``: the last three axes mirrored."""

    dims = 3


class ReplicationPad1d(_PadNd):
    """``ReplicationPad1d(padding)``: the last axis padded with its edge values."""

    mode = "replicate"


class ReplicationPad2d(ReplicationPad1d):
    """``ReplicationPad2d(padding)``: the last two axes padded with their edge values."""

    dims = 2


class ReplicationPad3d(ReplicationPad1d):
    """``ReplicationPad3d(padding)``: the last three axes padded with their edge values."""

    dims = 3


PAD_MODES = {"CONSTANT": "constant", "REFLECT": "reflect"}
"""``nn.Pad``'s modes supported here (its 'SYMMETRIC', mirroring with the edge repeated, is not)."""


class Pad(Cell):
    """``Pad(paddings, mode='CONSTANT')``: ``paddings`` a (before, after) pair for each axis of the input, from the
    first; 'CONSTANT' pads with zeros, 'REFLECT' mirrors without repeating the edge."""

    def __init__(self, paddings: Any, mode: str = "CONSTANT") -> None:
        super().__init__()
        if mode not in PAD_MODES:
            raise ValueError(f"nn.Pad: mode must be one of {tuple(PAD_MODES)} ('SYMMETRIC' is not supported), got {mode!r}")
        if not isinstance(paddings, (tuple, list)) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p) for p in paddings):
            raise ValueError(f"nn.Pad: paddings must be a tuple of (before, after) int pairs, one per axis, got {paddings!r}")
        self.paddings = tuple(tuple(p) for p in paddings)
        self.mode = mode

    def construct(self, x: Any) -> Any:
        if len(self.paddings) != len(x.shape):
            raise ValueError(f"nn.Pad: paddings has {len(self.paddings)} pairs for an input of rank {len(x.shape)} (shape {x.shape})")
        flat = tuple(v for pair in reversed(self.paddings) for v in pair)
        return pad(x, flat, PAD_MODES[self.mode])
