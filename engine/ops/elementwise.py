"""Elementwise ops: unary math, broadcasting binary arithmetic, comparisons, Select and Cast."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from gradserve.engine.errors import DTypeError, GraphError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, OnnxRule, broadcast, defop, require_float, same_dtype

from .common import BOOL, const, require_numeric, zero_grad
from .onnx_rules import Spec, ints, same, scalar

_CHECKS: dict[str, Callable[[TensorType, str], None]] = {
    "float": require_float,
    "numeric": require_numeric,
    "any": lambda t, what: None,
}


def unary(
    name: str, forward: Callable[..., Any], vjp: Callable[..., Any] | None, kind: str = "float", doc: str = "", memory: str = "new",
    scratch: int = 0, onnx: OnnxRule | None = None, functional: str | tuple[str, ...] = (), linear: tuple[float, ...] = (),
) -> None:
    """Register a shape- and dtype-preserving one-input op; ``kind`` is the dtypes it takes."""
    check = _CHECKS[kind]

    def infer(types: list[TensorType]) -> TensorType:
        """x of the allowed dtypes; the output has x's type."""
        check(types[0], "x")
        return types[0]

    defop(name, ("x",), infer, forward, vjp, doc=doc, memory=memory, scratch=scratch, onnx=onnx, functional=functional, linear=linear)


def binary(name: str, forward: Callable[..., Any], vjp: Callable[..., Any] | None, kind: str = "numeric", out_dtype: np.dtype | None = None, doc: str = "",
           onnx: OnnxRule | None = None, functional: str | tuple[str, ...] = (), linear: tuple[float, ...] = (),
           factors: tuple[int, ...] = ()) -> None:
    """Register a two-input op with NumPy broadcasting; both inputs share one dtype of ``kind``."""
    check = _CHECKS[kind]

    def infer(types: list[TensorType]) -> TensorType:
        """One allowed dtype for x and y; the output has their broadcast shape."""
        dt = same_dtype(types, "x and y")
        check(types[0], "x and y")
        return TensorType(out_dtype or dt, broadcast(types[0].shape, types[1].shape))

    defop(name, ("x", "y"), infer, forward, vjp, doc=doc, onnx=onnx, functional=functional, linear=linear, factors=factors)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function via tanh, which neither overflows nor leaves x's dtype."""
    return 0.5 * (np.tanh(0.5 * x) + 1)


_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715
_SQRT_HALF = float(np.sqrt(0.5))
_INV_SQRT_PI = float(1 / np.sqrt(np.pi))
_erf_f64 = np.vectorize(math.erf, otypes=[np.float64])
_erfc_f64 = np.vectorize(math.erfc, otypes=[np.float64])


_CHUNK = 1 << 13
"""Elements per math.erf batch: np.vectorize holds a Python float per element, so it runs on bounded slices."""


