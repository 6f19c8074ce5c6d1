"""GraphBuilder: builds a graph node by node, checking each node against the op table as it is added."""
from __future__ import annotations

import functools
import gc
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from . import dtypes
from .errors import GraphError, ShapeError, shown
from .ir import Graph, Node, Param, TensorType, Value, check_type_shape, flatten, node_name
from .optable import OPS, get_op, infer_node

Fn = TypeVar("Fn", bound=Callable[..., Any])


def gc_paused(fn: Fn) -> Fn:
    """Run ``fn`` with Python's cyclic garbage collector paused (then restored as it was): a graph transform allocates
    tens of thousands of long-lived Values and Nodes, and the collections they trigger, each scanning all of them, cost
    as much again as the transform itself; nothing is lost, garbage waits for the next collection. What ``fn`` made
    is left in the youngest generation (not moved to the oldest, e.g. by ``gc.freeze()``): that would move every
    object of the process there too, and a caller's cyclic garbage would then wait for a full collection, which a
    loop of compiles may never trigger."""

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused  # type: ignore[return-value]


class GraphBuilder:
    """Builds a graph node by node, checking arity, attributes, dtypes and shapes as each node is added,
    so a bad graph fails here, before any array is allocated."""

    def __init__(self, name: str = "main", library: dict[str, Graph] | None = None) -> None:
        self.name = name
        self.library: dict[str, Graph] = library if library is not None else {}
        self.inputs: list[Value] = []
        self.params: list[Param] = []
        self._params: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self._names: set[str] = set()  # the value names given
        self._fresh = 0  # the k of the next value this builder names itself (``%k``)
        self._claimed_values: set[int] = set()  # every k such that a given value name is ``%k`` (k in decimal)
        self._node_names: set[str] = set()  # names given, and names made for nodes whose ``<op>_<k>`` was given
        self._claimed: set[int] = set()  # every k such that a given name ends in ``_<k>`` (k in decimal)
        self._scalars: dict[tuple[type, str, np.dtype | None], Value] = {}
        self._inferred: dict[tuple, tuple[dict[str, Any], tuple[TensorType, ...]]] = {}

    def _new_value(self, name: str | None, t: TensorType) -> Value:
        if name is None:
            return self._fresh_value(t)
        k = _fresh_index(name)
        if name in self._names or (k is not None and k < self._fresh):
            raise GraphError(f"graph {shown(self.name)}: value name {shown(name)} is defined twice")
        self._names.add(name)
        if k is not None:
            self._claimed_values.add(k)
        return Value(name, t, self)

    def _fresh_value(self, t: TensorType) -> Value:
        """A value of type ``t`` under the next free ``%k`` name, held as k (:attr:`Value.name` makes the text)."""
        k = self._fresh
        claimed = self._claimed_values
        if claimed:
            while k in claimed:
                k += 1
        self._fresh = k + 1
        return Value(k, t, self)

    def input(self, name: str, dtype: object, shape: Sequence[int]) -> Value:
        """Declare a graph input with a static dtype and shape."""
        shape = tuple(int(d) for d in shape)
        try:
            check_type_shape(shape, "the shape", dtypes.as_dtype(dtype).itemsize)
        except ShapeError as exc:
            raise ShapeError(f"input {shown(name)}: {exc}") from None
        v = self._new_value(name, TensorType(dtypes.as_dtype(dtype), shape))
        self.inputs.append(v)
        return v

    def param(self, name: str, data: Any, requires_grad: bool = True) -> Value:
        """Declare a named parameter carrying ``data`` as a read-only array: a read-only array of a supported dtype is
        shared, not copied (every graph derived from one network holds the same weights), anything else is copied once."""
        arr = frozen_array(data)
        v = self._new_value(name, TensorType(arr.dtype, arr.shape))
        self.params.append(Param(v, arr, requires_grad))
        self._params[name] = v
        return v

    def has_param(self, name: str) -> bool:
        """True when the parameter ``name`` is declared (a dict lookup)."""
        return name in self._params

    def get_param(self, name: str) -> Value:
        """The value of the parameter ``name`` (a dict lookup), or a GraphError naming it."""
        try:
            return self._params[name]
        except KeyError:
            raise GraphError(f"graph {shown(self.name)} has no parameter {shown(name)}") from None

    def const(self, data: Any, dtype: object = None) -> Value:
        """A constant node holding ``data`` (a scalar becomes a 0-d tensor of ``dtype``); a Python number of one dtype is
        one node per builder (the ``1 - y * y`` of every Tanh VJP in a deep chain shares its 1)."""
        key = None
        if type(data) in (int, float, bool):
            key = (type(data), repr(data), None if dtype is None else _supported(dtype))
            known = self._scalars.get(key)
            if known is not None:
                return known
        arr = np.asarray(data, dtype=None if dtype is None else dtypes.as_dtype(dtype))
        arr = arr.astype(dtypes.as_dtype(arr.dtype), copy=True)
        arr.setflags(write=False)
        v = self.add_node("Const", (), {"value": arr})[0]
        if key is not None:
            self._scalars[key] = v
        return v

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Any:
        """Add ``op[attrs](*inputs)``; returns its one output, or a tuple for multi-output ops and for ops that
        carry a library graph (whose output count depends on that graph)."""
        outs = self.add_node(op, inputs, attrs)
        return outs[0] if len(outs) == 1 and not OPS[op].lowered else outs

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        stop_gradient: bool = False,
        output_names: Sequence[str] | None = None,
        name_hint: str | None = None,
    ) -> tuple[Value, ...]:
        """Check and add one node; the full-control form of :meth:`op` used by codecs and transforms.
        ``name_hint`` names the node when that name is still free (transforms keep users' node names)."""
        if name is None and name_hint is not None and not self._taken(name_hint):
            name = name_hint
        opdef = OPS.get(op) if type(op) is str else None
        if opdef is None:
            opdef = get_op(op, where=f"graph {shown(self.name)}, node {shown(name)}" if name else f"graph {shown(self.name)}")
        k = len(self.nodes)
        node = k if name is None and k not in self._claimed else self._node_name(op, name)
        for v in inputs:
            if not isinstance(v, Value):
                raise GraphError(f"{op} {shown(node_name(op, node))}: input {shown(v)} is not a Value")
            if v.builder is not self:
                raise GraphError(f"{op} {shown(node_name(op, node))}: input {shown(v.name)} is not defined in graph {shown(self.name)}")
        n_outputs = None if output_names is None else len(output_names)
        key = None if opdef.lowered else _inference_key(op, inputs, attrs, n_outputs)
        known = None if key is None else self._inferred.get(key)
        if known is None:
            full_attrs, types = infer_node(opdef, node_name(op, node), list(inputs), dict(attrs or {}), self, n_outputs)
            if key is not None:
                self._inferred[key] = (full_attrs, types)
        else:
            full_attrs, types = known
        if n_outputs is not None and n_outputs != len(types):
            raise GraphError(f"{op} {shown(node_name(op, node))}: {n_outputs} output names given, the op has {len(types)} outputs")
        if output_names is None:
            outs = (self._fresh_value(types[0]),) if len(types) == 1 else tuple([self._fresh_value(t) for t in types])
        else:
            outs = tuple([self._new_value(output_names[i], t) for i, t in enumerate(types)])
        calls = tuple([full_attrs[a] for a in opdef.calls]) if opdef.calls else ()
        self.nodes.append(Node(op, tuple(inputs), full_attrs, outs, node, stop_gradient, calls))
        return outs

    def copy_node(self, n: Node, inputs: Sequence[Value], stop_gradient: bool | None = None) -> tuple[Value, ...]:
        """Add a copy of node ``n`` (of another graph) over ``inputs`` of this builder, keeping ``n``'s name when free.
        When every input has the type ``n``'s input had, ``n``'s attributes and output types are reused without
        inference (a copy is as checked as its original, so rebuilding a graph stays cheap); otherwise, for ops whose
        inference declares parameters (those carrying a library graph) and in subclasses that extend :meth:`add_node`,
        the node goes through :meth:`add_node`."""
        sg = n.stop_gradient if stop_gradient is None else stop_gradient
        opdef = OPS.get(n.op)
        same = opdef is not None and not opdef.lowered and type(self).add_node is GraphBuilder.add_node and len(inputs) == len(n.inputs)
        if same:
            for a, v in zip(inputs, n.inputs):
                if a.builder is not self or not (a.type is v.type or a.type == v.type):
                    same = False
                    break
        if not same:
            return self.add_node(n.op, inputs, n.attrs, stop_gradient=sg, name_hint=n.name)
        source = n._name
        if source.__class__ is int and source == len(self.nodes):
            node = self._node_name(n.op, None)  # n's name is the one this builder would make for it
        else:
            name = n.name
            node = self._node_name(n.op, None if self._taken(name) else name)
        outs = tuple([self._fresh_value(v.type) for v in n.outputs])
        self.nodes.append(Node(n.op, tuple(inputs), n.attrs, outs, node, sg, n.calls))
        return outs

    def _node_name(self, op: str, name: str | None) -> str | int:
        """The name of the node about to be added: ``name``, checked to be free, or when None the node's index k, which
        stands for ``<op>_<k>`` (:attr:`Node.name`), unless a name given earlier ends in ``_<k>``: then that name,
        made now, with ``_`` appended until it is free."""
        if name is None:
            k = len(self.nodes)
            if k not in self._claimed:
                return k
            name = node_name(op, k)
            while name in self._node_names:
                name += "_"
        elif self._taken(name):
            raise GraphError(f"graph {shown(self.name)}: node name {shown(name)} is used twice")
        else:
            claim = _suffix_index(name)
            if claim is not None:
                self._claimed.add(claim)
        self._node_names.add(name)
        return name

    def _taken(self, name: str) -> bool:
        """Whether a node of this builder has the name ``name``: a given one, or one an index stands for."""
        if name in self._node_names:
            return True
        k = _suffix_index(name)
        return k is not None and k < len(self.nodes) and self.nodes[k]._name == k and self.nodes[k].name == name

    def build(self, outputs: Any) -> Graph:
        """Finish the graph with ``outputs``: a Value or a nested tuple of Values."""
        for v in flatten(outputs):
            if not isinstance(v, Value) or v.builder is not self:
                raise GraphError(f"graph {shown(self.name)}: output {shown(v)} is not a value of this graph")
        g = Graph(tuple(self.inputs), tuple(self.params), tuple(self.nodes), outputs, self.library, self.name)
        for v in self.inputs:
            v.builder = None
        for p in self.params:
            p.value.builder = None
        for n in self.nodes:
            for v in n.outputs:
                v.builder = None
        return g


