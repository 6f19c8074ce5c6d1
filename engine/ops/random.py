"""Counter-based randomness: Dropout's mask and the draws StandardNormal, UniformReal and UniformInt, each a pure
function of the seeds (Seed0, Seed1, the optional int seed input) and the element's index.

A graph's gradient graphs copy its forward nodes, so each copy of such a node recomputes its values;
because they depend on nothing but (Seed0, Seed1, the optional seed input, the index), the forward
pass and every order of gradient see the same values, and a run repeats exactly for the same seeds, in
any process and on any server. The generator is SplitMix64 over a counter, spelled out in
docs/wire-format.md (with the transforms to uniform, integer and normal draws) so that other languages can
reproduce a draw. The draws are constants with respect to every input: their VJP is None for the seed.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gradserve.engine.errors import DTypeError, GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, defop, require_float

from .common import INDEX_DTYPES, zero_grad
from .onnx_rules import Spec, reshape

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _splitmix(v: int) -> int:
    """SplitMix64 of one Python int (mod 2^64): the key schedule."""
    z = (v + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def dropout_key(seed0: int, seed1: int, seed: int) -> int:
    """The stream key: SplitMix64 folded over Seed0, Seed1 and the seed input (0 when absent), each taken mod 2^64."""
    return _splitmix(_splitmix(_splitmix(seed0 & _M64) ^ (seed1 & _M64)) ^ (seed & _M64))


def _key(seed: tuple[np.ndarray, ...], Seed0: int, Seed1: int) -> int:
    """The stream key of a node from its seeds and its optional seed input's value."""
    return dropout_key(Seed0, Seed1, int(seed[0]) if seed else 0)


def stream(key: int, size: int) -> np.ndarray:
    """The counter stream: element j is SplitMix64(key + j * golden), as uint64."""
    z = np.arange(size, dtype=np.uint64)
    z *= np.uint64(_GOLDEN)
    z += np.uint64((key + _GOLDEN) & _M64)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    return z


def keep_mask(key: int, size: int, keep_prob: float) -> np.ndarray:
    """Element i is kept when the top 53 bits of SplitMix64(key + i * golden), as a fraction of 2^53, are below keep_prob."""
    return stream(key, size) >> np.uint64(11) < np.uint64(int(keep_prob * (1 << 53)))


def _check_seed(types: list[TensorType], first: int) -> None:
    """At most one input from position ``first`` on: the int32 or int64 scalar seed."""
    if len(types) > first + 1:
        raise GraphError(f"takes {'x and ' if first else ''}at most one seed input, got {len(types)} inputs")
    if len(types) == first + 1:
        if types[first].dtype not in INDEX_DTYPES:
            raise DTypeError(f"seed must be int32 or int64, got {types[first].dtype.name}")
        if types[first].shape:
            raise ShapeError(f"seed must be a scalar, got shape {types[first].shape}")


def _infer(types: list[TensorType], keep_prob: float, Seed0: int, Seed1: int) -> tuple[TensorType, TensorType]:
    """Float x and at most one int scalar seed; output and mask have x's type."""
    x = types[0]
    require_float(x, "x")
    if not 0 < keep_prob <= 1:
        raise GraphError(f"keep_prob must be in (0, 1], got {keep_prob}")
    _check_seed(types, 1)
    return x, x


def _forward(x: np.ndarray, *seed: np.ndarray, keep_prob: float, Seed0: int, Seed1: int) -> tuple[np.ndarray, np.ndarray]:
    """x * mask / keep_prob and the 0/1 mask in x's dtype."""
    mask = keep_mask(_key(seed, Seed0, Seed1), x.size, keep_prob).reshape(x.shape).astype(x.dtype)
    return x * mask / np.asarray(keep_prob, x.dtype), mask


