"""The op catalog, table-driven: one row per differentiable op, checked against central finite
differences at first and second order (third for the products), in forward mode, and forward over reverse
(Hessian-vector products), plus forward dtypes, shapes and reference values. Ops that carry a library graph
(transform nodes) are expanded before differentiation and are checked in test_transforms.py."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from gradserve.engine import (
    OPS,
    DTypeError,
    Graph,
    GraphBuilder,
    GraphError,
    InputError,
    ShapeError,
    Value,
    compile_graph,
    grad_operation,
    jvp,
)

EXEMPT = {
    "Const": "takes no inputs",
    **{op: "no float input (a draw: a constant w.r.t. its seed); test_random_draws_* below check it" for op in ("StandardNormal", "UniformReal")},
    "UniformInt": "integer output and no float input (a draw); test_random_draws_* below check it",
    "StopGradient": "blocks gradients by design, so finite differences disagree on purpose",
    "CustomVjp": "its gradient is a user's bprop by design; tests/test_client_custom.py checks it",
    **{op: "bool output" for op in ("Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual")},
    **{op: "integer output" for op in ("Argmax", "Argmin")},
}
STEP = 1e-5
TOL = 1e-6


@dataclass(eq=False)
class V:
    """One way to call an op: shapes of its float inputs, attributes, and fixed non-float inputs by position."""

    shapes: tuple[tuple[int, ...], ...]
    attrs: dict[str, Any]
    fixed: dict[int, np.ndarray]


def v(*shapes: tuple[int, ...], fixed: dict[int, Any] | None = None, **attrs: Any) -> V:
    """Shorthand for a variant; fixed lists become int32 arrays (bool stays bool)."""
    arrays = {k: np.asarray(a, dtype=None if np.asarray(a).dtype == bool else np.int32) for k, a in (fixed or {}).items()}
    return V(tuple(shapes), attrs, arrays)


@dataclass(eq=False)
class Row:
    """An op, the variants to check it on, a domain per float input, whether it takes int32, and
    the highest derivative order to check."""

    op: str
    variants: list[V]
    domains: tuple[str, ...] = ()
    ints: bool = False
    order: int = 2


UNARY = [v(()), v((3,)), v((2, 3))]
BINARY = [v((), ()), v((3,), (3,)), v((2, 3), (3,)), v((2, 1), (1, 3)), v((), (2, 3))]
COND = np.array([[True, False, True], [False, False, True]])
SS = dict(begin=(1, 0), end=(4, 6), strides=(2, 1))
CONV_SHAPES = [  # (x, weight, output, attrs): stride, padding modes, dilation and groups
    ((1, 2, 4, 4), (3, 2, 2, 2), (1, 3, 3, 3), dict(out_channel=3, kernel_size=2)),
    ((2, 2, 5, 4), (2, 1, 3, 2), (2, 2, 3, 2), dict(out_channel=2, kernel_size=(3, 2), stride=2, pad_mode="same", group=2)),
    ((1, 1, 5, 5), (2, 1, 2, 2), (1, 2, 2, 2), dict(out_channel=2, kernel_size=2, stride=(2, 3), dilation=2, pad_mode="pad", pad=(1, 0, 0, 2))),
    ((1, 4, 3, 3), (2, 2, 3, 1), (1, 2, 3, 3), dict(out_channel=2, kernel_size=(3, 1), pad_mode="same", group=2, dilation=(1, 2))),
]
CONV = [v(x, w, **a) for x, w, _, a in CONV_SHAPES]
POOL_SHAPES = [  # (x, output, attrs)
    ((1, 2, 4, 4), (1, 2, 2, 2), dict(kernel_size=2, strides=2)),
    ((2, 1, 5, 4), (2, 1, 3, 2), dict(kernel_size=(3, 2), strides=2, pad_mode="same")),
    ((1, 2, 4, 5), (1, 2, 4, 5), dict(kernel_size=3, pad_mode="SAME")),
    ((1, 1, 5, 6), (1, 1, 2, 2), dict(kernel_size=(2, 3), strides=(3, 2), pad_mode="valid")),
    ((1, 2, 5, 6), (1, 2, 3, 4), dict(kernel_size=3, strides=2, pad_mode="pad", pad=1, ceil_mode=True)),
    ((2, 1, 6, 5), (2, 1, 3, 3), dict(kernel_size=(3, 2), strides=2, pad_mode="pad", pad=(1, 0, 0, 1), ceil_mode=True)),
]
MAX_POOL = POOL_SHAPES + [((1, 2, 6, 6), (1, 2, 6, 4), dict(kernel_size=2, strides=(1, 2), pad_mode="pad", pad=1, dilation=(2, 1)))]
AVG_POOL = POOL_SHAPES + [  # count_include_pad with the ceil_mode overhang, divisor_override
    ((1, 2, 5, 6), (1, 2, 3, 4), dict(kernel_size=3, strides=2, pad_mode="pad", pad=1, ceil_mode=True, count_include_pad=False)),
    ((1, 1, 5, 5), (1, 1, 3, 2), dict(kernel_size=2, strides=2, pad_mode="pad", pad=(1, 0), divisor_override=3)),
]
POOL = [v(x, **a) for x, _, a in MAX_POOL]

ROWS = [
    *(Row(op, UNARY) for op in ("Exp", "Sin", "Cos", "Tanh", "Sigmoid", "GeLU", "Softplus")),
    *(Row(op, UNARY, ("pos",)) for op in ("Sqrt", "Rsqrt", "Log", "Log1p")),
    Row("Tan", UNARY, ("unit",)),
    *(Row(op, UNARY, ints=True) for op in ("Neg", "Square", "OnesLike", "ZerosLike")),
    *(Row(op, UNARY, ("away",), ints=True) for op in ("ReLU", "Abs", "Sign")),
    Row("Cast", [v((), dtype="float64"), v((2, 3), dtype="float64")], ints=True),
    Row("Add", BINARY, ints=True),
    Row("Sub", BINARY, ints=True),
    Row("Mul", BINARY, ints=True, order=3),
    Row("RealDiv", BINARY, ("real", "away")),
    Row("Pow", BINARY, ("pos", "real")),
    Row("Maximum", BINARY, ints=True),
    Row("Minimum", BINARY, ints=True),
    Row("Select", [v((2, 3), (2, 3), fixed={0: COND}), v((3,), (), fixed={0: COND})], ints=True),
    Row(
        "MatMul",
        [v((2, 3), (3, 4)), v((3, 2), (3, 4), transpose_a=True), v((2, 3), (4, 3), transpose_b=True),
         v((3, 2), (4, 3), transpose_a=True, transpose_b=True)],
        ints=True,
        order=3,
    ),
    Row(
        "BatchMatMul",
        [v((2, 2, 3), (2, 3, 4)), v((2, 2, 3), (3, 4)), v((1, 2, 3), (2, 3, 2), transpose_b=False),
         v((2, 3, 2), (2, 4, 3), transpose_a=True, transpose_b=True)],
        ints=True,
        order=3,
    ),
    Row("ReduceSum", [v(()), v((2, 3)), v((2, 3), axis=(1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)], ints=True),
    Row("ReduceMean", [v(()), v((2, 3)), v((2, 3), axis=(-1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)]),
    Row("ReduceMax", [v((2, 3)), v((2, 3), axis=(1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)], ("distinct",), ints=True),
    Row("Reshape", [v((2, 3), shape=(3, 2)), v((6,), shape=(2, -1)), v((), shape=(1, 1))], ints=True),
    Row("BroadcastTo", [v((3,), shape=(2, 3)), v((2, 1), shape=(2, 3)), v((), shape=(2, 2)), v((1, 3), shape=(2, -1, 3))], ints=True),
    Row("Transpose", [v((2, 3), perm=(1, 0)), v((2, 3, 4), perm=(2, 0, 1))], ints=True),
    Row("ExpandDims", [v((2, 3), axis=1), v((2, 3), axis=-1), v((), axis=0)], ints=True),
    Row("Squeeze", [v((2, 1, 3)), v((1, 3, 1), axis=(0,))], ints=True),
    Row("Concat", [v((2, 3), (2, 1), axis=1), v((2, 3), (1, 3), (3, 3)), v((4,))], ints=True),
    Row("Split", [v((4, 6), axis=1, output_num=3), v((4,), output_num=2), v((4,))], ints=True),
    Row(
        "StridedSlice",
        [v((5, 6), **SS), v((5,), begin=(4,), end=(0,), strides=(-1,)),
         v((3, 4, 5), begin=(0, 2, 1), end=(0, 3, 5), strides=(1, 1, 2), begin_mask=1, end_mask=1, shrink_axis_mask=2),
         v((3, 4, 5), begin=(0, 0, -1), end=(0, 0, 0), strides=(1, 1, 1), ellipsis_mask=1, new_axis_mask=2, shrink_axis_mask=4)],
        ints=True,
    ),
    Row("StridedSliceGrad", [v((2, 6), shape=(5, 6), **SS), v((4,), shape=(5,), begin=(4,), end=(0,), strides=(-1,))], ints=True),
    Row(
        "Gather",
        [v((5, 3), fixed={1: [[0, 2], [4, 0]]}, axis=0), v((2, 5, 3), fixed={1: [1, 3, 3]}, axis=1),
         v((4,), fixed={1: 2}, axis=0), v((3, 4), fixed={1: [0, 3, 1]}, axis=-1)],
        ints=True,
    ),
    Row(
        "UnsortedSegmentSum",
        [v((5, 3), fixed={1: [0, 2, 2, -1, 7]}, num_segments=4), v((2, 3), fixed={1: [[0, 1, 2], [2, 2, 0]]}, num_segments=3),
         v((4,), fixed={1: [1, 1, 0, 3]}, num_segments=4)],
        ints=True,
    ),
    Row("Tile", [v((2, 3), multiples=(2, 1)), v((3,), multiples=(2, 2)), v((), multiples=(3,))], ints=True),
    Row("Print", [v((2, 3)), v((3,), (), strings=("x", "and"), slots=(0, 2))], ints=True),
    Row("Depend", [v((2, 3)), v((2, 3), (3,), ()), v((), (2, 2))], ints=True),
    Row("Softmax", [v((3,)), v((2, 4)), v((2, 3), axis=0), v((2, 3, 4), axis=(0, 2))]),
    Row("LogSoftmax", [v((3,)), v((2, 4)), v((2, 3), axis=0)]),
    Row("SoftmaxCrossEntropyWithLogits", [v((3, 4), (3, 4)), v((1, 2), (1, 2))], ("real", "pos")),
    Row(
        "LayerNorm",
        [v((2, 3), (3,), (3,)), v((2, 3, 4), (4,), (4,), begin_params_axis=2),
         v((2, 3, 4), (3, 4), (3, 4), begin_norm_axis=-2, begin_params_axis=-2), v((2, 3), (2, 3), (2, 3), begin_norm_axis=0, begin_params_axis=0)],
    ),
    Row("Conv2D", CONV, order=3),
    *(Row(op, [v(out, w, input_size=x, **a) for x, w, out, a in CONV_SHAPES]) for op in ("Conv2DBackpropInput", "Conv2DTranspose")),
    Row("Conv2DBackpropFilter", [v(out, x, filter_size=w, **a) for x, w, out, a in CONV_SHAPES]),
    Row("MaxPool", POOL, ("distinct",), order=3),
    Row("MaxPoolWithArgmax", POOL, ("distinct",)),
    Row("AvgPool", [v(x, **a) for x, _, a in AVG_POOL]),
    Row("AvgPoolGrad", [v(out, input_size=x, **a) for x, out, a in AVG_POOL]),
    Row("AdaptiveAvgPool2D", [v((1, 2, 5, 7), output_size=(2, 3)), v((2, 4, 4), output_size=3), v((1, 1, 3, 5), output_size=(-1, 2))]),
    Row("Erf", UNARY),
    Row("Erfc", UNARY),
    Row("SiLU", UNARY),
    Row("GeLU", [v((2, 3), approximate="none"), v((3,), approximate="tanh")]),
    *(Row(op, UNARY, ("frac",)) for op in ("Floor", "Ceil", "Round")),
    Row("ClipByValue", [v((2, 3), (), ()), v((2, 3), (3,), (2, 1)), v((3,), (3,), (3,))], ("real", "clipmin", "clipmax"), ints=True),
    *(Row(op, [v((2, 3)), v((2, 3), axis=1), v((2, 3, 4), axis=-1, keep_dims=True), v((4,)), v((3, 1, 2), axis=-2, keep_dims=True)],
          ("distinct",), ints=True) for op in ("ArgMaxWithValue", "ArgMinWithValue")),
    Row("ReduceMin", [v((2, 3)), v((2, 3), axis=(1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)], ("distinct",), ints=True),
    Row("ReduceProd", [v(()), v((2, 3)), v((2, 3), axis=(1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)], ("away",), ints=True),
    Row("LogSumExp", [v((3,)), v((2, 3), axis=(1,)), v((2, 3, 4), axis=(0, 2), keep_dims=True)]),
    Row("CumSum", [v((4,), axis=0), v((2, 3), axis=1, exclusive=True), v((2, 3), axis=0, reverse=True), v((2, 3, 2), axis=-2, exclusive=True, reverse=True),
                   v((1, 2), axis=0, exclusive=True)],
        ints=True),
    Row("AddN", [v((2, 3)), v((2, 3), (2, 3), (2, 3)), v((), ())], ints=True),
    Row("Stack", [v((2, 3), (2, 3)), v((3,), (3,), (3,), axis=1), v((), axis=-1)], ints=True),
    Row("Unstack", [v((2, 3)), v((2, 3), axis=1), v((1, 2), axis=0, num=1)], ints=True),
    Row("Pad", [v((2, 3), paddings=(1, 0, 2, 1)), v((3,), paddings=(0, 2)), v((), paddings=())], ints=True),
    Row("PadV3", [v((3, 4), paddings=(2, 1, 3, 2)), v((4,), paddings=(1, 3), mode="edge"), v((2, 3, 3), paddings=(0, 0, 1, 2, 3, 3), mode="circular"),
                  v((1, 3), paddings=(0, 2, 2, 0), mode="edge"), v((2, 2), paddings=(0, 0, 0, 0)), v((), paddings=())], ints=True),
    Row("PadV3Grad", [v((6, 9), paddings=(2, 1, 3, 2)), v((8,), paddings=(1, 3), mode="edge"), v((2, 6, 9), paddings=(0, 0, 1, 2, 3, 3), mode="circular"),
                      v((3, 5), paddings=(0, 2, 2, 0), mode="edge"), v((), paddings=())], ints=True),
    Row("OneHot", [v((), (), fixed={0: [0, 2, 5, 1]}, depth=3), v((), (), fixed={0: [[1, 0], [2, 2]]}, depth=3, axis=0)], ints=True),
    Row("TopK", [v((5,), k=2), v((2, 4), k=4), v((2, 3), k=0)], ("distinct",), ints=True),
    Row(
        "BatchNorm",
        [v((2, 3, 2, 2), (3,), (3,), (3,), (3,), is_training=True), v((4, 2), (2,), (2,), (2,), (2,), is_training=True, momentum=0.3, epsilon=0.01),
         v((2, 3, 2, 2), (3,), (3,), (3,), (3,)), v((3, 2, 3), (2,), (2,), (2,), (2,), epsilon=0.5)],
        ("real", "real", "real", "real", "pos"),
    ),
    Row("Dropout", [v((2, 3), keep_prob=0.6, Seed0=1), v((3, 4), fixed={1: 7}, keep_prob=0.5, Seed1=2), v((), keep_prob=1.0)]),
    Row(
        "Einsum",
        [v((2, 3), (3, 4), equation="ab,bc->ac"), v((2, 3, 4), (2, 4, 5), equation="bij,bjk->bik"), v((2, 3), equation="ij->ji"),
         v((2, 3), (3,), equation="ij,j->"), v((2, 3), (4,), (3,), equation="ab,c,b->ca"), v((3, 2), equation="ab->b")],
        ints=True,
        order=3,
    ),
]
CASES = [pytest.param(row, var, id=f"{row.op}-{i}") for row in ROWS for i, var in enumerate(row.variants)]


def sample(rng: np.random.Generator, domain: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 point in ``domain``: real, unit, pos, away (from 0), frac (away from integers and halves), clipmin/clipmax
    (bounds below and above 0, so real points fall on every side) or distinct (no near-ties)."""
    if domain == "pos":
        x = rng.uniform(0.5, 2.0, shape)
    elif domain == "unit":
        x = rng.uniform(-1.0, 1.0, shape)
    elif domain == "away":
        x = rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif domain == "frac":
        x = rng.integers(-3, 3, shape) + rng.uniform(0.1, 0.4, shape) * rng.choice([1.0, 2.0], shape)
    elif domain == "clipmin":
        x = rng.uniform(-1.5, -0.5, shape)
    elif domain == "clipmax":
        x = rng.uniform(0.5, 1.5, shape)
    elif domain == "distinct":
        size = int(np.prod(shape))
        x = (rng.permutation(size).reshape(shape) - size / 2) * 0.25 + rng.uniform(0, 0.01, shape)
    else:
        x = rng.uniform(-2.0, 2.0, shape)
    return np.asarray(x, dtype=np.float64)


