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


def zeros(shape: Sequence[int], dtype: np.dtype, y: str) -> Spec:
    """Zeros of a static shape, made when the model runs (ConstantOfShape), so the file does not store them."""
    return ("ConstantOfShape", (ints(shape),), (y,), {"value": np.zeros((1,), dtype)})


def reduce(op_type: str, x: str, axes: Sequence[int], keepdims: bool, y: str) -> Spec:
    """A reduction over ``axes``, given as an input (opset 18 on); with no axis to reduce (a scalar) an Identity, since
    ONNX reads empty axes as every axis."""
    if not axes:
        return ("Identity", (x,), (y,))
    return (op_type, (x, ints(axes)), (y,), {"keepdims": int(keepdims)})