def _vjp(g: tuple[Value | None, Value | None], out: tuple[Value, Value], x: Value, *seed: Value, keep_prob: float, Seed0: int,
         Seed1: int) -> tuple[Value | None, ...]:
    """g * mask / keep_prob through the node's own mask output; the mask and the seed take no gradient."""
    d_x = g[0] * out[1] / keep_prob if g[0] is not None else F.ZerosLike(x)
    return (d_x,) + (None,) * len(seed)


_U64 = np.dtype(np.uint64)


def _u64(v: int) -> np.ndarray:
    """A uint64 scalar constant (v mod 2^64)."""
    return np.asarray(v & _M64, _U64)


def _mix_onnx(c: OnnxCall, z: str, out: str, tag: str) -> list[Spec]:
    """SplitMix64's finalizer on uint64 values in ONNX arithmetic (unsigned, so products wrap mod 2^64 as here)."""
    t = c.tmp
    specs: list[Spec] = []
    for k, (shift, factor) in enumerate(((30, _MIX1), (27, _MIX2), (31, None))):
        shifted, mixed = t(f"{tag}/s{k}"), out if factor is None else t(f"{tag}/x{k}")
        specs += [("BitShift", (z, _u64(shift)), (shifted,), {"direction": "RIGHT"}), ("BitwiseXor", (z, shifted), (mixed,))]
        if factor is not None:
            specs.append(("Mul", (mixed, _u64(factor)), (t(f"{tag}/m{k}"),)))
            z = t(f"{tag}/m{k}")
    return specs


def _stream_onnx(c: OnnxCall, seed: str, size: int, out: str) -> list[Spec]:
    """The counter stream of ``size`` elements as uint64 ONNX arithmetic: the key from the node's seeds and the int
    ``seed`` input, then SplitMix64(key + j * golden) for each j (unsigned, so products wrap mod 2^64 as here)."""
    t = c.tmp
    folded = _splitmix(_splitmix(c.attrs["Seed0"] & _M64) ^ (c.attrs["Seed1"] & _M64))
    index = np.asarray(0, np.int64), np.asarray(size, np.int64), np.asarray(1, np.int64)
    return [
        ("Range", index, (t("i64"),)), ("Cast", (t("i64"),), (t("i"),), {"to": _U64}), ("Mul", (t("i"), _u64(_GOLDEN)), (t("steps"),)),
        ("Cast", (seed,), (t("seed64"),), {"to": np.dtype(np.int64)}), ("Cast", (t("seed64"),), (t("seed"),), {"to": _U64}),
        ("BitwiseXor", (t("seed"), _u64(folded)), (t("v"),)), ("Add", (t("v"), _u64(_GOLDEN)), (t("v1"),)),
        *_mix_onnx(c, t("v1"), t("key"), "key"),
        ("Add", (t("key"), _u64(_GOLDEN)), (t("start"),)), ("Add", (t("steps"), t("start")), (t("z"),)),
        *_mix_onnx(c, t("z"), out, "z"),
    ]


def _onnx(c: OnnxCall) -> list[Spec]:
    """The mask as a constant when it depends on the attributes alone; with a seed input, SplitMix64 in uint64 ONNX
    arithmetic (the key from the seed, then one value per element index). Then x * mask / keep_prob."""
    xt, t = c.types[0], c.tmp
    keep_prob, seed0, seed1 = c.attrs["keep_prob"], c.attrs["Seed0"], c.attrs["Seed1"]
    if len(c.x) == 1:
        mask = keep_mask(dropout_key(seed0, seed1, 0), xt.size, keep_prob).reshape(xt.shape).astype(xt.dtype)
        specs: list[Spec] = [("Constant", (), (c.y[1],), {"value": mask})]
    else:
        specs = [
            *_stream_onnx(c, c.x[1], xt.size, t("bits")),
            ("BitShift", (t("bits"), _u64(11)), (t("top"),), {"direction": "RIGHT"}),
            ("Less", (t("top"), _u64(int(keep_prob * (1 << 53)))), (t("keep"),)),
            ("Cast", (t("keep"),), (t("flat"),), {"to": xt.dtype}), reshape(t("flat"), xt.shape, c.y[1]),
        ]
    return [*specs, ("Mul", (c.x[0], c.y[1]), (t("kept"),)), ("Div", (t("kept"), np.asarray(keep_prob, xt.dtype)), (c.y[0],))]