def points(row: Row, var: V, rng: np.random.Generator) -> list[np.ndarray]:
    """One float64 array per float input of the variant, each from its row's domain."""
    doms = row.domains or ("real",)
    return [sample(rng, doms[min(i, len(doms) - 1)], s) for i, s in enumerate(var.shapes)]


def apply(b: GraphBuilder, row: Row, var: V, dtype: str) -> tuple[list[Value], tuple[Value, ...]]:
    """Declare the float inputs in ``dtype``, splice in the fixed ones, and apply the op."""
    xs = [b.input(f"x{i}", dtype, s) for i, s in enumerate(var.shapes)]
    it = iter(xs)
    args = [b.const(var.fixed[k]) if k in var.fixed else next(it) for k in range(len(xs) + len(var.fixed))]
    outs = b.op(row.op, *args, **var.attrs)
    return xs, outs if isinstance(outs, tuple) else (outs,)


def contracted(row: Row, var: V) -> Graph:
    """S0(x..., v...) = sum_k <op(x...)_k, v_k> over the float outputs: a scalar whose x-gradient is the op's VJP at v."""
    b = GraphBuilder("S0")
    _, outs = apply(b, row, var, "float64")
    outs = tuple(o for o in outs if o.dtype.kind == "f")  # integer outputs (indices) take no cotangent
    vs = [b.input(f"v{k}", o.dtype, o.shape) for k, o in enumerate(outs)]
    return b.build(dot(b, outs, vs))


