"""MindSpore's functional ops that are not one engine op's generated form (``ops.sum``, ``ops.mean``, ``ops.ones``, ...)
and the primitives that need more than one engine op (``ops.Shape``, ``ops.Print``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradserve.engine.ops import debug

from . import dtype as mstype
from .dispatch import apply_op
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


FUNCTIONS = {f.__name__: f for f in (ones, zeros, sum, mean)} | {"Shape": Shape, "Print": Print}
"""What ``gradserve.ops`` offers besides the op table's primitives and their functional forms."""
