"""Builders of the ONNX export rules (``OpDef.onnx``) that several op families share: plain tuples, no ``onnx`` import."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gradserve.engine.optable import OnnxCall, OnnxRule

Spec = tuple[Any, ...]
"""One ONNX node as an export rule returns it: ``(op_type, inputs, outputs[, attributes])``."""


def same(op_type: str, **attrs: Any) -> OnnxRule:
    """The rule of an op that is one ONNX op over the same inputs and outputs (Exp, Add, Where)."""

    def rule(c: OnnxCall) -> list[Spec]:
        """One ``op_type`` node."""
        return [(op_type, c.x, c.y, attrs)]

    return rule


def ints(values: Sequence[int]) -> np.ndarray:
    """An int64 vector constant (shapes, axes, starts and ends as ONNX takes them)."""
    return np.asarray(list(values), np.int64).reshape(-1)


def scalar(value: float, dtype: np.dtype) -> np.ndarray:
    """A 0-d constant of ``dtype``."""
    return np.asarray(value, dtype)


def reshape(x: str, shape: Sequence[int], y: str) -> Spec:
    """Reshape ``x`` to a static ``shape`` (no 0 or -1 entries: shapes here are fully known)."""
    return ("Reshape", (x, ints(shape)), (y,))


def reduce(op_type: str, x: str, axes: Sequence[int], keepdims: bool, y: str) -> Spec:
    """A reduction over ``axes`` (opset 18 and later: axes as an input; no axes given reduces nothing, so an empty
    list is written as ``noop_with_empty_axes``)."""
    if not axes:
        return ("Identity", (x,), (y,))
    return (op_type, (x, ints(axes)), (y,), {"keepdims": int(keepdims)})