def dot(b: GraphBuilder, xs: Any, ys: Any) -> Value:
    """sum_i <xs_i, ys_i> as a 0-d value."""
    total = b.op("ReduceSum", xs[0] * ys[0])
    for x, y in zip(xs[1:], ys[1:]):
        total = total + b.op("ReduceSum", x * y)
    return total


def lift(s: Graph, nx: int, level: int) -> Graph:
    """S'(args..., u...) = <dS/dx(args...), u> over the first ``nx`` inputs, through a GradOperation node."""
    b = GraphBuilder(f"S{level}", library={**s.library, s.name: s})
    args = [b.input(x.name, x.dtype, x.shape) for x in s.inputs]
    grads = b.op("GradOperation", *args, fn=s.name, get_all=True)
    us = [b.input(f"u{level}_{i}", x.dtype, x.shape) for i, x in enumerate(args[:nx])]
    return b.build(dot(b, grads[:nx], us))


def check_gradient(s: Graph, nx: int, args: list[np.ndarray], rng: np.random.Generator) -> None:
    """The engine's gradient of scalar S along a random direction in its first ``nx`` inputs
    matches the central difference of S (itself computed by the engine)."""
    run = compile_graph(s)
    grads = compile_graph(grad_operation(s, get_all=True))(*args)
    d = [rng.standard_normal(a.shape) for a in args[:nx]]
    analytic = sum(float(np.sum(g * di)) for g, di in zip(grads, d))

    def at(t: float) -> float:
        """S at the base point moved t along d."""
        return float(run(*[np.asarray(a + t * di) for a, di in zip(args, d)], *args[nx:]))

    fd = (at(STEP) - at(-STEP)) / (2 * STEP)
    assert abs(fd - analytic) <= TOL * (1 + abs(fd) + abs(at(0.0))), f"{s.name}: engine {analytic!r} vs finite difference {fd!r}"


