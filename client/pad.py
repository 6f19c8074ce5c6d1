"""``ops.pad``, below ``functional``: nn's padding layers use it without importing ``functional``, whose imports
of ``nn.loss`` and ``nn.initializer`` run ``nn``'s ``__init__`` (and so those layers) first."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import dtype as mstype
from .dispatch import apply_op
from .tensor import Tensor

PAD_MODES = {"constant": "", "reflect": "reflect", "replicate": "edge", "circular": "circular"}
"""``ops.pad``'s modes, and the PadV3 mode of each but 'constant' (the Pad op)."""


def pad(input_x: Any, padding: Any, mode: str = "constant", value: Any = None) -> Any:
    """``ops.pad(input_x, padding, mode='constant', value=None)``: ``padding`` pairs (before, after) from the last axis
    backwards, ``(left, right, top, bottom, ...)``. 'constant': the Pad op (zeros), plus ``value`` on the padded border;
    a negative amount crops. 'reflect' (mirrored without the edge, each amount below its axis's length), 'replicate'
    (the edge repeated) and 'circular' (wrapped around): the PadV3 op, non-negative amounts, no ``value``."""
    if not isinstance(input_x, Tensor):
        raise TypeError(f"ops.pad: input_x must be a Tensor, got {type(input_x).__name__}")
    x = input_x
    if isinstance(padding, Tensor):
        padding = padding._concrete("ops.pad's padding").tolist()
    if not isinstance(padding, (tuple, list)) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in padding):
        raise TypeError(f"ops.pad: padding must be a tuple or list of ints, got {padding!r}")
    nd = len(x.shape)
    if len(padding) % 2 or len(padding) // 2 > nd:
        raise ValueError(f"ops.pad: padding needs an even length of at most 2 * rank = {2 * nd}, got {len(padding)}")
    if mode not in PAD_MODES:
        raise ValueError(f"ops.pad: mode must be one of {tuple(PAD_MODES)}, got {mode!r}")
    pairs = [(0, 0)] * nd
    for i in range(len(padding) // 2):
        pairs[nd - 1 - i] = (int(padding[2 * i]), int(padding[2 * i + 1]))
    if mode != "constant":
        if value is not None:
            raise ValueError(f"ops.pad: value is for mode='constant' only, got value={value!r} with mode={mode!r}")
        if any(int(v) < 0 for v in padding):
            raise ValueError(f"ops.pad: mode={mode!r} takes non-negative padding, got {tuple(padding)}")
        return apply_op("PadV3", x, paddings=tuple(v for p in pairs for v in p), mode=PAD_MODES[mode])
    crop = tuple(slice(max(-b, 0), n - max(-a, 0)) for n, (b, a) in zip(x.shape, pairs))
    if any(c.start or c.stop != n for c, n in zip(crop, x.shape)):
        if any(c.stop < c.start for c in crop):
            raise ValueError(f"ops.pad: padding {tuple(padding)} crops more than the shape {x.shape} holds")
        x = x[crop]
    grow = [(max(b, 0), max(a, 0)) for b, a in pairs]
    out = apply_op("Pad", x, paddings=tuple(v for p in grow for v in p))
    if value is None or value == 0:
        return out
    border = np.pad(np.zeros(x.shape, mstype.to_numpy(x.dtype)), grow, constant_values=1)
    return out + Tensor._wrap(border * np.asarray(value, border.dtype))
