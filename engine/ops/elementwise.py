"""Elementwise ops: unary math, broadcasting binary arithmetic, comparisons, Select and Cast."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import DTypeError
from ..ir import TensorType, Value
from ..optable import Attr, F, broadcast, defop, require_float, same_dtype
from .common import BOOL, const, require_numeric, zero_grad

_CHECKS: dict[str, Callable[[TensorType, str], None]] = {
    "float": require_float,
    "numeric": require_numeric,
    "any": lambda t, what: None,
}


def unary(
    name: str, forward: Callable[..., Any], vjp: Callable[..., Any] | None, kind: str = "float", doc: str = "", memory: str = "new",
    scratch: int = 0,
) -> None:
    """Register a shape- and dtype-preserving one-input op; ``kind`` is the dtypes it takes."""
    check = _CHECKS[kind]

    def infer(types: list[TensorType]) -> TensorType:
        """x of the allowed dtypes; the output has x's type."""
        check(types[0], "x")
        return types[0]

    defop(name, ("x",), infer, forward, vjp, doc=doc, memory=memory, scratch=scratch)


def binary(name: str, forward: Callable[..., Any], vjp: Callable[..., Any] | None, kind: str = "numeric", out_dtype: np.dtype | None = None, doc: str = "") -> None:
    """Register a two-input op with NumPy broadcasting; both inputs share one dtype of ``kind``."""
    check = _CHECKS[kind]

    def infer(types: list[TensorType]) -> TensorType:
        """One allowed dtype for x and y; the output has their broadcast shape."""
        dt = same_dtype(types, "x and y")
        check(types[0], "x and y")
        return TensorType(out_dtype or dt, broadcast(types[0].shape, types[1].shape))

    defop(name, ("x", "y"), infer, forward, vjp, doc=doc)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function via tanh, which neither overflows nor leaves x's dtype."""
    return 0.5 * (np.tanh(0.5 * x) + 1)


_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715


def _gelu(x: np.ndarray) -> np.ndarray:
    """MindSpore's GeLU primitive: the tanh approximation."""
    return 0.5 * x * (1 + np.tanh(_GELU_C * (x + _GELU_A * x * x * x)))


def _gelu_vjp(g: Value, out: Value, x: Value) -> Value:
    """MindSpore's GeLUGrad: the exact derivative of the tanh approximation."""
    t = F.Tanh((x + x * x * x * _GELU_A) * _GELU_C)
    dt = (1 - t * t) * (1 + x * x * (3 * _GELU_A)) * _GELU_C
    return g * ((1 + t) * 0.5 + x * dt * 0.5)


def _pow_vjp(g: Value, out: Value, x: Value, y: Value) -> tuple[Value, Value]:
    """d/dy uses log(x) where x > 0 and 0 elsewhere (x ** y is constant in y at x = 0 and
    defined only for integer y at x < 0), so no log of a non-positive number is ever taken."""
    safe_x = F.Select(F.Greater(x, const(x, 0)), x, F.OnesLike(x))
    return g * y * x ** (y - 1), g * out * F.Log(safe_x)


unary("Neg", np.negative, lambda g, out, x: -g, kind="numeric", doc="-x")
unary("Square", np.square, lambda g, out, x: g * x * 2, kind="numeric", doc="x * x")
unary("Sqrt", np.sqrt, lambda g, out, x: g * 0.5 / out, doc="sqrt(x)")
unary("Rsqrt", lambda x: 1 / np.sqrt(x), lambda g, out, x: g * out * out * out * -0.5, doc="1 / sqrt(x)", scratch=1)
unary("Exp", np.exp, lambda g, out, x: g * out, doc="e ** x")
unary("Log", np.log, lambda g, out, x: g / x, doc="natural logarithm")
unary("Log1p", np.log1p, lambda g, out, x: g / (x + 1), doc="log(1 + x)")
unary("Sin", np.sin, lambda g, out, x: g * F.Cos(x), doc="sine")
unary("Cos", np.cos, lambda g, out, x: -(g * F.Sin(x)), doc="cosine")
unary("Tan", np.tan, lambda g, out, x: g * (out * out + 1), doc="tangent")
unary("Tanh", np.tanh, lambda g, out, x: g * (1 - out * out), doc="hyperbolic tangent")
unary("Sigmoid", _sigmoid, lambda g, out, x: g * out * (1 - out), doc="1 / (1 + exp(-x))", scratch=1)
unary(
    "ReLU",
    lambda x: np.maximum(x, np.zeros((), x.dtype)),
    lambda g, out, x: F.Select(F.Greater(x, const(x, 0)), g, F.ZerosLike(g)),
    kind="numeric",
    doc="max(x, 0); the gradient at 0 is 0",
)
unary("GeLU", _gelu, _gelu_vjp, doc="0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), MindSpore's primitive formula", scratch=2)
unary("Softplus", lambda x: np.logaddexp(np.zeros((), x.dtype), x), lambda g, out, x: g * F.Sigmoid(x), doc="log(1 + exp(x))")
unary("Abs", np.abs, lambda g, out, x: g * F.Sign(x), kind="numeric", doc="|x|; the gradient at 0 is 0")
unary("Sign", np.sign, zero_grad, kind="numeric", doc="-1, 0 or 1; zero gradient")
unary("StopGradient", lambda x: x, zero_grad, kind="any", doc="identity that blocks gradients", memory="view")