def check_orders(s: Graph, points: list[np.ndarray], order: int, rng: np.random.Generator) -> None:
    """Check orders 1..order of scalar ``s`` at ``points`` (its first inputs); later inputs and each
    level's direction ``u`` are random normal."""
    nx = len(points)
    args = points + [rng.standard_normal(x.shape) for x in s.inputs[nx:]]
    for level in range(1, order + 1):
        check_gradient(s, nx, args, rng)
        if level < order:
            s = lift(s, nx, level)
            args = args + [rng.standard_normal(x.shape) for x in s.inputs[len(args):]]


def test_every_differentiable_op_has_a_row() -> None:
    """Adding an op to the table without a row here fails, so every op is checked."""
    assert set(EXEMPT) <= set(OPS), sorted(set(EXEMPT) - set(OPS))
    missing = sorted(op for op in set(OPS) - set(EXEMPT) - {r.op for r in ROWS} if not OPS[op].lowered)
    assert not missing, f"ops without a finite-difference row: {missing}"


@pytest.mark.parametrize(("row", "var"), CASES)
def test_gradients_match_finite_differences(row: Row, var: V) -> None:
    """First, second and (for products) third order, each against differences of the order below."""
    rng = np.random.default_rng(zlib.crc32(f"{row.op}{var.shapes}{var.attrs}".encode()))
    check_orders(contracted(row, var), points(row, var, rng), row.order, rng)


def directional(run: Any, args: list[np.ndarray], d: list[np.ndarray]) -> list[np.ndarray]:
    """Central differences of every output leaf of ``run`` along ``d`` (one direction per input), in float64."""

    def at(t: float) -> list[np.ndarray]:
        """The output leaves at the base point moved t along d."""
        out = run(*[np.asarray(a + t * di) for a, di in zip(args, d)])
        return [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]

    return [(p - m) / (2 * STEP) for p, m in zip(at(STEP), at(-STEP))]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    """Leaf by leaf, within TOL relative to the leaf's scale."""
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{what}: shape {g.shape} vs {w.shape}"
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL * (1 + float(np.max(np.abs(w), initial=0.0))), err_msg=what)


