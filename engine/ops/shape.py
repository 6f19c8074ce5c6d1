"""Ops that move data without arithmetic: Reshape, BroadcastTo, Transpose, ExpandDims, Squeeze."""
from __future__ import annotations

import math

import numpy as np

from gradserve.engine.errors import ShapeError
from gradserve.engine.ir import TensorType, check_type_shape
from gradserve.engine.optable import Attr, F, OnnxCall, broadcast, defop, norm_axis

from .onnx_rules import Spec, ints, reshape


def _reshape_target(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The target shape with its -1 resolved, or a ShapeError if sizes differ."""
    size = math.prod(shape)
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise ShapeError(f"target shape {target} may hold one -1 and no other negative dimension")
    check_type_shape(tuple(max(d, 0) for d in target), "the target shape")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {shape} ({size} elements) to {target}")
        target = tuple(size // known if d == -1 else d for d in target)
    if math.prod(target) != size:
        raise ShapeError(f"cannot reshape {shape} ({size} elements) to {target}")
    return target


def _broadcast_target(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The target shape with its -1 entries resolved, or a ShapeError."""
    lead = len(target) - len(shape)
    if lead < 0:
        raise ShapeError(f"cannot broadcast {shape} to the lower-rank shape {target}")
    full = tuple(shape[i - lead] if d == -1 and i >= lead else d for i, d in enumerate(target))
    if any(d < 0 for d in full):
        raise ShapeError(f"cannot broadcast {shape} to {target}")
    check_type_shape(full, "the target shape")
    if broadcast(shape, full) != full:
        raise ShapeError(f"cannot broadcast {shape} to {target}")
    return full


def _perm(perm: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """The permutation with negative entries resolved, or a ShapeError."""
    if sorted(norm_axis(p, ndim, "perm entry") for p in perm) != list(range(ndim)) or len(perm) != ndim:
        raise ShapeError(f"perm {perm} is not a permutation of the {ndim} axes")
    return tuple(p % ndim for p in perm)


def _expanded(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """``shape`` with a 1 inserted at ``axis`` (counted in the result's rank)."""
    a = norm_axis(axis, len(shape) + 1)
    return shape[:a] + (1,) + shape[a:]


def _squeezed(shape: tuple[int, ...], axis: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without the axes Squeeze removes."""
    gone = set(_squeeze_axes(shape, axis))
    return tuple(d for i, d in enumerate(shape) if i not in gone)


def _squeeze_axes(shape: tuple[int, ...], axis: tuple[int, ...]) -> tuple[int, ...]:
    """The axes Squeeze removes: those given (each of length 1) or every length-1 axis."""
    if not axis:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    if not shape:
        raise ShapeError(f"cannot squeeze axis {axis[0]} of a rank-0 tensor")
    ax = tuple(sorted({norm_axis(a, len(shape)) for a in axis}))
    for a in ax:
        if shape[a] != 1:
            raise ShapeError(f"cannot squeeze axis {a} of length {shape[a]}")
    return ax


def _reshape_onnx(c: OnnxCall) -> list[Spec]:
    """Reshape, ExpandDims and Squeeze: one ONNX Reshape to the static output shape."""
    return [reshape(c.x[0], c.out_types[0].shape, c.y[0])]


defop(
    "Reshape",
    ("x",),
    lambda t, shape: TensorType(t[0].dtype, _reshape_target(t[0].shape, shape)),
    lambda x, shape: np.reshape(x, shape),
    lambda g, out, x, shape: F.Reshape(g, shape=x.shape),
    attrs={"shape": Attr("ints", doc="target shape; one entry may be -1")},
    doc="same elements in a new shape",
    memory="maybe_view",
    call_attrs=("shape",),
    onnx=_reshape_onnx,
    functional="reshape",
)
defop(
    "BroadcastTo",
    ("x",),
    lambda t, shape: TensorType(t[0].dtype, _broadcast_target(t[0].shape, shape)),
    lambda x, shape: np.broadcast_to(x, _broadcast_target(x.shape, shape)),
    lambda g, out, x, shape: g,
    attrs={"shape": Attr("ints", doc="target shape; -1 keeps x's dimension")},
    doc="broadcasts x to shape (the gradient sums over the broadcast axes)",
    memory="view",
    onnx=lambda c: [("Expand", (c.x[0], ints(c.out_types[0].shape)), c.y)],
    functional="broadcast_to",
)
defop(
    "Transpose",
    ("x",),
    lambda t, perm: TensorType(t[0].dtype, tuple(t[0].shape[p] for p in _perm(perm, len(t[0].shape)))),
    lambda x, perm: np.transpose(x, perm),
    lambda g, out, x, perm: F.Transpose(g, perm=tuple(int(i) for i in np.argsort(_perm(perm, x.ndim)))),
    attrs={"perm": Attr("ints", doc="axis permutation")},
    doc="permutes axes",
    memory="view",
    call_attrs=("perm",),
    onnx=lambda c: [("Transpose", c.x, c.y, {"perm": list(_perm(c.attrs["perm"], len(c.types[0].shape)))})],
    functional="transpose",
)
defop(
    "ExpandDims",
    ("x",),
    lambda t, axis: TensorType(t[0].dtype, _expanded(t[0].shape, axis)),
    lambda x, axis: np.expand_dims(x, axis),
    lambda g, out, x, axis: F.Reshape(g, shape=x.shape),
    attrs={"axis": Attr("int", doc="where the new axis of length 1 goes")},
    doc="inserts an axis of length 1",
    memory="view",
    call_attrs=("axis",),
    onnx=_reshape_onnx,
    functional="expand_dims",
)
defop(
    "Squeeze",
    ("x",),
    lambda t, axis: TensorType(t[0].dtype, _squeezed(t[0].shape, axis)),
    lambda x, axis: np.squeeze(x, _squeeze_axes(x.shape, axis)),
    lambda g, out, x, axis: F.Reshape(g, shape=x.shape),
    attrs={"axis": Attr("ints", (), "axes of length 1 to remove; () removes all")},
    doc="removes axes of length 1",
    memory="view",
    onnx=_reshape_onnx,
    functional="squeeze",
)
