"""Small helpers shared by the op families: typed constants, dtype checks and cotangent tests."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gradserve.engine.errors import DTypeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import F

BOOL = np.dtype(bool)
INDEX_DTYPES = (np.dtype("int32"), np.dtype("int64"))


def const(like: Value, value: float) -> Value:
    """A scalar constant of ``like``'s dtype, in ``like``'s graph."""
    return like.builder.const(value, dtype=like.dtype)  # type: ignore[union-attr]


def zero_grad(g: Any, out: Any, *inputs: Value, **attrs: Any) -> tuple[None, ...]:
    """VJP of an op whose output is locally constant in its inputs (Sign, comparisons, OnesLike)."""
    return (None,) * len(inputs)


def dense_cotangents(gs: Sequence[Value | None], outs: Sequence[Value]) -> list[Value]:
    """The cotangents of a multi-output op's outputs, zeros where an output got none."""
    return [g if g is not None else F.ZerosLike(o) for g, o in zip(gs, outs)]


def require_numeric(t: TensorType, what: str = "input") -> None:
    """Reject bool, on which NumPy arithmetic is undefined or silently logical."""
    if t.dtype == BOOL:
        raise DTypeError(f"{what} must be a numeric dtype, got bool")


def require_index(t: TensorType, what: str = "indices") -> None:
    """Indices and segment ids must be int32 or int64."""
    if t.dtype not in INDEX_DTYPES:
        raise DTypeError(f"{what} must be int32 or int64, got {t.dtype.name}")
