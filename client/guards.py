"""Python control flow on Tensor values: a builder that also computes each value it adds (so Python code in a
trace can read it), and the guards that say when a traced graph is still the path Python would take."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gradserve.engine import Graph, GraphBuilder, Program, Value, compile_graph, get_op

from . import eager


class ValueBuilder(GraphBuilder):
    """A GraphBuilder that runs every node as it is added, keeping each value's array (``arrays[id(value)]``)."""

    def __init__(self, name: str, library: dict[str, Graph]) -> None:
        super().__init__(name, library)
        self.arrays: dict[int, np.ndarray] = {}

    def param(self, name: str, data: Any, requires_grad: bool = True) -> Value:
        """Declare a parameter; its value is its data."""
        v = super().param(name, data, requires_grad)
        self.arrays[id(v)] = self.params[-1].data
        return v

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, **kw: Any) -> tuple[Value, ...]:
        """Add the node as GraphBuilder does, then compute its outputs from its inputs' arrays."""
        outs = super().add_node(op, inputs, attrs, **kw)
        node = self.nodes[-1]
        arrays = [self.arrays[id(v)] for v in node.inputs]
        self.arrays.update(zip(map(id, outs), _evaluate(node.op, arrays, node.attrs, self.library)))
        return outs


def _evaluate(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], library: dict[str, Graph]) -> list[np.ndarray]:
    """One node's outputs: eagerly (cached per signature) when its attributes allow, else as a one-node graph."""
    if not get_op(op).lowered and all(_hashable(v) for v in attrs.values()):
        return eager.run(op, arrays, attrs)
    b = GraphBuilder(f"value_{op}", library)
    ins = [b.input(f"x{i}", a.dtype, a.shape) for i, a in enumerate(arrays)]
    outs = b.add_node(op, ins, attrs)
    return list(compile_graph(b.build(tuple(outs)))(*arrays))


def _hashable(v: Any) -> bool:
    try:
        hash(tuple(v) if isinstance(v, list) else v)
    except TypeError:
        return False
    return True


@dataclass
class Guard:
    """A value Python code read while tracing (``bool(t)``, ``int(t)``, ``t.asnumpy()``...), and what it was."""

    value: Value
    seen: np.ndarray


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (so 0.0 and -0.0, or two NaNs, are told apart exactly as Python saw them)."""
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


class GuardCheck:
    """The guarded values of one traced graph as a program of their own, and the values the trace saw."""

    def __init__(self, graph: Graph, guards: Sequence[Guard]) -> None:
        outs = tuple(g.value for g in guards)
        self.program: Program = compile_graph(Graph(graph.inputs, graph.params, graph.nodes, outs, graph.library, f"guards_{graph.name}").pruned())
        self.seen = [g.seen for g in guards]

    def holds(self, inputs: Sequence[np.ndarray], params: dict[str, np.ndarray]) -> bool:
        """True when these inputs and parameter values make every guarded value what the trace saw."""
        now = self.program(*inputs, params=dict(params))
        return all(same(np.asarray(a), b) for a, b in zip(now, self.seen))
