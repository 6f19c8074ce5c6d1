"""The graph IR: typed values, nodes and finished graphs (built by :mod:`.builder`)."""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from . import dtypes
from .errors import GraphError, ShapeError, shown, shown_names
from .operators import Arithmetic

if TYPE_CHECKING:
    from .builder import GraphBuilder


@dataclass(frozen=True, slots=True)
class TensorType:
    """Static dtype and shape of a value."""

    dtype: np.dtype
    shape: tuple[int, ...]
    size: int = field(init=False, repr=False, compare=False)
    """Number of elements (an exact Python int), computed once: compiling reads it tens of thousands of times."""
    _hash: int = field(init=False, repr=False, compare=False)
    """The hash, computed once: builders and the compiler look types up in dicts about twenty times per node."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", math.prod(self.shape))
        object.__setattr__(self, "_hash", hash((self.dtype, self.shape)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is TensorType and self.shape == other.shape and self.dtype == other.dtype)

    def __reduce__(self) -> tuple[type, tuple[np.dtype, tuple[int, ...]]]:
        """Pickle dtype and shape only: the cached hash of a dtype differs between processes."""
        return TensorType, (self.dtype, self.shape)

    def __str__(self) -> str:
        return f"{dtypes.short(self.dtype)}[{','.join(map(str, self.shape))}]"

    @property
    def nbytes(self) -> int:
        """Bytes of a C-contiguous array of this type."""
        return self.size * self.dtype.itemsize


MAX_RANK = 64
"""Most dimensions a tensor may have (NumPy's own maximum)."""

MAX_DIM = (1 << 63) - 1
"""Largest dimension, and largest byte count of the non-zero dimensions' product, a shape may have (int64)."""


def check_type_shape(shape: tuple[int, ...], what: str, itemsize: int = 1) -> None:
    """Reject a shape NumPy cannot hold: rank over MAX_RANK, a negative dimension, or a product of the
    non-zero dimensions times ``itemsize`` beyond int64 (computed with Python ints, so it cannot wrap)."""
    if len(shape) > MAX_RANK:
        raise ShapeError(f"{what} has rank {len(shape)}; at most {MAX_RANK} dimensions are supported")
    count = itemsize
    for d in shape:
        if d < 0:
            raise ShapeError(f"{what} has the negative dimension {d} in shape {shape}")
        if d:
            count *= d
        if count > MAX_DIM:
            raise ShapeError(f"{what} has shape {shape}, whose size exceeds the int64 range")


class Value(Arithmetic):
    """A value in one graph: an input, a parameter, or an output of a node.

    Values support Python arithmetic (the shared :class:`~.operators.Arithmetic` table) so that VJP rules
    read like formulas; each operator adds a node to the builder that owns the value.
    """

    __slots__ = ("_name", "type", "builder")

    def __init__(self, name: str | int, type: TensorType, builder: GraphBuilder | None) -> None:
        self._name = name
        self.type = type
        self.builder = builder

    @property
    def name(self) -> str:
        """The value's name: the one given, or for the value a builder named k-th itself (``name`` an int k) ``%k``,
        made when read (a deep graph's tens of thousands of values never format names nobody reads)."""
        name = self._name
        return name if name.__class__ is str else f"%{name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    def __repr__(self) -> str:
        return f"{self.name}:{self.type}"

    def _apply(self, op: str, *inputs: Any, **attrs: Any) -> Any:
        """Add ``op[attrs]`` over ``inputs`` to this value's builder; Python numbers become constants of this dtype."""
        b = self._owner()
        return b.op(op, *[v if isinstance(v, Value) else b.const(v, dtype=self.dtype) for v in inputs], **attrs)

    def _owner(self) -> GraphBuilder:
        if self.builder is None:
            raise GraphError(f"value {shown(self.name)} belongs to a finished graph; arithmetic needs a builder")
        return self.builder


def node_name(op: str, name: str | int) -> str:
    """A node's name as text: ``name`` itself, or for an index k (a name a builder made) ``<op>_<k>``."""
    return name if name.__class__ is str else f"{op.lower()}_{name}"  # type: ignore[return-value]


class Node:
    """One application of a primitive op: ``outputs = op[attrs](*inputs)``; ``calls`` names the library functions the
    node refers to (its op's ``calls`` attributes), filled in by the builder."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "_name", "stop_gradient", "calls")

    def __init__(
        self, op: str, inputs: tuple[Value, ...], attrs: dict[str, Any], outputs: tuple[Value, ...], name: str | int,
        stop_gradient: bool = False, calls: tuple[str, ...] = (),
    ) -> None:
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.outputs = outputs
        self._name = name
        self.stop_gradient = stop_gradient
        self.calls = calls

    @property
    def name(self) -> str:
        """The node's name: the one given, or for the k-th node a builder named itself (``name`` an int k)
        ``<op>_<k>``, made when read (a deep graph's tens of thousands of nodes never format names nobody reads)."""
        return node_name(self.op, self._name)

    def __repr__(self) -> str:
        return (f"Node(op={self.op!r}, inputs={self.inputs!r}, attrs={self.attrs!r}, outputs={self.outputs!r}, "
                f"name={self.name!r}, stop_gradient={self.stop_gradient!r}, calls={self.calls!r})")


@dataclass(eq=False)
class Param:
    """A named graph input that carries a value; ``requires_grad=False`` keeps it out of trainable lists."""

    value: Value
    data: np.ndarray
    requires_grad: bool = True

    @property
    def name(self) -> str:
        return self.value.name


Tree = Value | tuple["Tree", ...]


def flatten(tree: Any) -> list[Any]:
    """Leaves of a nested-tuple tree, left to right."""
    if isinstance(tree, tuple):
        return [leaf for t in tree for leaf in flatten(t)]
    return [tree]


def unflatten(tree: Any, leaves: Iterator[Any]) -> Any:
    """Rebuild ``tree``'s nesting with leaves taken in order from ``leaves``."""
    if isinstance(tree, tuple):
        return tuple(unflatten(t, leaves) for t in tree)
    return next(leaves)


DERIVED_KEPT = 32
"""Graphs transforms made from one graph that it keeps (``Graph.keep_derived``), the most recently made."""
_DERIVED_LOCK = threading.Lock()
"""Guards every graph's ``derived`` while one is added and the oldest dropped."""


@dataclass(eq=False)
class Graph:
    """A finished, checked graph. Nodes are in topological order; ``library`` holds graphs that
    transform nodes (GradOperation, Grad, Jvp, ...) refer to by name."""

    inputs: tuple[Value, ...]
    params: tuple[Param, ...]
    nodes: tuple[Node, ...]
    outputs: Tree
    library: dict[str, Graph] = field(default_factory=dict)
    name: str = "main"
    derived: dict[tuple, Graph] = field(default_factory=dict, repr=False)
    """Graphs transforms made from this one, by the transform's key: kept on the graph so they die with it
    (a weak-key table leaked, since a derived graph shares the library that holds its source); the latest
    ``DERIVED_KEPT`` (``keep_derived``)."""
    is_pruned: bool = field(default=False, repr=False, compare=False)
    """True for a graph :meth:`pruned` returned: every node is live, so pruning it again returns it as it is."""

    def keep_derived(self, key: tuple, graph: Graph) -> Graph:
        """Keep ``graph``, made from this one by the transform of ``key``, for the next call of that transform; the
        oldest kept is dropped beyond ``DERIVED_KEPT`` (a server's network lives long, and each list of weights its
        callers name makes another gradient graph: kept, they grew its worker without bound)."""
        derived = self.derived
        with _DERIVED_LOCK:  # threads of one process may derive from one graph (the SDK's embedded backend)
            derived[key] = graph
            while len(derived) > DERIVED_KEPT:
                del derived[next(iter(derived))]
        return graph

    @property
    def flat_outputs(self) -> list[Value]:
        return flatten(self.outputs)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise GraphError(f"graph {shown(self.name)} has no parameter {shown(name)}; parameters: {shown_names([p.name for p in self.params])}")

    def __str__(self) -> str:
        return format_graph(self)

    def pruned(self) -> Graph:
        """The same graph without nodes that no output depends on."""
        if self.is_pruned:
            return self
        live = set(self.flat_outputs)  # Values hash by identity: no id() ints to allocate per lookup
        keep = []
        add = live.add
        for n in reversed(self.nodes):
            outs = n.outputs
            if outs[0] in live if len(outs) == 1 else not live.isdisjoint(outs):
                keep.append(n)
                for v in n.inputs:
                    add(v)
        return Graph(self.inputs, self.params, tuple(keep[::-1]), self.outputs, self.library, self.name, is_pruned=True)

    def structural_hash(self) -> str:
        """A hex digest of the graph's structure (ops, attrs, wiring, types, library), independent of
        value and node names and of parameter values; the cache key for compiled programs."""
        return hashlib.sha256(_canonical(self).encode()).hexdigest()


def _attr_text(v: Any) -> str:
    """An attribute as exact text: tensors by dtype, shape and a digest of their bytes, floats by repr."""
    if isinstance(v, np.ndarray):
        return f"tensor<{v.dtype.name}{list(v.shape)}:{hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]}>"
    if isinstance(v, np.dtype):
        return v.name
    return repr(v)


def format_attrs(attrs: dict[str, Any]) -> str:
    """Attributes as ``[k=v, ...]`` in sorted order, or an empty string."""
    if not attrs:
        return ""
    if set(attrs) == {"value"} and isinstance(attrs["value"], np.ndarray) and attrs["value"].size <= 4:
        return f"[{np.array2string(attrs['value'], separator=',')}]"
    return "[" + ", ".join(f"{k}={_attr_text(attrs[k])}" for k in sorted(attrs)) + "]"


def format_graph(g: Graph, indent: str = "", with_library: bool = True) -> str:
    """A listing of the program, one node per line with op, attributes, dtype and shape; the shared
    function library is listed once, after the top-level graph."""
    ins = ", ".join(f"{v.name}: {v.type}" for v in g.inputs)
    lines = [f"{indent}graph {g.name}({ins})"]
    for p in g.params:
        lines.append(f"{indent}  param {p.name}: {p.value.type}{'' if p.requires_grad else ' (no grad)'}")
    for n in g.nodes:
        outs = ", ".join(f"{v.name}: {v.type}" for v in n.outputs)
        args = ", ".join(v.name for v in n.inputs)
        sg = "  !stop_gradient" if n.stop_gradient else ""
        lines.append(f"{indent}  {outs} = {n.op}{format_attrs(n.attrs)}({args}){sg}")
    lines.append(f"{indent}  return {_tree_text(g.outputs)}")
    if with_library:
        for name, sub in g.library.items():
            lines.append(f"{indent}  where {name} =")
            lines.append(format_graph(sub, indent + "    ", with_library=False))
    return "\n".join(lines)


def _tree_text(t: Tree) -> str:
    if isinstance(t, tuple):
        return "(" + ", ".join(_tree_text(x) for x in t) + ("," if len(t) == 1 else "") + ")"
    return t.name


def _canonical(g: Graph) -> str:
    ids: dict[int, str] = {}
    parts = []
    for i, v in enumerate(g.inputs):
        ids[id(v)] = f"i{i}"
        parts.append(f"in {v.name} {v.type}")
    for p in g.params:
        ids[id(p.value)] = f"p:{p.name}"
        parts.append(f"param {p.name} {p.value.type} {p.requires_grad}")
    used_fns: list[str] = []
    for k, n in enumerate(g.nodes):
        for j, v in enumerate(n.outputs):
            ids[id(v)] = f"n{k}.{j}"
        used_fns.extend(n.calls)
        args = ",".join(ids[id(v)] for v in n.inputs)
        attrs = ",".join(f"{k}={_attr_text(n.attrs[k])}" for k in sorted(n.attrs))
        parts.append(f"{n.op}[{attrs}]({args}) sg={n.stop_gradient} -> {[str(v.type) for v in n.outputs]}")
    parts.append("out " + _canon_tree(g.outputs, ids))
    for fn in sorted(set(used_fns)):
        parts.append(f"fn {fn} {{{_canonical(g.library[fn])}}}")
    return "\n".join(parts)


def _canon_tree(t: Tree, ids: dict[int, str]) -> str:
    if isinstance(t, tuple):
        return "(" + ",".join(_canon_tree(x, ids) for x in t) + ")"
    return ids[id(t)]