defop(
    "Dropout",
    ("x", "seed*"),
    _infer,
    _forward,
    _vjp,
    attrs={
        "keep_prob": Attr("float", 0.5, "probability of keeping an element, in (0, 1]"),
        "Seed0": Attr("int", 0, "first seed; with Seed1 (and the seed input) it fixes the mask"),
        "Seed1": Attr("int", 0, "second seed"),
    },
    nondiff=("seed",),
    doc="output = x * mask / keep_prob and the 0/1 mask (x's dtype); the mask is a pure function of Seed0, Seed1, the optional "
    "int scalar seed input (a value per call, e.g. the training step, without changing the graph) and the element index",
    outputs=("output", "mask"),
    scratch=8,
    onnx=_onnx,
)


_BITS = {"float16": 11, "float32": 24, "float64": 53}
"""Bits of a stream value a uniform float draw keeps: the dtype's significand, so the fraction is exact in it and below 1."""
_TWO_PI = 2 * np.pi


def uniform_real(key: int, size: int, dtype: np.dtype) -> np.ndarray:
    """Element i: the top p bits of stream element i over 2^p (p the dtype's significand bits): exact, in [0, 1)."""
    p = _BITS[dtype.name]
    return ((stream(key, size) >> np.uint64(64 - p)).astype(np.float64) * 2.0**-p).astype(dtype)


def standard_normal(key: int, size: int, dtype: np.dtype) -> np.ndarray:
    """Box-Muller in float64 on stream elements 2i and 2i+1: u1 = (top53 + 1) / 2^53 in (0, 1], u2 = top53 / 2^53 in
    [0, 1), element i = sqrt(-2 ln u1) cos(2 pi u2), rounded to the dtype."""
    s = stream(key, 2 * size) >> np.uint64(11)
    u1 = (s[0::2].astype(np.float64) + 1.0) * 2.0**-53
    u2 = s[1::2].astype(np.float64) * 2.0**-53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)).astype(dtype)


def uniform_int(key: int, size: int, minval: int, maxval: int) -> np.ndarray:
    """Element i: minval + ((top 32 bits of stream element i) * (maxval - minval)) >> 32, as int32 (exact in uint64)."""
    span = np.uint64(maxval - minval)
    return (((stream(key, size) >> np.uint64(32)) * span >> np.uint64(32)).astype(np.int64) + minval).astype(np.int32)


def _draw_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape attribute: non-negative dimensions (its size is checked against the element limits with every output)."""
    bad = [d for d in shape if d < 0]
    if bad:
        raise ShapeError(f"shape {shape} has the negative dimension {bad[0]}")
    return tuple(shape)


def _float_infer(types: list[TensorType], shape: tuple[int, ...], dtype: np.dtype, Seed0: int, Seed1: int) -> TensorType:
    """A float dtype, a non-negative shape and at most one int scalar seed input."""
    _check_seed(types, 0)
    if dtype.kind != "f":
        raise DTypeError(f"dtype must be a float dtype, got {dtype.name}")
    return TensorType(dtype, _draw_shape(shape))


def _int_infer(types: list[TensorType], shape: tuple[int, ...], minval: int, maxval: int, Seed0: int, Seed1: int) -> TensorType:
    """int32 draws in [minval, maxval): minval < maxval, both int32."""
    _check_seed(types, 0)
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    if not (lo <= minval <= hi and lo <= maxval <= hi):
        raise GraphError(f"minval {minval} and maxval {maxval} must be int32 values")
    if minval >= maxval:
        raise GraphError(f"minval {minval} must be less than maxval {maxval}")
    return TensorType(np.dtype(np.int32), _draw_shape(shape))


def _uniform_forward(*seed: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, Seed0: int, Seed1: int) -> np.ndarray:
    """UniformReal's values for its seeds, in ``shape``."""
    return uniform_real(_key(seed, Seed0, Seed1), int(np.prod(shape)), dtype).reshape(shape)


