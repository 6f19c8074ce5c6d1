"""Debugging and ordering ops: Print writes its strings and tensors when the graph runs; Depend keeps work alive.

Print passes its tensor inputs through unchanged (one output per input, gradient passed straight back), so a
client keeps it alive and in order by using its outputs in place of the printed values. Depend returns its first
input and takes the rest only so that they (a Print, say) run before its output is used and are never pruned.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

from gradserve.engine.errors import GraphError
from gradserve.engine.ir import TensorType
from gradserve.engine.optable import Attr, defop

sink: Callable[[str], None] = lambda text: print(text, file=sys.stdout, flush=True)  # noqa: E731
"""Where Print's text goes: standard output (a server's worker inherits the server's); a host may replace it."""


def _dtype_name(dt: np.dtype) -> str:
    """MindSpore's spelling of a dtype: Float32, Int64, UInt8, Bool."""
    name = dt.name.capitalize()
    return "UInt" + name[4:] if name.startswith("Uint") else name


def show(a: np.ndarray) -> str:
    """A tensor as MindSpore's Print shows it: ``Tensor(shape=[2], dtype=Float32, value= [1, 2])``."""
    head = f"Tensor(shape={list(a.shape)}, dtype={_dtype_name(a.dtype)}, value="
    if a.ndim == 0:
        return f"{head} {a.item()})"
    body = np.array2string(a, separator=", ", threshold=1000)
    return f"{head}\n{body})" if a.ndim > 1 else f"{head} {body})"


def _layout(n_tensors: int, strings: tuple[str, ...], slots: tuple[int, ...]) -> list[int | str]:
    """The printed sequence: each string at its slot, the tensors (by input index) in the other places, in order."""
    if len(slots) != len(strings):
        raise GraphError(f"slots {slots} must give one position per string ({len(strings)} strings)")
    total = n_tensors + len(strings)
    if sorted(slots) != sorted(set(slots)) or any(not 0 <= s < total for s in slots):
        raise GraphError(f"slots {slots} must be distinct positions in [0, {total})")
    at = dict(zip(slots, strings))
    tensors = iter(range(n_tensors))
    return [at[i] if i in at else next(tensors) for i in range(total)]


def _infer(types: list[TensorType], strings: tuple[str, ...], slots: tuple[int, ...]) -> tuple[TensorType, ...]:
    """One output per input, of the same type; the layout must place every string."""
    if not types:
        raise GraphError("Print needs at least one tensor input to attach to")
    _layout(len(types), strings, slots)
    return tuple(types)


def _forward(*xs: np.ndarray, strings: tuple[str, ...], slots: tuple[int, ...]) -> Any:
    """Write the strings and tensors, one per line, then pass the tensors through."""
    sink("\n".join(item if isinstance(item, str) else show(xs[item]) for item in _layout(len(xs), strings, slots)))
    return xs if len(xs) > 1 else xs[0]


defop(
    "Print",
    ("xs*",),
    _infer,
    _forward,
    lambda g, out, *xs, **attrs: g,
    attrs={
        "strings": Attr("strs", (), "the strings printed between the tensors"),
        "slots": Attr("ints", (), "the position of each string in the printed sequence"),
    },
    doc="prints its strings and tensors (one per line) when it runs and returns the tensors unchanged",
    outputs=("ys*",),
    memory="maybe_view",
    public=False,
    onnx=lambda c: [("Identity", (x,), (y,)) for x, y in zip(c.x, c.y)],  # ONNX has no printing: the tensors pass through
)


defop(
    "Depend",
    ("x", "deps*"),
    lambda types: types[0],
    lambda x, *deps: x,
    lambda g, out, x, *deps: (g,) + (None,) * len(deps),
    doc="returns x unchanged; its other inputs are computed first and kept in the graph (MindSpore's Depend)",
    memory="maybe_view",
    onnx=lambda c: [("Identity", c.x[:1], c.y)],
)