defop("OnesLike", ("x",), lambda t: t[0], lambda x: np.ones(x.shape, x.dtype), zero_grad, type_only=True, doc="ones of x's shape and dtype")
defop("ZerosLike", ("x",), lambda t: t[0], lambda x: np.zeros(x.shape, x.dtype), zero_grad, type_only=True, doc="zeros of x's shape and dtype")
defop(
    "Cast",
    ("x",),
    lambda t, dtype: TensorType(dtype, t[0].shape),
    lambda x, dtype: x.astype(dtype, copy=False),
    lambda g, out, x, dtype: g,
    attrs={"dtype": Attr("dtype", doc="destination dtype")},
    doc="converts x to dtype; the gradient is cast back to x's dtype (MindSpore's rule, also for integer dtypes)",
    memory="maybe_view",
)
defop(
    "Const",
    (),
    lambda t, value: TensorType(value.dtype, value.shape),
    lambda value: value,
    zero_grad,
    attrs={"value": Attr("tensor", doc="the constant's value")},
    doc="a constant tensor",
)

binary("Add", np.add, lambda g, out, x, y: (g, g), kind="any", doc="x + y (logical or on bool, as in NumPy)")
binary("Sub", np.subtract, lambda g, out, x, y: (g, -g), doc="x - y")
binary("Mul", np.multiply, lambda g, out, x, y: (g * y, g * x), doc="x * y")
binary("RealDiv", np.divide, lambda g, out, x, y: (g / y, -(g * out) / y), kind="float", doc="x / y")
binary("Pow", np.power, _pow_vjp, kind="float", doc="x ** y")


def _tie_split(first: Value, tie: Value, x: Value) -> Value:
    """Weight of x's share of the gradient: 1 where ``first`` holds, 1/2 at ties, else 0."""
    return F.Cast(first, dtype=x.dtype) + F.Cast(tie, dtype=x.dtype) * 0.5


def _minmax_vjp(first: str) -> Callable[..., tuple[Value, Value]]:
    """VJP of Maximum (first="Greater") or Minimum (first="Less"), splitting ties evenly."""

    def vjp(g: Value, out: Value, x: Value, y: Value) -> tuple[Value, Value]:
        """x gets weight w of the gradient, y the rest."""
        w = _tie_split(getattr(F, first)(x, y), F.Equal(x, y), x)
        return g * w, g * (1 - w)

    return vjp


binary("Maximum", np.maximum, _minmax_vjp("Greater"), doc="elementwise max; ties split the gradient evenly")
binary("Minimum", np.minimum, _minmax_vjp("Less"), doc="elementwise min; ties split the gradient evenly")
binary("Equal", np.equal, zero_grad, kind="any", out_dtype=BOOL, doc="x == y")
binary("NotEqual", np.not_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x != y")
binary("Less", np.less, zero_grad, kind="any", out_dtype=BOOL, doc="x < y")
binary("LessEqual", np.less_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x <= y")
binary("Greater", np.greater, zero_grad, kind="any", out_dtype=BOOL, doc="x > y")
binary("GreaterEqual", np.greater_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x >= y")


def _select_infer(types: list[TensorType]) -> TensorType:
    """Select needs a bool condition and one dtype for x and y; all three broadcast."""
    if types[0].dtype != BOOL:
        raise DTypeError(f"condition must be bool, got {types[0].dtype.name}")
    dt = same_dtype(types[1:], "x and y")
    return TensorType(dt, broadcast(*(t.shape for t in types)))


defop(
    "Select",
    ("condition", "x", "y"),
    _select_infer,
    np.where,
    lambda g, out, c, x, y: (None, F.Select(c, g, F.ZerosLike(g)), F.Select(c, F.ZerosLike(g), g)),
    nondiff=("condition",),
    doc="x where condition else y, with broadcasting",
)