def _normal_forward(*seed: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, Seed0: int, Seed1: int) -> np.ndarray:
    """StandardNormal's values for its seeds, in ``shape``."""
    return standard_normal(_key(seed, Seed0, Seed1), int(np.prod(shape)), dtype).reshape(shape)


def _int_forward(*seed: np.ndarray, shape: tuple[int, ...], minval: int, maxval: int, Seed0: int, Seed1: int) -> np.ndarray:
    """UniformInt's values for its seeds, in ``shape``."""
    return uniform_int(_key(seed, Seed0, Seed1), int(np.prod(shape)), minval, maxval).reshape(shape)


def _draw_onnx(forward: Any, tail: Any, per_element: int = 1) -> Any:
    """An export rule for a draw: a constant when the attributes alone fix it; with a seed input the stream
    (``per_element`` values per element) in uint64 ONNX arithmetic (``_stream_onnx``), then ``tail(c, bits, size)``'s
    nodes turning it into the values, reshaped."""

    def rule(c: OnnxCall) -> list[Spec]:
        """The draw's nodes."""
        out = c.out_types[0]
        if not c.x:
            return [("Constant", (), c.y, {"value": np.asarray(forward(**c.attrs))})]
        specs, flat = tail(c, c.tmp("bits"), out.size)
        return [*_stream_onnx(c, c.x[0], per_element * out.size, c.tmp("bits")), *specs, reshape(flat, out.shape, c.y[0])]

    return rule


def _tail_names(c: OnnxCall) -> Any:
    """Temporary names for a draw's transform, apart from the stream's."""
    return lambda label: c.tmp(f"draw/{label}")


def _uniform_tail(c: OnnxCall, bits: str, size: int) -> tuple[list[Spec], str]:
    """Top p bits, as double, times 2^-p, cast to the dtype."""
    dtype, p = c.out_types[0].dtype, _BITS[c.out_types[0].dtype.name]
    t = _tail_names(c)
    return [("BitShift", (bits, _u64(64 - p)), (t("top"),), {"direction": "RIGHT"}),
            ("Cast", (t("top"),), (t("d"),), {"to": np.dtype(np.float64)}), ("Mul", (t("d"), np.asarray(2.0**-p)), (t("u"),)),
            ("Cast", (t("u"),), (t("flat"),), {"to": dtype})], t("flat")


def _normal_tail(c: OnnxCall, bits: str, size: int) -> tuple[list[Spec], str]:
    """Box-Muller in double on the even and odd stream elements, cast to the dtype."""
    t, dtype = _tail_names(c), c.out_types[0].dtype
    return [("BitShift", (bits, _u64(11)), (t("top"),), {"direction": "RIGHT"}),
            ("Cast", (t("top"),), (t("d"),), {"to": np.dtype(np.float64)}), reshape(t("d"), (size, 2), t("pairs")),
            ("Split", (t("pairs"), np.asarray([1, 1], np.int64)), (t("a"), t("b")), {"axis": 1}),
            ("Add", (t("a"), np.asarray(1.0)), (t("a1"),)), ("Mul", (t("a1"), np.asarray(2.0**-53)), (t("u1"),)),
            ("Mul", (t("b"), np.asarray(_TWO_PI * 2.0**-53)), (t("angle"),)),
            ("Log", (t("u1"),), (t("log"),)), ("Mul", (t("log"), np.asarray(-2.0)), (t("r2"),)), ("Sqrt", (t("r2"),), (t("r"),)),
            ("Cos", (t("angle"),), (t("cos"),)), ("Mul", (t("r"), t("cos")), (t("n"),)),
            ("Cast", (t("n"),), (t("flat"),), {"to": dtype})], t("flat")


