"""Dropout with a counter-based mask: a pure function of the seeds, the element's index and keep_prob.

A graph's gradient graphs copy its forward nodes, so each copy of a Dropout node recomputes its mask;
because the mask depends on nothing but (Seed0, Seed1, the optional seed input, the index), the forward
pass and every order of gradient see the same mask, and a run repeats exactly for the same seeds, in
any process and on any server. The generator is SplitMix64, spelled out in docs/wire-format.md so
that other languages can reproduce a mask.
"""
from __future__ import annotations

import numpy as np

from gradserve.engine.errors import DTypeError, GraphError, ShapeError
from gradserve.engine.ir import TensorType, Value
from gradserve.engine.optable import Attr, F, OnnxCall, defop, require_float

from .common import INDEX_DTYPES
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


def keep_mask(key: int, size: int, keep_prob: float) -> np.ndarray:
    """Element i is kept when the top 53 bits of SplitMix64(key + i * golden), as a fraction of 2^53, are below keep_prob."""
    z = np.arange(size, dtype=np.uint64)
    z *= np.uint64(_GOLDEN)
    z += np.uint64((key + _GOLDEN) & _M64)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    z >>= np.uint64(11)
    return z < np.uint64(int(keep_prob * (1 << 53)))


def _infer(types: list[TensorType], keep_prob: float, Seed0: int, Seed1: int) -> tuple[TensorType, TensorType]:
    """Float x and at most one int scalar seed; output and mask have x's type."""
    x = types[0]
    require_float(x, "x")
    if not 0 < keep_prob <= 1:
        raise GraphError(f"keep_prob must be in (0, 1], got {keep_prob}")
    if len(types) > 2:
        raise GraphError(f"takes x and at most one seed input, got {len(types)} inputs")
    if len(types) == 2:
        if types[1].dtype not in INDEX_DTYPES:
            raise DTypeError(f"seed must be int32 or int64, got {types[1].dtype.name}")
        if types[1].shape:
            raise ShapeError(f"seed must be a scalar, got shape {types[1].shape}")
    return x, x


def _forward(x: np.ndarray, *seed: np.ndarray, keep_prob: float, Seed0: int, Seed1: int) -> tuple[np.ndarray, np.ndarray]:
    """x * mask / keep_prob and the 0/1 mask in x's dtype."""
    key = dropout_key(Seed0, Seed1, int(seed[0]) if seed else 0)
    mask = keep_mask(key, x.size, keep_prob).reshape(x.shape).astype(x.dtype)
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


def _onnx(c: OnnxCall) -> list[Spec]:
    """The mask as a constant when it depends on the attributes alone; with a seed input, SplitMix64 in uint64 ONNX
    arithmetic (the key from the seed, then one value per element index). Then x * mask / keep_prob."""
    xt, t = c.types[0], c.tmp
    keep_prob, seed0, seed1 = c.attrs["keep_prob"], c.attrs["Seed0"], c.attrs["Seed1"]
    if len(c.x) == 1:
        mask = keep_mask(dropout_key(seed0, seed1, 0), xt.size, keep_prob).reshape(xt.shape).astype(xt.dtype)
        specs: list[Spec] = [("Constant", (), (c.y[1],), {"value": mask})]
    else:
        folded = _splitmix(_splitmix(seed0 & _M64) ^ (seed1 & _M64))
        index = np.asarray(0, np.int64), np.asarray(xt.size, np.int64), np.asarray(1, np.int64)
        specs = [
            ("Range", index, (t("i64"),)), ("Cast", (t("i64"),), (t("i"),), {"to": _U64}), ("Mul", (t("i"), _u64(_GOLDEN)), (t("steps"),)),
            ("Cast", (c.x[1],), (t("seed64"),), {"to": np.dtype(np.int64)}), ("Cast", (t("seed64"),), (t("seed"),), {"to": _U64}),
            ("BitwiseXor", (t("seed"), _u64(folded)), (t("v"),)), ("Add", (t("v"), _u64(_GOLDEN)), (t("v1"),)),
            *_mix_onnx(c, t("v1"), t("key"), "key"),
            ("Add", (t("key"), _u64(_GOLDEN)), (t("start"),)), ("Add", (t("steps"), t("start")), (t("z"),)),
            *_mix_onnx(c, t("z"), t("bits"), "z"),
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
