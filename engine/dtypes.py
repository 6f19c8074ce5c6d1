"""The dtypes the engine computes in, by name, and the rules for mixing them."""
from __future__ import annotations

import numpy as np

from .errors import shown

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
}


def as_dtype(d: object) -> np.dtype:
    """Return the NumPy dtype for a name, NumPy dtype or scalar type, rejecting what the engine does not support."""
    try:
        dt = np.dtype(d)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"unsupported dtype {shown(d)}; supported: {', '.join(DTYPES)}") from exc
    if dt.name not in DTYPES:
        raise TypeError(f"unsupported dtype {dt.name!r}; supported: {', '.join(DTYPES)}")
    return dt


def is_float(dt: np.dtype) -> bool:
    """True for the floating dtypes, the only ones gradients flow through."""
    return dt.kind == "f"


def short(dt: np.dtype) -> str:
    """Short spelling used in program listings: f32, i64, bool."""
    if dt.kind == "b":
        return "bool"
    return {"f": "f", "i": "i", "u": "u"}[dt.kind] + str(dt.itemsize * 8)
