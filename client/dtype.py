"""MindSpore's dtype objects (``Float32``...) and their aliases, mapped to NumPy dtypes."""
from __future__ import annotations

from typing import Any

import numpy as np


class DType:
    """A tensor element type; prints with MindSpore's name (``Float32``) and maps to one NumPy dtype."""

    __slots__ = ("name", "np_dtype")

    def __init__(self, name: str, np_dtype: np.dtype) -> None:
        self.name = name
        self.np_dtype = np_dtype

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DType) and other.np_dtype == self.np_dtype

    def __hash__(self) -> int:
        return hash(self.np_dtype)


float16 = DType("Float16", np.dtype(np.float16))
float32 = DType("Float32", np.dtype(np.float32))
float64 = DType("Float64", np.dtype(np.float64))
int8 = DType("Int8", np.dtype(np.int8))
int16 = DType("Int16", np.dtype(np.int16))
int32 = DType("Int32", np.dtype(np.int32))
int64 = DType("Int64", np.dtype(np.int64))
uint8 = DType("UInt8", np.dtype(np.uint8))
bool_ = DType("Bool", np.dtype(np.bool_))

half, single, double = float16, float32, float64
byte, short, intc, intp = int8, int16, int32, int64
ubyte = uint8

__all__ = [
    "DType", "bool_", "byte", "double", "dtype_to_nptype", "float16", "float32", "float64", "half", "int8", "int16",
    "int32", "int64", "intc", "intp", "pytype_to_dtype", "short", "single", "ubyte", "uint8",
]
"""MindSpore's dtype names and aliases, and its two dtype helpers: what ``gradserve`` and ``gradserve.dtype`` export."""

_BY_NUMPY = {d.np_dtype: d for d in (float16, float32, float64, int8, int16, int32, int64, uint8, bool_)}
_BY_PYTYPE = {bool: bool_, int: int64, float: float64}


def to_numpy(d: Any) -> np.dtype:
    """The NumPy dtype for a DType, NumPy dtype, name or scalar type, or a TypeError listing the supported ones."""
    if isinstance(d, DType):
        return d.np_dtype
    try:
        dt = np.dtype(d)
    except TypeError:
        dt = None
    if dt not in _BY_NUMPY:
        names = ", ".join(str(x) for x in _BY_NUMPY.values())
        raise TypeError(f"unsupported dtype {d!r}; supported: {names}")
    return dt


def from_numpy(dt: Any) -> DType:
    """The DType for a NumPy dtype (or anything :func:`to_numpy` accepts)."""
    return _BY_NUMPY[to_numpy(dt)]


def dtype_to_nptype(type_: DType) -> type:
    """MindSpore's ``dtype_to_nptype``: the NumPy scalar type of a DType."""
    return to_numpy(type_).type


def pytype_to_dtype(obj: type) -> DType:
    """MindSpore's ``pytype_to_dtype``: bool -> bool_, int -> int64, float -> float64."""
    if obj in _BY_PYTYPE:
        return _BY_PYTYPE[obj]
    return from_numpy(obj)


def promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """MindSpore's implicit promotion for two tensors: a float beats an int or bool, else the wider type wins."""
    if a == b:
        return a
    fa, fb = a.kind == "f", b.kind == "f"
    if fa != fb:
        return a if fa else b
    if a.kind == "b" or b.kind == "b":
        return b if a.kind == "b" else a
    return to_numpy(np.promote_types(a, b))
