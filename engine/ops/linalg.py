"""Matrix products: MatMul on matrices and BatchMatMul with broadcast batch dimensions."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ShapeError
from ..ir import TensorType, Value
from ..optable import Attr, F, broadcast, defop, same_dtype
from .common import require_numeric

_FLAGS = {
    "transpose_a": Attr("bool", False, "use the transpose of a"),
    "transpose_b": Attr("bool", False, "use the transpose of b"),
}


def _mm_infer(op: str, types: list[TensorType], transpose_a: bool, transpose_b: bool) -> TensorType:
    """Batch axes broadcast, inner dimensions agree after the transpose flags."""
    a, b = types
    dt = same_dtype(types, "a and b")
    require_numeric(a, "a and b")
    if op == "MatMul" and (len(a.shape) != 2 or len(b.shape) != 2):
        raise ShapeError(f"inputs must be matrices, got shapes {a.shape} and {b.shape}")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ShapeError(f"inputs must have rank >= 2, got shapes {a.shape} and {b.shape}")
    m, k = a.shape[-2:][::-1] if transpose_a else a.shape[-2:]
    k2, n = b.shape[-2:][::-1] if transpose_b else b.shape[-2:]
    if k != k2:
        raise ShapeError(f"inner dimensions {k} and {k2} differ for shapes {a.shape} and {b.shape}")
    return TensorType(dt, broadcast(a.shape[:-2], b.shape[:-2]) + (m, n))


def _mm_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """2·m·n·k multiply-adds per batch element (at least one write per output element when k = 0)."""
    a, out = inputs[0], outputs[0]
    k = a.shape[-2] if attrs["transpose_a"] else a.shape[-1]
    return max(2 * out.size * k, out.size)


def _mm_forward(a: np.ndarray, b: np.ndarray, transpose_a: bool, transpose_b: bool) -> np.ndarray:
    """np.matmul after the transpose flags."""
    return np.matmul(a.swapaxes(-1, -2) if transpose_a else a, b.swapaxes(-1, -2) if transpose_b else b)


def _mm_vjp(op: str) -> Callable[..., tuple[Value, Value]]:
    """The VJP of MatMul or BatchMatMul for each combination of transpose flags."""

    def vjp(g: Value, out: Value, a: Value, b: Value, transpose_a: bool, transpose_b: bool) -> tuple[Value, Value]:
        """Products of g with the other operand, arranged so no explicit transpose node is needed."""
        mm = getattr(F, op)
        if not transpose_a and not transpose_b:
            return mm(g, b, transpose_b=True), mm(a, g, transpose_a=True)
        if transpose_a and not transpose_b:
            return mm(b, g, transpose_b=True), mm(a, g)
        if not transpose_a and transpose_b:
            return mm(g, b), mm(g, a, transpose_a=True)
        return mm(b, g, transpose_a=True, transpose_b=True), mm(g, a, transpose_a=True, transpose_b=True)

    return vjp


for _op in ("MatMul", "BatchMatMul"):
    defop(
        _op,
        ("a", "b"),
        lambda t, transpose_a, transpose_b, _op=_op: _mm_infer(_op, t, transpose_a, transpose_b),
        _mm_forward,
        _mm_vjp(_op),
        attrs=_FLAGS,
        doc="a @ b on matrices" if _op == "MatMul" else "a @ b over the last two axes, batch axes broadcast",
        cost=_mm_cost,
    )