def _elementwise_math(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``fn`` (a vectorized math function) over x in slices of _CHUNK elements, into one array of x's dtype."""
    out = np.empty(x.shape, x.dtype)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for start in range(0, x.size, _CHUNK):
        flat_out[start:start + _CHUNK] = fn(flat_in[start:start + _CHUNK])
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function to double precision (math.erf per element; NumPy has none), in x's dtype."""
    return _elementwise_math(_erf_f64, x)


def _erfc(x: np.ndarray) -> np.ndarray:
    """1 - erf(x) without cancellation for large x, in x's dtype."""
    return _elementwise_math(_erfc_f64, x)


def _erf_slope(x: Value) -> Value:
    """d erf(x) / dx = 2 / sqrt(pi) exp(-x^2)."""
    return F.Exp(-(x * x)) * (2 * _INV_SQRT_PI)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    """MindSpore's GeLU: the tanh approximation (the primitive's formula) or, with 'none', x Phi(x)."""
    if approximate == "none":
        y = _erf(x * np.asarray(_SQRT_HALF, x.dtype))
        y += 1
        y *= x
        y *= np.asarray(0.5, x.dtype)
        return y
    return 0.5 * x * (1 + np.tanh(_GELU_C * (x + _GELU_A * x * x * x)))


def _gelu_vjp(g: Value, out: Value, x: Value, approximate: str) -> Value:
    """The exact derivative of either form (for 'tanh', MindSpore's GeLUGrad)."""
    if approximate == "none":
        cdf = (F.Erf(x * _SQRT_HALF) + 1) * 0.5
        return g * (cdf + x * F.Exp(x * x * -0.5) * float(1 / np.sqrt(2 * np.pi)))
    t = F.Tanh((x + x * x * x * _GELU_A) * _GELU_C)
    dt = (1 - t * t) * (1 + x * x * (3 * _GELU_A)) * _GELU_C
    return g * ((1 + t) * 0.5 + x * dt * 0.5)


def _gelu_infer(types: list[TensorType], approximate: str) -> TensorType:
    """Float x; approximate is 'tanh' or 'none'."""
    if approximate not in ("tanh", "none"):
        raise GraphError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    require_float(types[0], "x")
    return types[0]


def _silu_vjp(g: Value, out: Value, x: Value) -> Value:
    """d(x s(x)) = s (1 + x (1 - s))."""
    s = F.Sigmoid(x)
    return g * s * (x * (1 - s) + 1)


def _pow_vjp(g: Value, out: Value, x: Value, y: Value) -> tuple[Value, Value]:
    """d/dy uses log(x) where x > 0 and 0 elsewhere (x ** y is constant in y at x = 0 and
    defined only for integer y at x < 0), so no log of a non-positive number is ever taken."""
    safe_x = F.Select(F.Greater(x, const(x, 0)), x, F.OnesLike(x))
    return g * y * x ** (y - 1), g * out * F.Log(safe_x)


def _onnx_composite(*steps: tuple[str, tuple[Any, ...]]) -> OnnxRule:
    """A chain of ONNX nodes, each over x (``"x"``), the previous result (``"prev"``) or constants of x's dtype (floats),
    the last writing y: Log1p is Log(Add(x, 1))."""

    def rule(c: OnnxCall) -> list[Spec]:
        """One node per step."""
        specs: list[Spec] = []
        prev = c.x[0]
        for k, (op_type, args) in enumerate(steps):
            ins = tuple(c.x[0] if a == "x" else prev if a == "prev" else scalar(a, c.types[0].dtype) for a in args)
            out = c.y[0] if k == len(steps) - 1 else c.tmp(str(k))
            specs.append((op_type, ins, (out,)))
            prev = out
        return specs

    return rule


def _gelu_onnx(c: OnnxCall) -> list[Spec]:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh formula, in ONNX arithmetic (Gelu itself is opset 20)."""
    x, dt, t = c.x[0], c.types[0].dtype, c.tmp
    if c.attrs["approximate"] == "none":
        inner = [("Mul", (x, scalar(_SQRT_HALF, dt)), (t("s"),)), ("Erf", (t("s"),), (t("e"),))]
        core = t("e")
    else:
        inner = [
            ("Mul", (x, x), (t("x2"),)), ("Mul", (t("x2"), x), (t("x3"),)), ("Mul", (t("x3"), scalar(_GELU_A, dt)), (t("ax3"),)),
            ("Add", (x, t("ax3")), (t("u"),)), ("Mul", (t("u"), scalar(_GELU_C, dt)), (t("cu"),)), ("Tanh", (t("cu"),), (t("th"),)),
        ]
        core = t("th")
    return [*inner, ("Add", (core, scalar(1, dt)), (t("one_plus"),)), ("Mul", (x, t("one_plus")), (t("prod"),)),
            ("Mul", (t("prod"), scalar(0.5, dt)), c.y)]


def _fill_onnx(value: int) -> OnnxRule:
    """OnesLike and ZerosLike: ConstantOfShape of x's static shape."""

    def rule(c: OnnxCall) -> list[Spec]:
        """One ConstantOfShape node."""
        t = c.out_types[0]
        return [("ConstantOfShape", (ints(t.shape),), c.y, {"value": np.full((1,), value, t.dtype)})]

    return rule


unary("Neg", np.negative, lambda g, out, x: -g, kind="numeric", doc="-x", onnx=same("Neg"), functional="neg", linear=(-1,))
unary("Square", np.square, lambda g, out, x: g * x * 2, kind="numeric", doc="x * x", onnx=_onnx_composite(("Mul", ("x", "x"))), functional="square")
unary("Sqrt", np.sqrt, lambda g, out, x: g * 0.5 / out, doc="sqrt(x)", onnx=same("Sqrt"), functional="sqrt")
unary("Rsqrt", lambda x: 1 / np.sqrt(x), lambda g, out, x: g * out * out * out * -0.5, doc="1 / sqrt(x)", scratch=1, onnx=_onnx_composite(("Sqrt", ("x",)), ("Reciprocal", ("prev",))), functional="rsqrt")
unary("Exp", np.exp, lambda g, out, x: g * out, doc="e ** x", onnx=same("Exp"), functional="exp")
unary("Log", np.log, lambda g, out, x: g / x, doc="natural logarithm", onnx=same("Log"), functional="log")
unary("Log1p", np.log1p, lambda g, out, x: g / (x + 1), doc="log(1 + x)", onnx=_onnx_composite(("Add", ("x", 1.0)), ("Log", ("prev",))), functional="log1p")
unary("Sin", np.sin, lambda g, out, x: g * F.Cos(x), doc="sine", onnx=same("Sin"), functional="sin")
unary("Cos", np.cos, lambda g, out, x: -(g * F.Sin(x)), doc="cosine", onnx=same("Cos"), functional="cos")
unary("Tan", np.tan, lambda g, out, x: g * (out * out + 1), doc="tangent", onnx=same("Tan"), functional="tan")
unary("Tanh", np.tanh, lambda g, out, x: g * (1 - out * out), doc="hyperbolic tangent", onnx=same("Tanh"), functional="tanh")
unary("Sigmoid", _sigmoid, lambda g, out, x: g * out * (1 - out), doc="1 / (1 + exp(-x))", scratch=1, onnx=same("Sigmoid"), functional="sigmoid")
unary(
    "ReLU",
    lambda x: np.maximum(x, np.zeros((), x.dtype)),
    lambda g, out, x: F.Select(F.Greater(x, const(x, 0)), g, F.ZerosLike(g)),
    kind="numeric",
    doc="max(x, 0); the gradient at 0 is 0",
    onnx=same("Relu"),
    functional="relu",
)
defop(
    "GeLU",
    ("x",),
    _gelu_infer,
    _gelu,
    _gelu_vjp,
    attrs={"approximate": Attr("str", "tanh", "'tanh': the primitive's tanh formula; 'none': the exact x Phi(x) with erf")},
    doc="0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), MindSpore's primitive formula; approximate='none' gives 0.5 x (1 + erf(x / sqrt 2))",
    scratch=2,
    onnx=_gelu_onnx,
)
unary("Erf", _erf, lambda g, out, x: g * _erf_slope(x), doc="the error function 2/sqrt(pi) * integral of exp(-t^2) from 0 to x", scratch=1, onnx=same("Erf"), functional="erf")
unary("Erfc", _erfc, lambda g, out, x: -(g * _erf_slope(x)), doc="1 - erf(x), accurate for large x", scratch=1, onnx=_onnx_composite(("Erf", ("x",)), ("Sub", (1.0, "prev"))), functional="erfc")
unary("SiLU", lambda x: x * _sigmoid(x), _silu_vjp, doc="x * sigmoid(x)", scratch=1, onnx=_onnx_composite(("Sigmoid", ("x",)), ("Mul", ("x", "prev"))), functional="silu")
unary("Floor", np.floor, zero_grad, doc="largest integer <= x; zero gradient", onnx=same("Floor"), functional="floor")
unary("Ceil", np.ceil, zero_grad, doc="smallest integer >= x; zero gradient", onnx=same("Ceil"), functional="ceil")
unary("Round", np.round, zero_grad, doc="nearest integer, halves to even; zero gradient", onnx=same("Round"), functional="round")
unary("Softplus", lambda x: np.logaddexp(np.zeros((), x.dtype), x), lambda g, out, x: g * F.Sigmoid(x), doc="log(1 + exp(x))", onnx=same("Softplus"), functional="softplus")
unary("Abs", np.abs, lambda g, out, x: g * F.Sign(x), kind="numeric", doc="|x|; the gradient at 0 is 0", onnx=same("Abs"), functional="abs")
unary("Sign", np.sign, zero_grad, kind="numeric", doc="-1, 0 or 1; zero gradient", onnx=same("Sign"), functional="sign")
unary("StopGradient", lambda x: x, zero_grad, kind="any", doc="identity that blocks gradients", memory="view", onnx=same("Identity"), functional="stop_gradient")

defop("OnesLike", ("x",), lambda t: t[0], lambda x: np.ones(x.shape, x.dtype), zero_grad, type_only=True, doc="ones of x's shape and dtype",
      onnx=_fill_onnx(1), functional="ones_like")
defop("ZerosLike", ("x",), lambda t: t[0], lambda x: np.zeros(x.shape, x.dtype), zero_grad, type_only=True, doc="zeros of x's shape and dtype",
      onnx=_fill_onnx(0), functional="zeros_like")
defop(
    "Cast",
    ("x",),
    lambda t, dtype: TensorType(dtype, t[0].shape),
    lambda x, dtype: x.astype(dtype, copy=False),
    lambda g, out, x, dtype: g,
    attrs={"dtype": Attr("dtype", doc="destination dtype")},
    doc="converts x to dtype; the gradient is cast back to x's dtype (MindSpore's rule, also for integer dtypes)",
    memory="maybe_view",
    call_attrs=("dtype",),
    onnx=lambda c: [("Cast", c.x, c.y, {"to": c.attrs["dtype"]})],
    functional="cast",
)
defop(
    "Const",
    (),
    lambda t, value: TensorType(value.dtype, value.shape),
    lambda value: value,
    zero_grad,
    attrs={"value": Attr("tensor", doc="the constant's value")},
    doc="a constant tensor",
    public=False,
    onnx=lambda c: [("Constant", (), c.y, {"value": c.attrs["value"]})],
)

binary("Add", np.add, lambda g, out, x, y: (g, g), kind="any", doc="x + y (logical or on bool, as in NumPy)",
       onnx=lambda c: [("Or" if c.types[0].dtype == BOOL else "Add", c.x, c.y)], functional="add", linear=(1, 1))
binary("Sub", np.subtract, lambda g, out, x, y: (g, -g), doc="x - y", onnx=same("Sub"), functional="sub", linear=(1, -1))
binary("Mul", np.multiply, lambda g, out, x, y: (g * y, g * x), doc="x * y", onnx=same("Mul"), functional="mul", factors=(0, 1))
binary("RealDiv", np.divide, lambda g, out, x, y: (g / y, -(g * out) / y), kind="float", doc="x / y", onnx=same("Div"))
binary("Pow", np.power, _pow_vjp, kind="float", doc="x ** y", onnx=same("Pow"), functional="pow")


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


binary("Maximum", np.maximum, _minmax_vjp("Greater"), doc="elementwise max; ties split the gradient evenly", onnx=same("Max"), functional="maximum")
binary("Minimum", np.minimum, _minmax_vjp("Less"), doc="elementwise min; ties split the gradient evenly", onnx=same("Min"), functional="minimum")
binary("Equal", np.equal, zero_grad, kind="any", out_dtype=BOOL, doc="x == y", onnx=same("Equal"), functional="equal")
binary("NotEqual", np.not_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x != y",
       onnx=lambda c: [("Equal", c.x, (c.tmp("eq"),)), ("Not", (c.tmp("eq"),), c.y)], functional=("not_equal", "ne"))
binary("Less", np.less, zero_grad, kind="any", out_dtype=BOOL, doc="x < y", onnx=same("Less"), functional=("less", "lt"))
binary("LessEqual", np.less_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x <= y", onnx=same("LessOrEqual"), functional=("less_equal", "le"))
binary("Greater", np.greater, zero_grad, kind="any", out_dtype=BOOL, doc="x > y", onnx=same("Greater"), functional=("greater", "gt"))
binary("GreaterEqual", np.greater_equal, zero_grad, kind="any", out_dtype=BOOL, doc="x >= y", onnx=same("GreaterOrEqual"), functional=("greater_equal", "ge"))


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
    onnx=same("Where"),
    functional=("select", "where"),
)


def _clip_infer(types: list[TensorType]) -> TensorType:
    """One numeric dtype for x and both bounds; the three broadcast."""
    dt = same_dtype(types, "x, clip_value_min and clip_value_max")
    require_numeric(types[0], "x")
    return TensorType(dt, broadcast(*(t.shape for t in types)))


def _clip_vjp(g: Value, out: Value, x: Value, lo: Value, hi: Value) -> tuple[Value, Value, Value]:
    """Below the lower bound the gradient goes to it, above the upper bound to that, in between to x."""
    zero = F.ZerosLike(g)
    below, above = F.Less(x, lo), F.Greater(F.Maximum(x, lo), hi)
    return (F.Select(below, zero, F.Select(above, zero, g)), F.Select(below, F.Select(above, zero, g), zero),
            F.Select(above, g, zero))


defop(
    "ClipByValue",
    ("x", "clip_value_min", "clip_value_max"),
    _clip_infer,
    lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    _clip_vjp,
    doc="min(max(x, clip_value_min), clip_value_max), broadcasting; at a bound the gradient goes to x",
    scratch=1,
    onnx=lambda c: [("Max", c.x[:2], (c.tmp("lo"),)), ("Min", (c.tmp("lo"), c.x[2]), c.y)],
    functional="clip_by_value",
)