@pytest.mark.parametrize(("row", "var"), CASES)
def test_forward_mode_matches_finite_differences(row: Row, var: V) -> None:
    """jvp of the op along random tangents of all its float inputs: the outputs are the op's, and each
    output's tangent is the central difference of that output along the tangents."""
    rng = np.random.default_rng(zlib.crc32(f"jvp{row.op}{var.shapes}{var.attrs}".encode()))
    b = GraphBuilder("f")
    _, outs = apply(b, row, var, "float64")
    f = b.build(outs)
    args = points(row, var, rng)
    d = [rng.standard_normal(a.shape) for a in args]
    values, tangents = compile_graph(jvp(f, tuple(range(len(args)))))(*args, *d)
    assert_close(list(values), list(compile_graph(f)(*args)), f"{row.op} values")
    assert_close(list(tangents), directional(compile_graph(f), args, d), f"{row.op} tangents")


@pytest.mark.parametrize(("row", "var"), CASES)
def test_forward_over_reverse_matches_finite_differences(row: Row, var: V) -> None:
    """Hessian-vector products of S = sum_k <op(x)_k, v_k> by forward mode over its reverse-mode gradient,
    against central differences of that gradient along the same direction."""
    rng = np.random.default_rng(zlib.crc32(f"hvp{row.op}{var.shapes}{var.attrs}".encode()))
    s = contracted(row, var)
    nx = len(var.shapes)
    args = points(row, var, rng) + [rng.standard_normal(x.shape) for x in s.inputs[nx:]]
    d = [rng.standard_normal(a.shape) for a in args[:nx]]
    g = grad_operation(s, get_all=True)
    _, hvp = compile_graph(jvp(g, tuple(range(nx))))(*args, *d)
    grads = compile_graph(g)

    def gradient_in_x(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        """The gradient with respect to the op's inputs, the contraction weights held fixed."""
        return tuple(grads(*xs, *args[nx:])[:nx])

    assert_close(list(hvp[:nx]), directional(gradient_in_x, args[:nx], d), f"{row.op} Hessian-vector product")


@pytest.mark.parametrize(
    ("op", "shapes", "pick"),
    [("LayerNorm", ((2, 3), (3,), (3,)), 0), ("LayerNorm", ((2, 3), (3,), (3,)), 2),
     ("SoftmaxCrossEntropyWithLogits", ((2, 3), (2, 3)), 0), ("SoftmaxCrossEntropyWithLogits", ((2, 3), (2, 3)), 1),
     ("Split", ((4, 2),), 1)],
)
def test_one_used_output_stays_exact_at_higher_orders(op: str, shapes: tuple[tuple[int, ...], ...], pick: int) -> None:
    """With one output of a multi-output op used, the rule skips the zero cotangents of the others;
    the gradient of the gradient, which does reach them, must still be exact (to third order)."""
    rng = np.random.default_rng(4)
    b = GraphBuilder("S0")
    xs = [b.input(f"x{i}", "float64", s) for i, s in enumerate(shapes)]
    out = b.op(op, *xs, **({"output_num": 2} if op == "Split" else {}))[pick]
    s = b.build(b.op("ReduceSum", b.op("Sin", out * 2.0)))
    check_orders(s, [sample(rng, "pos", x) for x in shapes], 3, rng)


@pytest.mark.parametrize(("row", "var"), CASES)
def test_forward_and_gradient_keep_inferred_types(row: Row, var: V) -> None:
    """Forward outputs have exactly the inferred dtype and shape in float16/32/64 (and int32 where
    the op allows), and float gradients come back in the input's dtype."""
    rng = np.random.default_rng(0)
    dtypes = ["float16", "float32", "float64"] + (["int32"] * row.ints)
    with np.errstate(all="ignore"):
        for dtype in dtypes:
            b = GraphBuilder("f")
            xs, outs = apply(b, row, var, dtype)
            g = b.build(outs)
            arrays = [a.astype(dtype) if dtype != "int32" else rng.integers(-3, 4, a.shape).astype(dtype) for a in points(row, var, rng)]
            results = compile_graph(g)(*arrays)
            for r, o in zip(results, outs):
                assert (r.dtype, r.shape) == (o.dtype, o.shape), f"{row.op} in {dtype}: got {r.dtype}{r.shape}, inferred {o.type}"
            if dtype != "int32":
                grads = compile_graph(grad_operation(g, get_all=True))(*arrays)
                assert [(a.dtype, a.shape) for a in grads] == [(a.dtype, a.shape) for a in arrays]


@pytest.mark.parametrize(("row", "var"), CASES)
def test_static_peak_covers_the_arrays_a_run_holds_at_its_end(row: Row, var: V) -> None:
    """For the op and its gradient program: peak_bytes is at least the bytes of the inputs plus the
    outputs that are not views of them, and the cost is at least one unit per step."""
    b = GraphBuilder("f")
    _, outs = apply(b, row, var, "float64")
    g = b.build(outs)
    for prog in (compile_graph(g), compile_graph(grad_operation(g, get_all=True))):
        args = points(row, var, np.random.default_rng(0))
        results = prog(*args)
        leaves = [np.asarray(r) for r in (results if isinstance(results, tuple) else (results,))]
        own = [r for r in leaves if not any(np.shares_memory(r, a) for a in args)]
        held = sum(a.nbytes for a in args) + sum(r.nbytes for r in own)
        assert prog.peak_bytes >= held, f"{row.op}: peak_bytes {prog.peak_bytes} < {held}"
        assert prog.flops >= len(prog.graph.nodes) - sum(n.op == "Const" for n in prog.graph.nodes)


def run_op(op: str, *inputs: np.ndarray, **attrs: Any) -> Any:
    """Build, compile and run one node over the given arrays (all graph inputs)."""
    b = GraphBuilder("f")
    xs = [b.input(f"x{i}", a.dtype, a.shape) for i, a in enumerate(inputs)]
    return compile_graph(b.build(b.op(op, *xs, **attrs)))(*inputs)


@pytest.mark.parametrize(
    ("spec", "index"),
    [
        (dict(begin=(1, 3, 2), end=(3, 5, 6), strides=(1, 1, 2), begin_mask=0b011, end_mask=0b110), np.s_[0:3, 0:6, 2:7:2]),
        (dict(begin=(4,), end=(0,), strides=(-2,)), np.s_[4:0:-2]),
        (dict(begin=(0,), end=(0,), strides=(-1,), begin_mask=1, end_mask=1), np.s_[::-1]),
        (dict(begin=(-3, 1), end=(-1, 10), strides=(1, 3)), np.s_[-3:-1, 1:10:3]),
        (dict(begin=(0, 2), end=(0, 3), strides=(1, 1), begin_mask=1, end_mask=1, shrink_axis_mask=2), np.s_[:, 2]),
        (dict(begin=(0, 0, -1), end=(0, 0, 0), strides=(1, 1, 1), ellipsis_mask=1, new_axis_mask=2, shrink_axis_mask=4), np.s_[..., None, -1]),
        (dict(begin=(1, 0, 2), end=(2, 0, 3), strides=(1, 1, 1), new_axis_mask=2, shrink_axis_mask=5), np.s_[1, None, 2]),
    ],
)
def test_strided_slice_matches_python_slicing(spec: dict[str, Any], index: Any) -> None:
    """StridedSlice agrees with NumPy basic indexing, including the MindSpore doc example; its
    gradient op writes the slice back into zeros."""
    x = np.arange(5 * 6 * 7 * 8, dtype=np.float32).reshape(5, 6, 7, 8)
    np.testing.assert_array_equal(run_op("StridedSlice", x, **spec), x[index])
    back = np.zeros_like(x)
    back[index] = x[index]
    np.testing.assert_array_equal(run_op("StridedSliceGrad", np.ascontiguousarray(x[index]), shape=x.shape, **spec), back)


def test_layer_norm_matches_doc_example_and_hand_formula() -> None:
    """y, mean and rstd (MindSpore >= 2.3 outputs, kept dims) against the docs and the formula."""
    x = np.array([[1, 2, 3], [1, 2, 3]], np.float32)
    ones = np.ones(3, np.float32)
    y, mean, rstd = run_op("LayerNorm", x, ones, ones)
    np.testing.assert_allclose(y, [[-0.2247448, 1.0, 2.2247448]] * 2, rtol=1e-6)
    np.testing.assert_allclose(mean, [[2.0], [2.0]])
    np.testing.assert_allclose(rstd, 1 / np.sqrt([[2 / 3 + 1e-7]] * 2), rtol=1e-6)
    rng = np.random.default_rng(1)
    x, gamma, beta = rng.standard_normal((2, 3, 4)), rng.standard_normal(4), rng.standard_normal(4)
    y, mean, rstd = run_op("LayerNorm", x, gamma, beta, begin_norm_axis=1, begin_params_axis=2, epsilon=1e-5)
    m = x.reshape(2, -1).mean(1).reshape(2, 1, 1)
    var = ((x - m) ** 2).reshape(2, -1).mean(1).reshape(2, 1, 1)
    np.testing.assert_allclose(y, (x - m) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(var + 1e-5), rtol=1e-12)


def test_gelu_uses_the_tanh_formula() -> None:
    """MindSpore's GeLU primitive doc values, from the tanh approximation, in float32."""
    y = run_op("GeLU", np.array([1.0, 2.0, 3.0], np.float32))
    np.testing.assert_allclose(y, [0.841192, 1.9545976, 2.9963627], rtol=1e-6)
    assert y.dtype == np.float32


def test_softmax_cross_entropy_matches_doc_example() -> None:
    """Loss and backprop outputs of the MindSpore doc example, and the hand formula on soft labels."""
    logits = np.array([[2, 4, 1, 4, 5], [2, 1, 2, 4, 3]], np.float32)
    labels = np.array([[0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], np.float32)
    loss, backprop = run_op("SoftmaxCrossEntropyWithLogits", logits, labels)
    np.testing.assert_allclose(loss, [0.5899297, 0.52374405], rtol=1e-6)
    np.testing.assert_allclose(
        backprop,
        [[0.02760027, 0.20393994, 0.01015357, 0.20393994, -0.44563377], [0.08015892, 0.02948882, 0.08015892, -0.4077012, 0.21789455]],
        rtol=1e-5, atol=1e-7,
    )
    rng = np.random.default_rng(2)
    z, y = rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss, backprop = run_op("SoftmaxCrossEntropyWithLogits", z, y)
    np.testing.assert_allclose(loss, -(y * np.log(p)).sum(1), rtol=1e-12)
    np.testing.assert_allclose(backprop, p - y, rtol=1e-12, atol=1e-15)


def test_softmax_family_closed_forms() -> None:
    """Softmax over one or several axes and LogSoftmax against exp/sum, stable for large inputs."""
    x = np.random.default_rng(3).standard_normal((2, 3, 4)) + 500
    e = np.exp(x - 500)
    np.testing.assert_allclose(run_op("Softmax", x), e / e.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(run_op("Softmax", x, axis=(0, 2)), e / e.sum((0, 2), keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(run_op("LogSoftmax", x, axis=1), np.log(e / e.sum(1, keepdims=True)), rtol=1e-12)


def test_indexing_ops_match_numpy() -> None:
    """Concat, Split, Tile, Gather and UnsortedSegmentSum against NumPy and a plain loop."""
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run_op("Concat", x, x[:, :1], axis=1), np.concatenate([x, x[:, :1]], 1))
    for got, want in zip(run_op("Split", x, axis=2, output_num=2), np.split(x, 2, 2)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(run_op("Tile", x, multiples=(2, 1, 3, 1)), np.tile(x, (2, 1, 3, 1)))
    idx = np.array([[2, 0], [1, 1]], np.int64)
    np.testing.assert_array_equal(run_op("Gather", x, idx, axis=-1), np.take(x, idx, axis=2))
    ids = np.array([1, -1, 1, 5, 0], np.int32)
    rows = np.arange(10.0).reshape(5, 2)
    want = np.zeros((3, 2))
    for r, i in zip(rows, ids):
        if 0 <= i < 3:
            want[i] += r
    np.testing.assert_array_equal(run_op("UnsortedSegmentSum", rows, ids, num_segments=3), want)


def test_gather_rejects_out_of_range_indices_at_run_time() -> None:
    """An index outside [0, n) is an InputError naming it, as MindSpore's CPU kernel errors."""
    with pytest.raises(InputError, match="index 3 is out of range"):
        run_op("Gather", np.zeros((3, 2)), np.array([0, 3], np.int32), axis=0)


def _splitmix64(v: int) -> int:
    """SplitMix64 as docs/wire-format.md spells it, in plain Python integers: the oracle for Dropout's masks."""
    m = (1 << 64) - 1
    z = (v + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_dropout_mask_is_the_documented_function_of_the_seeds() -> None:
    """The mask follows the wire-format guide's recipe element by element; the seed input changes it, a rerun does not."""
    x = np.ones((4, 5))

    def program() -> Any:
        """A fresh graph and program: the mask must not depend on anything held by one of them."""
        b = GraphBuilder("f")
        xi, si = b.input("x", "float64", x.shape), b.input("seed", "int64", ())
        return compile_graph(b.build(b.op("Dropout", xi, si, keep_prob=0.7, Seed0=11, Seed1=-3)))

    prog = program()
    y, m = prog(x, np.array(42))
    key = _splitmix64(_splitmix64(_splitmix64(11) ^ (-3 & ((1 << 64) - 1))) ^ 42)
    want = [float((_splitmix64((key + i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 11) < int(0.7 * (1 << 53))) for i in range(20)]
    np.testing.assert_array_equal(m.ravel(), want)
    np.testing.assert_allclose(y, x * m / 0.7, rtol=1e-15)
    np.testing.assert_array_equal(program()(x, np.array(42))[1], m)
    assert not np.array_equal(prog(x, np.array(43))[1], m)


M64 = (1 << 64) - 1


def _stream(seed0: int, seed1: int, seed: int, j: int) -> int:
    """Element j of the counter stream as docs/wire-format.md spells it, in plain Python integers."""
    key = _splitmix64(_splitmix64(_splitmix64(seed0 & M64) ^ (seed1 & M64)) ^ (seed & M64))
    return _splitmix64((key + j * 0x9E3779B97F4A7C15) & M64)


def _draw(op: str, shape: tuple[int, ...], seed: int | None, **attrs: Any) -> np.ndarray:
    """One node of ``op`` compiled and run, the seed as a graph input when given."""
    b = GraphBuilder("f")
    inputs = [b.input("seed", "int64", ())] if seed is not None else []
    prog = compile_graph(b.build(b.op(op, *inputs, shape=shape, **attrs)))
    return prog(np.array(seed)) if seed is not None else prog()


def test_random_draws_are_the_documented_functions_of_the_seeds() -> None:
    """StandardNormal, UniformReal and UniformInt follow the wire-format guide's formulas element by element (a
    pure-Python reimplementation), for every float dtype; the seed input changes the draw, a fresh program does not."""
    import math

    for dtype, p in (("float16", 11), ("float32", 24), ("float64", 53)):
        got = _draw("UniformReal", (2, 3), 42, dtype=dtype, Seed0=11, Seed1=-3)
        assert got.dtype == dtype and got.shape == (2, 3)
        want = [(_stream(11, -3, 42, i) >> (64 - p)) / 2.0**p for i in range(6)]
        np.testing.assert_array_equal(got.ravel(), np.array(want, dtype))
    normal = _draw("StandardNormal", (5,), 7, dtype="float64", Seed0=2, Seed1=9)
    want = []
    for i in range(5):
        u1 = ((_stream(2, 9, 7, 2 * i) >> 11) + 1) / 2.0**53
        u2 = (_stream(2, 9, 7, 2 * i + 1) >> 11) / 2.0**53
        want.append(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
    np.testing.assert_allclose(normal, want, rtol=1e-14, atol=1e-15)  # libm's log and cos may differ in the last bit
    np.testing.assert_array_equal(_draw("StandardNormal", (5,), 7, dtype="float32", Seed0=2, Seed1=9), normal.astype(np.float32))
    ints = _draw("UniformInt", (6,), -5, minval=-4, maxval=9, Seed0=1)
    assert ints.dtype == np.int32
    np.testing.assert_array_equal(ints, [-4 + ((_stream(1, 0, -5, i) >> 32) * 13 >> 32) for i in range(6)])
    np.testing.assert_array_equal(_draw("UniformReal", (4,), None, Seed0=5), _draw("UniformReal", (4,), 0, Seed0=5))
    assert not np.array_equal(_draw("UniformReal", (4,), 1, Seed0=5), _draw("UniformReal", (4,), 0, Seed0=5))


def test_random_draws_have_the_distributions_moments_and_ranges() -> None:
    """10^5 seeded draws (deterministic): the normal's mean within 5 standard errors of 0 and its standard deviation
    within 5 standard errors of 1 (sqrt(1/(2n)) for a normal sample); uniform draws in [0, 1) whose 20 equal bins pass
    a chi-square test (19 degrees of freedom, 43.82 is the 0.999 quantile); integer draws cover [minval, maxval)
    evenly by the same test (6 degrees of freedom, 22.46)."""
    n = 100_000
    z = _draw("StandardNormal", (n,), 3, dtype="float64", Seed0=17, Seed1=4)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * n)
    assert abs((z**4).mean() - 3) < 5 * np.sqrt(96 / n)  # the fourth moment: normal tails, not a uniform's
    u = _draw("UniformReal", (n,), 3, dtype="float64", Seed0=17, Seed1=4)
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 20).astype(int), minlength=20)
    assert (((counts - n / 20) ** 2) / (n / 20)).sum() < 43.82
    k = _draw("UniformInt", (n,), 3, minval=-2, maxval=5, Seed0=17, Seed1=4)
    assert k.min() == -2 and k.max() == 4
    counts = np.bincount(k + 2, minlength=7)
    assert (((counts - n / 7) ** 2) / (n / 7)).sum() < 22.46
    f32 = _draw("UniformReal", (n,), 1, dtype="float32", Seed0=1)
    assert f32.max() < 1  # 24 bits: exact in float32, never rounded up to 1


def test_random_draws_take_no_gradient_and_repeat_in_every_order() -> None:
    """f(x, seed) = sum(x * z) with z = StandardNormal(seed): df/dx = z (the forward's draw); the seed takes no
    gradient; the second order (of sum(x^2 z)) is 2 z, the same draw again."""
    b = GraphBuilder("f")
    x, seed = b.input("x", "float64", (3, 2)), b.input("seed", "int64", ())
    z = b.op("StandardNormal", seed, shape=(3, 2), dtype="float64", Seed0=8)
    f = b.build(b.op("ReduceSum", x * x * z))
    xv, zv = np.arange(6.0).reshape(3, 2), _draw("StandardNormal", (3, 2), 4, dtype="float64", Seed0=8)
    gx, gseed = compile_graph(grad_operation(f, get_all=True))(xv, np.array(4))
    np.testing.assert_allclose(gx, 2 * xv * zv, rtol=1e-15)
    np.testing.assert_array_equal(gseed, 0)
    s1 = lift(f, 1, 1)
    u = np.ones((3, 2))
    (hx, *_) = compile_graph(grad_operation(s1, get_all=True))(xv, np.array(4), u)
    np.testing.assert_allclose(hx, 2 * zv * u, rtol=1e-15)


@pytest.mark.parametrize(
    ("op", "attrs", "error", "fragment"),
    [("StandardNormal", {"shape": (2, -1)}, ShapeError, "shape (2, -1) has the negative dimension -1"),
     ("UniformReal", {"shape": (2,), "dtype": "int32"}, DTypeError, "dtype must be a float dtype, got int32"),
     ("UniformReal", {"shape": (1 << 40, 1 << 40)}, ShapeError, "exceeds the int64 range"),
     ("UniformInt", {"shape": (2,), "minval": 3, "maxval": 3}, GraphError, "minval 3 must be less than maxval 3"),
     ("UniformInt", {"shape": (2,), "minval": 0, "maxval": 1 << 40}, GraphError, "must be int32 values")],
)
def test_random_draws_check_their_attributes_before_allocating(op: str, attrs: dict[str, Any], error: type[Exception],
                                                                fragment: str) -> None:
    b = GraphBuilder("f")
    with pytest.raises(error, match=re.escape(fragment)) as info:
        b.op(op, **attrs)
    assert type(info.value) is error


def test_dropout_uses_one_mask_in_the_forward_pass_and_every_order() -> None:
    """For f(x) = sum(dropout(x)^3): f' = 3 y^2 m / p, f'' = 6 y m^2 / p^2 along u, and third order 6 m^3 / p^3 (u w),
    all with the forward pass's mask m."""
    rng = np.random.default_rng(9)
    x, u, w = rng.standard_normal((3, 7)), rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    p = 0.6
    b = GraphBuilder("s0")
    xi = b.input("x0", "float64", x.shape)
    y, mask = b.op("Dropout", xi, keep_prob=p, Seed0=4)
    s0 = b.build(b.op("ReduceSum", y * y * y))
    bm = GraphBuilder("m")
    m = compile_graph(bm.build(bm.op("Dropout", bm.input("x0", "float64", x.shape), keep_prob=p, Seed0=4)[1]))(x)
    assert 0 < m.sum() < m.size
    yv = x * m / p
    np.testing.assert_allclose(compile_graph(grad_operation(s0, get_all=True))(x)[0], 3 * yv**2 * m / p, rtol=1e-12)
    s1 = lift(s0, 1, 1)
    np.testing.assert_allclose(compile_graph(grad_operation(s1, get_all=True))(x, u)[0], 6 * yv * m * m / p**2 * u, rtol=1e-12)
    s2 = lift(s1, 1, 2)
    np.testing.assert_allclose(compile_graph(grad_operation(s2, get_all=True))(x, u, w)[0], 6 * m**3 / p**3 * u * w, rtol=1e-12)


def test_documented_conv2d_node_has_the_documented_output_shape() -> None:
    """The Conv2D node of docs/wire-format.md decodes and infers the output shape the guide states."""
    from pathlib import Path

    from google.protobuf import text_format

    from gradserve.proto import codec
    from gradserve.v1 import graph_pb2

    text = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
    block = text.split("in the text format of a `gradserve.v1.Node`:\n\n```text\n", 1)[1].split("```", 1)[0]
    g = graph_pb2.Graph()
    g.inputs.add(name="x", dtype=graph_pb2.DATA_TYPE_FLOAT32, shape=[8, 3, 32, 32])
    g.inputs.add(name="w", dtype=graph_pb2.DATA_TYPE_FLOAT32, shape=[16, 3, 3, 3])
    text_format.Parse(block, g.nodes.add())
    g.outputs.value = "y"
    graph = codec.decode_graph(g)
    assert graph.nodes[-1].outputs[0].shape == (8, 16, 16, 16)


def test_cumsum_over_an_empty_axis_is_empty() -> None:
    """An exclusive or reversed scan over an axis of length 0 returns the empty tensor (no IndexError)."""
    for flags in ({"exclusive": True}, {"reverse": True}, {"exclusive": True, "reverse": True}):
        assert run_op("CumSum", np.zeros((0, 2)), axis=0, **flags).shape == (0, 2)
    np.testing.assert_array_equal(run_op("CumSum", np.arange(6.0).reshape(2, 3), axis=1, exclusive=True, reverse=True), [[3, 2, 0], [9, 5, 0]])
