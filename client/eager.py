"""PyNative-style execution: one op on concrete arrays, through a small compiled program cached per signature."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from gradserve.engine import GraphBuilder, Program, compile_graph


def run(op: str, arrays: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
    """The outputs of ``op[attrs](*arrays)``, checked by the engine exactly as in a graph."""
    types = tuple((a.dtype, a.shape) for a in arrays)
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))
    out = _program(op, types, key)(*arrays)
    return list(out) if isinstance(out, tuple) else [out]


@functools.lru_cache(maxsize=512)
def _program(op: str, types: tuple[tuple[np.dtype, tuple[int, ...]], ...], attrs: tuple[tuple[str, Any], ...]) -> Program:
    b = GraphBuilder(f"eager_{op}")
    ins = [b.input(f"x{i}", dt, shape) for i, (dt, shape) in enumerate(types)]
    outs = b.add_node(op, ins, dict(attrs))
    return compile_graph(b.build(outs[0] if len(outs) == 1 else tuple(outs)))