def _fresh_index(name: str) -> int | None:
    """k when ``name`` is ``%k`` (k in decimal, as a builder names values itself), else None."""
    return _index(name[1:]) if name[:1] == "%" else None


def _suffix_index(name: str) -> int | None:
    """k when ``name`` ends in ``_<k>`` (as ``<op>_<k>``, the names a builder makes for nodes), else None."""
    _, sep, tail = name.rpartition("_")
    return _index(tail) if sep else None


def _index(digits: str) -> int | None:
    """k when ``digits`` is ``str(k)`` for a k that can index a builder's nodes or values, else None (no int is made of
    thousands of digits, which Python refuses)."""
    if 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit() and (digits[0] != "0" or digits == "0"):
        return int(digits)
    return None


_SCALARS = (bool, int, float, str, type(None))


def _plain(a: Any) -> bool:
    """True for a Python scalar or a tuple of them (nested): values whose repr is exact and complete."""
    return type(a) in _SCALARS or (type(a) is tuple and all(_plain(e) for e in a))


def _inference_key(op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None, n_outputs: int | None) -> tuple | None:
    """What a node's inference depends on (op, input types, attributes by type and repr), or None when an attribute
    is not a plain value: a builder infers each distinct node once (the VJPs of a deep chain repeat a few)."""
    types = tuple([v.type for v in inputs])
    if not attrs:
        return (op, types, (), n_outputs)
    items: list[tuple] = []
    for k, a in attrs.items():
        if isinstance(a, np.dtype):
            items.append((k, a))
        elif _plain(a):
            items.append((k, type(a), repr(a)))
        else:
            return None
    return (op, types, tuple(items), n_outputs)


_supported = functools.lru_cache(maxsize=256)(dtypes.as_dtype)
"""``dtypes.as_dtype`` remembered per dtype: checking a parameter's dtype must cost no more than a dict lookup."""


def frozen_array(data: Any) -> np.ndarray:
    """``data`` as a read-only array of a supported dtype: the array itself when it already is one (parameters are
    shared between the graphs of one network, never copied per graph), else a read-only copy."""
    if isinstance(data, np.ndarray) and not data.flags.writeable and data.dtype == _supported(data.dtype):
        return data
    arr = np.array(data)
    arr = arr.astype(_supported(arr.dtype), copy=False)
    arr.setflags(write=False)
    return arr


def signature_copy(g: Graph, name: str | None = None) -> tuple[GraphBuilder, list[Value]]:
    """A builder (named ``name``, default ``g``'s name) sharing ``g``'s library and declaring ``g``'s inputs
    and parameters, with the new inputs in order: the start of every transform that rebuilds ``g``."""
    b = GraphBuilder(g.name if name is None else name, g.library)
    args = [b.input(v.name, v.dtype, v.shape) for v in g.inputs]
    for p in g.params:
        b.param(p.name, p.data, p.requires_grad)
    return b, args
