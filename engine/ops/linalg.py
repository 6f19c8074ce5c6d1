"""Matrix products: MatMul on matrices, BatchMatMul with broadcast batch dimensions, and Einsum."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np

from gradserve.engine.errors import GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, broadcast, defop, same_dtype

from .common import require_numeric
from .onnx_rules import Spec, same

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


def _mm_forward(
    a: np.ndarray, b: np.ndarray, transpose_a: bool, transpose_b: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """np.matmul after the transpose flags, into ``out`` when given (see ``_mm``)."""
    return _mm(a.mT if transpose_a else a, b.mT if transpose_b else b, out)


def _mm_bind(attrs: dict[str, Any], inputs: Sequence[TensorType]) -> Callable[..., np.ndarray]:
    """MatMul's forward for these flags and input types, chosen once (a tiny product's time is mostly call overhead):
    np.matmul after the fixed transposes, or ``_mm_forward`` for an inner dimension of 1 (the outer product). Module
    functions, so that a compiled plan pickles."""
    ta, tb = attrs["transpose_a"], attrs["transpose_b"]
    if (inputs[0].shape[-2] if ta else inputs[0].shape[-1]) == 1:
        return functools.partial(_mm_forward, transpose_a=ta, transpose_b=tb)
    return _MATMULS[ta, tb]


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.matmul(a, b, out=out)


def _matmul_ta(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.matmul(a.mT, b, out=out)


def _matmul_tb(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.matmul(a, b.mT, out=out)


def _matmul_tab(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.matmul(a.mT, b.mT, out=out)


def _mm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """np.matmul, into ``out`` when given (the compiler's dead buffer of the result's type); an inner dimension of 1 is
    the outer product, the same products as a broadcast np.multiply, which costs a third of NumPy's matmul loop for it,
    and np.dot (BLAS, for float32 and float64 into a C-ordered buffer) half of that multiply (11 us for 1000x1 by 1x64)."""
    if a.shape[-1] == 1 and a.ndim == b.ndim == 2:
        if a.dtype in _BLAS and (out is None or out.flags.c_contiguous):
            return np.dot(a, b, out=out)
        return np.multiply(a, b, out=out)
    return np.matmul(a, b, out=out)


_BLAS = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes np.dot hands to BLAS."""

_MATMULS = {(False, False): _matmul, (True, False): _matmul_ta, (False, True): _matmul_tb, (True, True): _matmul_tab}
"""np.matmul after the transposes, by (transpose_a, transpose_b)."""


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


def _mm_onnx(c: OnnxCall) -> list[Spec]:
    """ONNX MatMul, after a Transpose of the last two axes of each operand whose flag is set."""
    specs: list[Spec] = []
    ins = list(c.x)
    for i, flag in enumerate((c.attrs["transpose_a"], c.attrs["transpose_b"])):
        if flag:
            rank = len(c.types[i].shape)
            perm = [*range(rank - 2), rank - 1, rank - 2]
            specs.append(("Transpose", (ins[i],), (c.tmp(f"t{i}"),), {"perm": perm}))
            ins[i] = c.tmp(f"t{i}")
    return [*specs, ("MatMul", tuple(ins), c.y)]


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
        onnx=_mm_onnx,
        functional=() if _op == "MatMul" else ("batch_matmul", "bmm"),  # ops.matmul: client/functional.py (NumPy's ranks)
        out=True,
        factors=(0, 1),
        bind=_mm_bind,
    )

# ---- Einsum ----


def _einsum_spec(equation: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """The operands' subscripts and the output's, from an explicit 'ab,bc->ac' equation (letters only, no '...'
    and no letter twice in one operand), checked against the operands' ranks."""
    eq = equation.replace(" ", "")
    if eq.count("->") != 1:
        raise GraphError(f"equation {equation!r} must have the explicit form 'ab,bc->ac'")
    lhs, out = eq.split("->")
    subs = lhs.split(",")
    if len(subs) != len(ranks):
        raise GraphError(f"equation {equation!r} names {len(subs)} operands, got {len(ranks)} inputs")
    for s in subs + [out]:
        if not s.isalpha() and s:
            raise GraphError(f"equation {equation!r}: subscripts must be letters (no '...'), got {s!r}")
        if len(set(s)) != len(s):
            raise GraphError(f"equation {equation!r}: a letter repeats within {s!r} (diagonals are not supported)")
    if any(len(s) != r for s, r in zip(subs, ranks)):
        raise ShapeError(f"equation {equation!r}: subscripts {subs} do not match the operand ranks {list(ranks)}")
    if set(out) - set("".join(subs)):
        raise GraphError(f"equation {equation!r}: output letters {sorted(set(out) - set(''.join(subs)))} appear in no operand")
    return subs, out


def _einsum_sizes(subs: list[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, int]:
    """Each letter's length, which must agree wherever the letter appears."""
    sizes: dict[str, int] = {}
    for s, shape in zip(subs, shapes):
        for letter, d in zip(s, shape):
            if sizes.setdefault(letter, d) != d:
                raise ShapeError(f"letter {letter!r} has lengths {sizes[letter]} and {d} in shapes {', '.join(map(str, shapes))}")
    return sizes


def _einsum_infer(types: list[TensorType], equation: str) -> TensorType:
    """One numeric dtype; the output's shape is its letters' lengths."""
    dt = same_dtype(types, "operands")
    require_numeric(types[0], "operands")
    subs, out = _einsum_spec(equation, [len(t.shape) for t in types])
    sizes = _einsum_sizes(subs, [t.shape for t in types])
    return TensorType(dt, tuple(sizes[c] for c in out))


def _einsum_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """Two operations per point of the joint index space, plus the traffic (an upper bound for any contraction order)."""
    subs, _ = _einsum_spec(attrs["equation"], [len(t.shape) for t in inputs])
    sizes = _einsum_sizes(subs, [t.shape for t in inputs])
    return 2 * math.prod(sizes.values()) + sum(t.size for t in inputs) + outputs[0].size


def _einsum_vjp(g: Value, out: Value, *xs: Value, equation: str) -> tuple[Value, ...]:
    """Operand i's cotangent is an Einsum of g with the other operands onto i's letters; letters that only i has
    (summed away in the forward) are broadcast back."""
    subs, out_sub = _einsum_spec(equation, [x.ndim for x in xs])
    grads = []
    for i, x in enumerate(xs):
        others = [s for j, s in enumerate(subs) if j != i]
        seen = set(out_sub).union(*others)
        kept = "".join(c for c in subs[i] if c in seen)
        d = F.Einsum(g, *(xs[j] for j in range(len(xs)) if j != i), equation=",".join([out_sub] + others) + "->" + kept)
        if kept != subs[i]:
            d = F.BroadcastTo(F.Reshape(d, shape=tuple(n if c in seen else 1 for c, n in zip(subs[i], x.shape))), shape=x.shape)
        grads.append(d)
    return tuple(grads)


defop(
    "Einsum",
    ("x", "xs*"),
    _einsum_infer,
    lambda *xs, equation: np.asarray(np.einsum(equation, *xs, optimize=len(xs) > 1)),
    _einsum_vjp,
    attrs={"equation": Attr("str", doc="explicit subscripts 'ab,bc->ac': letters only, none repeated within one operand")},
    doc="Einstein summation of the operands by equation (contractions through BLAS where NumPy can)",
    cost=_einsum_cost,
    onnx=lambda c: same("Einsum", equation=c.attrs["equation"].replace(" ", ""))(c),
)
