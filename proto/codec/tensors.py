"""Dtypes, tensors and result trees: NumPy arrays <-> gradserve.v1 Tensor and TensorTree, checked before
anything is allocated."""
from __future__ import annotations

import math
from typing import Any, Sequence, TypeAlias

import numpy as np

from gradserve.engine import DTYPES
from gradserve.v1 import graph_pb2 as pb

from .errors import LimitError, WireError, type_text
from .limits import DEFAULT_LIMITS, Limits

DType: TypeAlias = pb.DataType.ValueType
"""A DataType enum value."""

_DTYPE_OF_ENUM: dict[DType, np.dtype] = {
    pb.DataType.Value(f"DATA_TYPE_{name.upper()}"): dt
    for name, dt in DTYPES.items()
    if f"DATA_TYPE_{name.upper()}" in pb.DataType.keys()
}
_ENUM_OF_DTYPE: dict[np.dtype, DType] = {dt: enum for enum, dt in _DTYPE_OF_ENUM.items()}


def supported_dtypes() -> list[DType]:
    """The DataType enum values the engine computes in (for ServerInfo.supported_dtypes)."""
    return sorted(_DTYPE_OF_ENUM)


def decode_dtype(value: DType, field: str) -> np.dtype:
    """The NumPy dtype of a DataType enum value, or a WireError naming the supported ones."""
    dt = _DTYPE_OF_ENUM.get(value)
    if dt is not None:
        return dt
    supported = ", ".join(pb.DataType.Name(e) for e in supported_dtypes())
    if value == pb.DATA_TYPE_UNSPECIFIED:
        raise WireError(field, f"dtype is not set; supported: {supported}")
    name = pb.DataType.Name(value) if value in pb.DataType.values() else f"unknown enum value {value}"
    raise WireError(field, f"dtype {name} is not supported by this engine; supported: {supported}")


def encode_dtype(dt: Any) -> DType:
    """The DataType enum value of a NumPy dtype the engine supports."""
    enum = _ENUM_OF_DTYPE.get(np.dtype(dt).newbyteorder("="))
    if enum is None:
        raise TypeError(f"dtype {np.dtype(dt).name} has no wire encoding; supported: {', '.join(d.name for d in _ENUM_OF_DTYPE)}")
    return enum


def check_shape(shape: Sequence[int], limits: Limits, field: str) -> tuple[int, ...]:
    """Validate a wire shape (rank, non-negative dims, element count) without allocating; returns it as a tuple."""
    if len(shape) > limits.max_tensor_rank:
        raise LimitError(f"{field}.shape", f"rank {len(shape)} exceeds the limit of {limits.max_tensor_rank}")
    count = 1
    for i, d in enumerate(shape):
        if d < 0:
            raise WireError(f"{field}.shape[{i}]", f"dimension {d} is negative")
        count *= max(d, 1)
        if count > limits.max_tensor_elements:
            raise LimitError(
                f"{field}.shape", f"shape {list(shape)} exceeds the limit of {limits.max_tensor_elements} elements"
            )
    return tuple(int(d) for d in shape)


_PLAIN: dict[DType, tuple[np.dtype, int, np.dtype]] = {
    enum: (dt.newbyteorder("<"), dt.itemsize, dt) for enum, dt in _DTYPE_OF_ENUM.items() if dt.kind != "b"
}
"""By DataType enum, the supported dtypes whose every byte pattern is a value (not bool): wire dtype, item size, dtype."""


def decode_tensor(msg: pb.Tensor, limits: Limits = DEFAULT_LIMITS, field: str = "tensor") -> np.ndarray:
    """A read-only NumPy view of a Tensor's bytes (zero-copy on little-endian hosts), validated first. A tensor that
    passes every check at once (a known non-bool dtype, positive dims within the limits, the right byte count) is
    viewed directly; any other goes through the step-by-step checks, which name what is wrong."""
    plain = _PLAIN.get(msg.dtype)
    if plain is not None and len(msg.shape) <= limits.max_tensor_rank:
        shape = tuple(msg.shape)
        data = msg.data
        count = math.prod(shape)
        if (0 < count <= limits.max_tensor_elements and (not shape or min(shape) > 0) and type(data) is bytes
                and len(data) == count * plain[1]):
            arr = np.frombuffer(data, plain[0]).reshape(shape)
            return arr if arr.dtype.isnative else arr.astype(plain[2])
    dt = decode_dtype(msg.dtype, f"{field}.dtype")
    shape = check_shape(msg.shape, limits, field)
    count = math.prod(shape)
    data = msg.data
    nbytes = memoryview(data).nbytes
    if nbytes != count * dt.itemsize:
        raise WireError(
            f"{field}.data",
            f"has {nbytes} bytes, but a {type_text(dt, shape)} tensor needs "
            f"{count} elements x {dt.itemsize} bytes = {count * dt.itemsize}",
        )
    if dt.kind == "b" and count and np.frombuffer(data, np.uint8).max() > 1:
        raise WireError(f"{field}.data", "bool elements must be the bytes 0x00 or 0x01")
    arr = np.frombuffer(data, dt.newbyteorder("<")).reshape(shape)
    return arr if arr.dtype.isnative else arr.astype(dt)


def encode_tensor(array: Any, out: pb.Tensor | None = None) -> pb.Tensor:
    """Fill ``out`` (or a new Tensor) with ``array``'s dtype, shape and little-endian C-order bytes."""
    a = np.asarray(array)
    msg = pb.Tensor() if out is None else out
    msg.dtype = encode_dtype(a.dtype)
    msg.ClearField("shape")
    msg.shape.extend(a.shape)
    msg.data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return msg


def encode_tree(tree: Any, out: pb.TensorTree | None = None) -> pb.TensorTree:
    """The wire form of a result: an array, or nested tuples/lists of arrays."""
    msg = pb.TensorTree() if out is None else out
    if isinstance(tree, (tuple, list)):
        msg.tuple.SetInParent()
        for t in tree:
            encode_tree(t, msg.tuple.items.add())
    else:
        encode_tensor(tree, msg.tensor)
    return msg


def decode_tree(msg: pb.TensorTree, limits: Limits = DEFAULT_LIMITS, field: str = "result", depth: int = 1) -> Any:
    """A result tree as nested tuples of read-only arrays, validated like any received tensor."""
    if depth > limits.max_nesting_depth:
        raise LimitError(field, f"tree nests deeper than the limit of {limits.max_nesting_depth}")
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return tuple(decode_tree(t, limits, f"{field}.tuple.items[{i}]", depth + 1) for i, t in enumerate(msg.tuple.items))
    if kind is None:
        raise WireError(field, "neither tensor nor tuple is set")
    return decode_tensor(msg.tensor, limits, f"{field}.tensor")
