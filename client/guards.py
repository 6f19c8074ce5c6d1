"""Python control flow on Tensor values: a builder that also computes each value it adds (so Python code in a
trace can read it), and the guards that say when a traced graph is still the path Python would take."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gradserve.engine import Graph, GraphBuilder, Program, Value, compile_graph, flatten, get_op, signature_copy
from gradserve.engine.autodiff import inline

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


@dataclass(eq=False)
class Origin:
    """Where one trace's graph sits: the trace that made it (None at top level) and the values of that trace it was
    applied to (its inputs, in order), so a value read in a nested trace (a network under GradOperation inside a
    construct) can be computed again from the top-level inputs. ``graph`` is set when the trace is built."""

    parent: Origin | None = None
    bound: tuple[Value, ...] = ()
    graph: Graph | None = field(default=None, repr=False)

    def depth(self) -> int:
        """How many traces enclose this one."""
        return 0 if self.parent is None else 1 + self.parent.depth()


@dataclass
class Guard:
    """A value Python code read while tracing (``bool(t)``, ``int(t)``, ``t.asnumpy()``...), what it was, and the
    trace whose graph holds the value."""

    value: Value
    seen: np.ndarray
    origin: Origin = field(default_factory=Origin)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (so 0.0 and -0.0, or two NaNs, are told apart exactly as Python saw them)."""
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


class GuardCheck:
    """The guarded values of one traced graph, including those read in nested traces (each nested graph, pruned to
    what is needed, is inlined on the values its parent passed it), as one program of the top-level graph's inputs
    and parameters; and the values the trace saw."""

    def __init__(self, graph: Graph, guards: Sequence[Guard]) -> None:
        needed: dict[Origin, dict[int, Value]] = {}
        for g in guards:
            needed.setdefault(g.origin, {})[id(g.value)] = g.value
            o = g.origin
            while o.parent is not None:
                needed.setdefault(o.parent, {}).update((id(v), v) for v in o.bound)
                o = o.parent
        b, args = signature_copy(graph, f"guards_{graph.name}")
        computed: dict[int, Value] = {}
        for o in sorted(needed, key=Origin.depth):
            sub = graph if o.parent is None else o.graph
            assert sub is not None, "a guarded trace is built before its guards are checked"
            want = tuple(needed[o].values())
            ins = args if o.parent is None else [computed[id(v)] for v in o.bound]
            part = Graph(sub.inputs, sub.params, sub.nodes, want, sub.library, sub.name).pruned()
            computed.update(zip(map(id, want), flatten(inline(b, part, ins, expand_all=False))))
        self.program: Program = compile_graph(b.build(tuple(computed[id(g.value)] for g in guards)))
        self.seen = [g.seen for g in guards]

    def holds(self, inputs: Sequence[np.ndarray], params: dict[str, np.ndarray]) -> bool:
        """True when these inputs and parameter values make every guarded value what the trace saw."""
        now = self.program(*inputs, params=dict(params))
        return all(same(np.asarray(a), b) for a, b in zip(now, self.seen))
