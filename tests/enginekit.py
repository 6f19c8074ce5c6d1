"""Shared by the engine's tests: inputs drawn once, a two-input network with parameters, and one run of a graph."""
from __future__ import annotations

import tracemalloc
from typing import Any, Sequence

import numpy as np

from gradserve.engine import GraphBuilder, compile_graph

RNG = np.random.default_rng(7)
A = RNG.standard_normal((2, 3))
B = RNG.standard_normal((2, 3))
W = RNG.standard_normal((3,))
C = np.zeros(4)


def two_input_net(tuple_out: bool = False):  # type: ignore[no-untyped-def]
    """f(a, b) = a * b * w (and a second output sin(a) when ``tuple_out``), with an unused input c."""
    g = GraphBuilder("f")
    a, b = g.input("a", "float64", (2, 3)), g.input("b", "float64", (2, 3))
    g.input("c", "float64", (4,))
    w = g.param("w", W)
    g.param("unused", np.ones(2))
    out = a * b * w
    return g.build((out, g.op("Sin", a)) if tuple_out else out)


def run(graph, *args, **kw):  # type: ignore[no-untyped-def]
    return compile_graph(graph)(*args, **kw)



def measured_peak(program: Any, args: Sequence[np.ndarray]) -> tuple[int, Any]:
    """The bytes a run of ``program`` on ``args`` allocates at its peak beyond what was live before (tracemalloc),
    and the run's result."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = program(*args)
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()