def _int_tail(c: OnnxCall, bits: str, size: int) -> tuple[list[Spec], str]:
    """(top 32 bits * span) >> 32 in uint64, plus minval, as int32."""
    t, lo, hi = _tail_names(c), c.attrs["minval"], c.attrs["maxval"]
    return [("BitShift", (bits, _u64(32)), (t("top"),), {"direction": "RIGHT"}), ("Mul", (t("top"), _u64(hi - lo)), (t("scaled"),)),
            ("BitShift", (t("scaled"), _u64(32)), (t("off"),), {"direction": "RIGHT"}),
            ("Cast", (t("off"),), (t("off64"),), {"to": np.dtype(np.int64)}), ("Add", (t("off64"), np.asarray(lo, np.int64)), (t("v"),)),
            ("Cast", (t("v"),), (t("flat"),), {"to": np.dtype(np.int32)})], t("flat")


def _draw_cost(inputs: Sequence[TensorType], outputs: Sequence[TensorType], attrs: dict[str, Any]) -> int:
    """About 16 element operations per stream value (SplitMix64's multiplies, shifts and the transform)."""
    return 16 * outputs[0].size + 1


def _draw_scratch(values: int) -> Any:
    """Temporaries of ``values`` 8-byte arrays of the output's element count (the uint64 stream, float64 steps)."""
    return lambda inputs, outputs, attrs: values * 8 * outputs[0].size


_SEEDS = {
    "Seed0": Attr("int", 0, "first seed; with Seed1 (and the seed input) it fixes the values"),
    "Seed1": Attr("int", 0, "second seed"),
}
_NO_GRADIENT = ("; a constant with respect to every input (no gradient: the seed's VJP is None), the same in the forward pass and "
                "every gradient graph, a new draw for each seed input value")

defop(
    "StandardNormal",
    ("seed*",),
    _float_infer,
    _normal_forward,
    zero_grad,
    attrs={"shape": Attr("ints", doc="the output's shape"), "dtype": Attr("dtype", np.dtype(np.float32), "a float dtype"), **_SEEDS},
    nondiff=("seed",),
    doc="draws from N(0, 1) by Box-Muller on the SplitMix64 counter stream of (Seed0, Seed1, the optional int scalar seed "
    "input), two stream values per element" + _NO_GRADIENT,
    cost=_draw_cost,
    scratch_bytes=_draw_scratch(6),
    public=False,
    onnx=_draw_onnx(_normal_forward, _normal_tail, per_element=2),
)
defop(
    "UniformReal",
    ("seed*",),
    _float_infer,
    _uniform_forward,
    zero_grad,
    attrs={"shape": Attr("ints", doc="the output's shape"), "dtype": Attr("dtype", np.dtype(np.float32), "a float dtype"), **_SEEDS},
    nondiff=("seed",),
    doc="draws from U[0, 1): the top p bits of each SplitMix64 counter stream value over 2^p, p the dtype's significand "
    "bits (11, 24, 53)" + _NO_GRADIENT,
    cost=_draw_cost,
    scratch_bytes=_draw_scratch(3),
    public=False,
    onnx=_draw_onnx(_uniform_forward, _uniform_tail),
)
defop(
    "UniformInt",
    ("seed*",),
    _int_infer,
    _int_forward,
    zero_grad,
    attrs={"shape": Attr("ints", doc="the output's shape"), "minval": Attr("int", doc="the least value drawn (int32)"),
           "maxval": Attr("int", doc="one past the largest value drawn (int32), above minval"), **_SEEDS},
    nondiff=("seed",),
    doc="int32 draws from [minval, maxval): minval + ((top 32 bits of each SplitMix64 counter stream value) * (maxval - "
    "minval)) >> 32" + _NO_GRADIENT,
    cost=_draw_cost,
    scratch_bytes=_draw_scratch(3),
    public=False,
    onnx=_draw_onnx(_int_forward, _int_tail),
)
