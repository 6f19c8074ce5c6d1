"""The wire codec: the one place that turns gradserve.v1 protos into engine graphs, arrays and calls, and back.

Nothing from the wire is trusted: dtypes, shapes, byte lengths, names, nesting and sizes are checked
before any array is allocated, and every failure is a :class:`WireError` whose ``field`` is the path
of the offending field (``graph.nodes[3].inputs[1]``), ready for a google.rpc.BadRequest. Exceeded
limits raise :class:`LimitError` (RESOURCE_EXHAUSTED); gradients through ops without one raise the
engine's NotDifferentiableError (UNIMPLEMENTED) with the field path prefixed.
"""
from __future__ import annotations

import difflib
import hashlib
import heapq
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TypeAlias

import numpy as np

from gradserve.engine import (
    DTYPES,
    OPS,
    Graph,
    GraphBuilder,
    GraphError,
    NotDifferentiableError,
    OpDef,
    Value,
    grad_operation,
    get_op,
)
from gradserve.engine.errors import NAME_LIMIT, shown, shown_names
from gradserve.engine.optable import REQUIRED
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

GRAD_OP = "GradOperation"
"""The op whose ``fn`` attribute names a library function: the only cross-graph reference."""

_ONEOF_OF_KIND = {
    "int": "int_value",
    "float": "float_value",
    "bool": "bool_value",
    "str": "string_value",
    "ints": "ints",
    "floats": "floats",
    "strs": "strings",
    "dtype": "dtype",
    "tensor": "tensor",
}
"""Which AttrValue field carries each engine attribute kind (the wire schema's own mapping)."""

DType: TypeAlias = pb.DataType.ValueType
"""A DataType enum value."""

_DTYPE_OF_ENUM: dict[DType, np.dtype] = {
    pb.DataType.Value(f"DATA_TYPE_{name.upper()}"): dt
    for name, dt in DTYPES.items()
    if f"DATA_TYPE_{name.upper()}" in pb.DataType.keys()
}
_ENUM_OF_DTYPE: dict[np.dtype, DType] = {dt: enum for enum, dt in _DTYPE_OF_ENUM.items()}


class WireError(ValueError):
    """A message that breaks the wire contract; ``field`` is the offending field's path (INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str, node: str = "") -> None:
        self.field = field
        self.description = f"{node}: {message}" if node else message
        super().__init__(f"{field} {self.description}" if node else f"{field}: {message}")


class LimitError(WireError):
    """A message beyond a configured size or nesting limit (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    """What one request may contain; the server fills these from its configuration."""

    max_tensor_elements: int = 1 << 26
    """Elements in any tensor sent, declared or computed (for empty tensors: product of the non-zero dims)."""
    max_tensor_rank: int = 32
    """Dimensions of any tensor or declared input."""
    max_graph_nodes: int = 50_000
    """Nodes of one network on the wire, and of any of its graphs once GradOperation nodes are expanded."""
    max_nesting_depth: int = 32
    """Depth of output/result trees and of chains of GradOperation-over-function references."""


DEFAULT_LIMITS = Limits()


HINT_CANDIDATES = 1000
"""Most known names a "did you mean" hint compares a name with, so that a hint costs little whatever the graph's size."""


def _names_hint(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'a', 'b'?`` for the closest known names, or an empty string. Only names whose length
    allows a match are compared, at most HINT_CANDIDATES of them, and none for a name too long to echo."""
    if len(name) > NAME_LIMIT:
        return ""
    near = [k for k in known if 2 * min(len(k), len(name)) >= 0.6 * (len(k) + len(name))]  # difflib's own first filter
    close = difflib.get_close_matches(name, near[:HINT_CANDIDATES], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(map(shown, close))}?" if close else ""


def _bare(name: str) -> str:
    """A caller's name unquoted where messages list names plainly, or :func:`shown` when too long to echo."""
    return name if len(name) <= NAME_LIMIT else shown(name)


def _key(name: str) -> str:
    """A map key as written in field paths: ``["name"]`` (a name too long to echo is cut, with ``...``)."""
    cut = name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT] + "..."
    return '["' + cut.replace("\\", "\\\\").replace('"', '\\"') + '"]'


def _type_text(dt: np.dtype, shape: Sequence[int]) -> str:
    """``float32[2,3]``: a type as error messages spell it for readers of any language."""
    return f"{dt.name}[{','.join(map(str, shape))}]"


# ---- dtypes, shapes and tensors ----


def supported_dtypes() -> list[DType]:
    """The DataType enum values the engine computes in (for ServerInfo.supported_dtypes)."""
    return sorted(_DTYPE_OF_ENUM)


def decode_dtype(value: DType, field: str) -> np.dtype:
    """The NumPy dtype of a DataType enum value, or a WireError naming the supported ones."""
    dt = _DTYPE_OF_ENUM.get(value)
    if dt is not None:
        return dt
    supported = ", ".join(pb.DataType.Name(e) for e in supported_dtypes())
    if value == pb.DATA_TYPE_UNSPECIFIED:
        raise WireError(field, f"dtype is not set; supported: {supported}")
    name = pb.DataType.Name(value) if value in pb.DataType.values() else f"unknown enum value {value}"
    raise WireError(field, f"dtype {name} is not supported by this engine; supported: {supported}")


def encode_dtype(dt: Any) -> DType:
    """The DataType enum value of a NumPy dtype the engine supports."""
    enum = _ENUM_OF_DTYPE.get(np.dtype(dt).newbyteorder("="))
    if enum is None:
        raise TypeError(f"dtype {np.dtype(dt).name} has no wire encoding; supported: {', '.join(d.name for d in _ENUM_OF_DTYPE)}")
    return enum


def check_shape(shape: Sequence[int], limits: Limits, field: str) -> tuple[int, ...]:
    """Validate a wire shape (rank, non-negative dims, element count) without allocating; returns it as a tuple."""
    if len(shape) > limits.max_tensor_rank:
        raise LimitError(f"{field}.shape", f"rank {len(shape)} exceeds the limit of {limits.max_tensor_rank}")
    count = 1
    for i, d in enumerate(shape):
        if d < 0:
            raise WireError(f"{field}.shape[{i}]", f"dimension {d} is negative")
        count *= max(d, 1)
        if count > limits.max_tensor_elements:
            raise LimitError(
                f"{field}.shape", f"shape {list(shape)} exceeds the limit of {limits.max_tensor_elements} elements"
            )
    return tuple(int(d) for d in shape)


def decode_tensor(msg: pb.Tensor, limits: Limits = DEFAULT_LIMITS, field: str = "tensor") -> np.ndarray:
    """A read-only NumPy view of a Tensor's bytes (zero-copy on little-endian hosts), validated first."""
    dt = decode_dtype(msg.dtype, f"{field}.dtype")
    shape = check_shape(msg.shape, limits, field)
    count = math.prod(shape)
    data = msg.data
    nbytes = memoryview(data).nbytes
    if nbytes != count * dt.itemsize:
        raise WireError(
            f"{field}.data",
            f"has {nbytes} bytes, but a {_type_text(dt, shape)} tensor needs "
            f"{count} elements x {dt.itemsize} bytes = {count * dt.itemsize}",
        )
    if dt.kind == "b" and count and np.frombuffer(data, np.uint8).max() > 1:
        raise WireError(f"{field}.data", "bool elements must be the bytes 0x00 or 0x01")
    arr = np.frombuffer(data, dt.newbyteorder("<")).reshape(shape)
    return arr if arr.dtype.isnative else arr.astype(dt)


def encode_tensor(array: Any, out: pb.Tensor | None = None) -> pb.Tensor:
    """Fill ``out`` (or a new Tensor) with ``array``'s dtype, shape and little-endian C-order bytes."""
    a = np.asarray(array)
    msg = pb.Tensor() if out is None else out
    msg.dtype = encode_dtype(a.dtype)
    msg.ClearField("shape")
    msg.shape.extend(a.shape)
    msg.data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return msg


# ---- attributes ----


def decode_attr(msg: pb.AttrValue, kind: str, limits: Limits, field: str, node: str = "") -> Any:
    """The Python value of an AttrValue, which must use the field for ``kind`` (one of ATTR_KINDS)."""
    want = _ONEOF_OF_KIND[kind]
    which = msg.WhichOneof("value")
    if which != want:
        got = f"got {which}" if which else "no value is set"
        raise WireError(field, f"attribute kind is {kind}, so {want} must be set; {got}", node)
    if kind in ("ints", "floats", "strs"):
        return tuple(getattr(msg, want).values)
    if kind == "dtype":
        return decode_dtype(msg.dtype, f"{field}.dtype")
    if kind == "tensor":
        return decode_tensor(msg.tensor, limits, f"{field}.tensor")
    return getattr(msg, want)


def encode_attr(value: Any, kind: str, out: pb.AttrValue | None = None) -> pb.AttrValue:
    """Fill ``out`` (or a new AttrValue) with an engine attribute value of ``kind``."""
    msg = pb.AttrValue() if out is None else out
    field = _ONEOF_OF_KIND[kind]
    if kind in ("ints", "floats", "strs"):
        lst = getattr(msg, field)
        lst.SetInParent()
        lst.values.extend(value)
    elif kind == "dtype":
        msg.dtype = encode_dtype(value)
    elif kind == "tensor":
        encode_tensor(value, msg.tensor)
    else:
        setattr(msg, field, value)
    return msg


# ---- graphs ----


def _fn_refs(g: pb.Graph) -> list[tuple[int, str]]:
    """(node index, function name) of every well-formed GradOperation reference in ``g``."""
    return [
        (i, n.attrs["fn"].string_value)
        for i, n in enumerate(g.nodes)
        if n.op == GRAD_OP and "fn" in n.attrs and n.attrs["fn"].WhichOneof("value") == "string_value"
    ]


def _function_order(msg: pb.Graph, limits: Limits, path: str) -> list[str]:
    """Library function names, each after the functions it refers to; rejects missing references,
    cycles, and chains of references deeper than the nesting limit."""
    lib = msg.library
    graphs = [(None, msg, path)] + [(k, lib[k], f"{path}.library{_key(k)}") for k in sorted(lib)]
    refs: dict[str | None, list[str]] = {}
    for owner, g, gpath in graphs:
        if owner is not None and not owner.strip():
            raise WireError(gpath, "function names must not be blank")
        if owner is not None and g.library:
            raise WireError(f"{gpath}.library", "only the top-level graph may have a library; move these functions there")
        for i, fn in _fn_refs(g):
            if fn not in lib:
                raise WireError(
                    f'{gpath}.nodes[{i}].attrs["fn"]',
                    f"refers to function {shown(fn)}, which is not in {path}.library {shown_names(sorted(lib))}{_names_hint(fn, lib)}",
                    _node_label(g.nodes[i]),
                )
        refs[owner] = sorted({fn for _, fn in _fn_refs(g)})
    hops: dict[str, int] = {}
    order: list[str] = []
    for root in sorted(lib):
        stack: list[tuple[str, int]] = [(root, 0)]
        on_path: list[str] = []
        on_set: set[str] = set()
        while stack:
            name, k = stack.pop()
            if k == 0 and name in hops:
                continue
            if k == 0 and name in on_set:
                cycle = on_path[on_path.index(name):] + [name]
                raise WireError(f"{path}.library{_key(name)}", f"functions refer to each other in a cycle: {_cycle_text(list(map(_bare, cycle)))}")
            if k == 0:
                on_path.append(name)
                on_set.add(name)
            if k < len(refs[name]):
                stack += [(name, k + 1), (refs[name][k], 0)]
                continue
            on_set.discard(on_path.pop())
            hops[name] = max((1 + hops[r] for r in refs[name]), default=0)
            if hops[name] > limits.max_nesting_depth:
                raise LimitError(f"{path}.library{_key(name)}", _nesting_text(hops[name], limits))
            order.append(name)
    main_hops = max((1 + hops[r] for r in refs[None]), default=0)
    if main_hops > limits.max_nesting_depth:
        raise LimitError(path, _nesting_text(main_hops, limits))
    return order


def _nesting_text(hops: int, limits: Limits) -> str:
    """The message for GradOperation nodes nested through too many library functions."""
    return f"GradOperation nodes nest {hops} deep through library functions; the limit is {limits.max_nesting_depth}"


def _node_label(n: pb.Node) -> str:
    """How errors name a node: ``'matmul_3' (MatMul)``, or just one of the two when the other is unset."""
    op = n.op if len(n.op) <= NAME_LIMIT else shown(n.op)
    return " ".join(filter(None, [shown(n.name) if n.name else "", f"({op})" if n.op else ""]))


def _cycle_text(steps: list[str], limit: int = 8) -> str:
    """``a -> b -> a``, with at most ``limit`` steps shown from a long cycle."""
    if len(steps) <= limit:
        return " -> ".join(steps)
    return " -> ".join(steps[:limit]) + f" -> ... ({len(steps) - 1} in the cycle)"


def _engine_message(exc: Exception, op: str, node: str) -> str:
    """An engine error's message without its leading ``Op 'node':`` (the field path already names the node);
    ``node`` is the name the caller gave, empty when the engine chose one."""
    text, prefix = str(exc), f"{op} {shown(node)}: "
    if node:
        return text[len(prefix):] if text.startswith(prefix) else text
    return re.sub(rf"^{re.escape(op)} '[^']*': ", "", text, count=1)


def _node_order(msg: pb.Graph, defined: dict[str, str], path: str) -> list[int]:
    """Node indices in dependency order (stable: a sorted graph keeps its order); rejects dangling
    inputs and cycles. ``defined`` maps every value name to the field that defines it."""
    producer = {o: i for i, n in enumerate(msg.nodes) for o in n.outputs}
    deps: list[set[int]] = []
    for i, n in enumerate(msg.nodes):
        d = set()
        for j, name in enumerate(n.inputs):
            if name in producer:
                d.add(producer[name])
            elif name not in defined:
                raise WireError(
                    f"{path}.nodes[{i}].inputs[{j}]",
                    f"value {shown(name)} is not defined (not an input, parameter or node output){_names_hint(name, defined)}",
                    _node_label(n),
                )
        deps.append(d)
    users: list[list[int]] = [[] for _ in msg.nodes]
    for i, d in enumerate(deps):
        for k in d:
            users[k].append(i)
    missing = [len(d) for d in deps]
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(msg.nodes):
        left = {i for i, m in enumerate(missing) if m}
        walk, seen = [min(left)], {min(left): 0}
        while True:
            nxt = min(deps[walk[-1]] & left)
            if nxt in seen:
                break
            seen[nxt] = len(walk)
            walk.append(nxt)
        cycle = walk[seen[nxt]:] + [nxt]
        first = cycle[0]
        text = _cycle_text([f"nodes[{i}] {_node_label(msg.nodes[i])}" for i in cycle])
        raise WireError(f"{path}.nodes[{first}]", f"is part of a cycle (each reads the next): {text}", _node_label(msg.nodes[first]))
    return order


def _expanded_nodes(b: GraphBuilder) -> int:
    """Nodes the builder's newest node stands for once expanded: the size of a GradOperation's
    gradient graph (already built, and cached, by the engine when the node was added), else 1."""
    n = b.nodes[-1]
    if n.op != GRAD_OP:
        return 1
    flags = {k: v for k, v in n.attrs.items() if k != "fn"}
    return len(grad_operation(b.library[n.attrs["fn"]], **flags).nodes)


def _decode_node_attrs(n: pb.Node, opdef: OpDef, limits: Limits, npath: str) -> dict[str, Any]:
    """A node's attributes as engine values, rejecting unknown names and wrong kinds (the engine fills defaults)."""
    attrs = {}
    for key in sorted(n.attrs):
        spec = opdef.attrs.get(key)
        if spec is None:
            raise WireError(
                f"{npath}.attrs{_key(key)}",
                f"{opdef.name} has no attribute {shown(key)}; it takes {sorted(opdef.attrs)}{_names_hint(key, opdef.attrs)}",
                _node_label(n),
            )
        attrs[key] = decode_attr(n.attrs[key], spec.kind, limits, f"{npath}.attrs{_key(key)}", _node_label(n))
    return attrs


def _decode_tree(msg: pb.ValueTree, env: Mapping[str, Value], limits: Limits, field: str, depth: int = 1) -> Any:
    """A graph's output tree with names resolved to values, within the nesting limit."""
    if depth > limits.max_nesting_depth:
        raise LimitError(field, f"output tree nests deeper than the limit of {limits.max_nesting_depth}")
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return tuple(
            _decode_tree(t, env, limits, f"{field}.tuple.items[{i}]", depth + 1) for i, t in enumerate(msg.tuple.items)
        )
    if kind is None:
        raise WireError(field, "neither value nor tuple is set")
    if msg.value not in env:
        raise WireError(f"{field}.value", f"value {shown(msg.value)} is not defined in this graph{_names_hint(msg.value, env)}")
    return env[msg.value]


def _decode_body(msg: pb.Graph, name: str, library: dict[str, Graph], limits: Limits, path: str) -> Graph:
    """One graph of a network; the functions it refers to must already be in ``library``."""
    b = GraphBuilder(name, library)
    env: dict[str, Value] = {}
    defined: dict[str, str] = {}

    def define(value: str, field: str, node: str = "") -> None:
        if not value:
            raise WireError(field, "value names must not be empty", node)
        if value in defined:
            raise WireError(field, f"value name {shown(value)} is already defined by {defined[value]}", node)
        defined[value] = field

    for i, v in enumerate(msg.inputs):
        field = f"{path}.inputs[{i}]"
        define(v.name, f"{field}.name")
        env[v.name] = b.input(v.name, decode_dtype(v.dtype, f"{field}.dtype"), check_shape(v.shape, limits, field))
    for i, p in enumerate(msg.parameters):
        field = f"{path}.parameters[{i}]"
        define(p.name, f"{field}.name")
        if not p.HasField("value"):
            raise WireError(f"{field}.value", f"parameter {shown(p.name)} has no value")
        data = decode_tensor(p.value, limits, f"{field}.value")
        env[p.name] = b.param(p.name, data, p.requires_grad if p.HasField("requires_grad") else True)
    for i, n in enumerate(msg.nodes):
        for j, out in enumerate(n.outputs):
            define(out, f"{path}.nodes[{i}].outputs[{j}]", _node_label(n))
    expanded = 0
    for i in _node_order(msg, defined, path):
        n = msg.nodes[i]
        npath, label = f"{path}.nodes[{i}]", _node_label(n)
        try:
            opdef = get_op(n.op)
        except GraphError as exc:
            raise WireError(f"{npath}.op", str(exc) if n.op else "op is not set", label) from None
        attrs = _decode_node_attrs(n, opdef, limits, npath)
        try:
            outs = b.add_node(
                n.op,
                [env[v] for v in n.inputs],
                attrs,
                name=n.name or None,
                stop_gradient=n.stop_gradient,
                output_names=list(n.outputs),
            )
        except NotDifferentiableError as exc:
            raise NotDifferentiableError(f"{npath} {label}: {exc}") from None
        except GraphError as exc:
            raise WireError(npath, _engine_message(exc, n.op, n.name), label) from None
        for j, made in enumerate(outs):
            if math.prod(made.shape) > limits.max_tensor_elements:
                raise LimitError(
                    f"{npath}.outputs[{j}]",
                    f"{shown(made.name)} would be {_type_text(made.dtype, made.shape)} ({math.prod(made.shape)} elements); the limit is {limits.max_tensor_elements}",
                    label,
                )
        env.update((made.name, made) for made in outs)
        expanded += _expanded_nodes(b)
        if expanded > limits.max_graph_nodes:
            raise LimitError(npath, f"expanding GradOperation nodes makes the graph larger than {limits.max_graph_nodes} nodes", label)
    if not msg.HasField("outputs"):
        raise WireError(f"{path}.outputs", "not set")
    return b.build(_decode_tree(msg.outputs, env, limits, f"{path}.outputs"))


def decode_graph(msg: pb.Graph, limits: Limits = DEFAULT_LIMITS, path: str = "graph") -> Graph:
    """The engine graph (with its library) of a network sent on the wire; ``path`` names ``msg`` in errors."""
    total = len(msg.nodes) + sum(len(f.nodes) for f in msg.library.values())
    if total > limits.max_graph_nodes:
        raise LimitError(f"{path}.nodes", f"the network has {total} nodes (graph and library); the limit is {limits.max_graph_nodes}")
    library: dict[str, Graph] = {}
    for fn in _function_order(msg, limits, path):
        library[fn] = _decode_body(msg.library[fn], msg.library[fn].name or fn, library, limits, f"{path}.library{_key(fn)}")
    return _decode_body(msg, msg.name or "main", library, limits, path)


def _fill_value_tree(out: pb.ValueTree, tree: Any) -> None:
    """Write an engine output tree (a Value or nested tuples of them) as value names."""
    if isinstance(tree, tuple):
        out.tuple.SetInParent()
        for t in tree:
            _fill_value_tree(out.tuple.items.add(), t)
    else:
        out.value = tree.name


def _fill_body(out: pb.Graph, g: Graph) -> None:
    """Write one graph without its library: inputs, parameters, nodes in order, outputs."""
    out.name = g.name
    for v in g.inputs:
        out.inputs.add(name=v.name, dtype=encode_dtype(v.dtype), shape=v.shape)
    for p in g.params:
        mp = out.parameters.add(name=p.name, requires_grad=p.requires_grad)
        encode_tensor(p.data, mp.value)
    for n in g.nodes:
        mn = out.nodes.add(
            op=n.op,
            inputs=[v.name for v in n.inputs],
            outputs=[v.name for v in n.outputs],
            stop_gradient=n.stop_gradient,
            name=n.name,
        )
        specs = OPS[n.op].attrs
        for key, value in n.attrs.items():
            if value is not None:  # an optional attribute left at a None default is simply absent
                encode_attr(value, specs[key].kind, mn.attrs[key])
    _fill_value_tree(out.outputs, g.outputs)


def encode_graph(g: Graph) -> pb.Graph:
    """The wire form of an engine graph and every function of its library (bit-exact tensors)."""
    msg = pb.Graph()
    _fill_body(msg, g)
    for key, sub in g.library.items():
        _fill_body(msg.library[key], sub)
    return msg


def network_id(g: Graph) -> str:
    """Content-addressed id of a decoded network: a digest of its canonical wire form (structure, names, values)."""
    return "sha256:" + hashlib.sha256(encode_graph(g).SerializeToString(deterministic=True)).hexdigest()


# ---- GradOperation and calls ----


def decode_grad_operation(msg: pb.GradOperation, field: str = "grad") -> dict[str, Any]:
    """Keyword arguments for the engine's grad_operation (``weights`` a str for bare_weight)."""
    weights = tuple(msg.weights)
    if weights and not msg.get_by_list:
        raise WireError(f"{field}.weights", "weights are listed but get_by_list is false")
    if msg.bare_weight and (not msg.get_by_list or len(weights) != 1):
        raise WireError(f"{field}.bare_weight", f"needs get_by_list and exactly one weight, got {len(weights)}")
    return {
        "get_all": msg.get_all,
        "get_by_list": msg.get_by_list,
        "sens_param": msg.sens_param,
        "weights": weights[0] if msg.bare_weight else weights,
    }


def encode_grad_operation(
    get_all: bool = False, get_by_list: bool = False, sens_param: bool = False, weights: Sequence[str] | str = ()
) -> pb.GradOperation:
    """The wire form of a GradOperation call; a single weight name given as a str sets bare_weight."""
    return pb.GradOperation(
        get_all=get_all,
        get_by_list=get_by_list,
        sens_param=sens_param,
        weights=[weights] if isinstance(weights, str) else list(weights),
        bare_weight=isinstance(weights, str),
    )


def apply_grad_operation(network: Graph, msg: pb.GradOperation, field: str = "grad") -> Graph:
    """The gradient graph of ``network`` for a GradOperation message, with errors naming ``field``."""
    kwargs = decode_grad_operation(msg, field)
    params = {p.name for p in network.params}
    for i, w in enumerate(msg.weights):
        if w not in params:
            raise WireError(
                f"{field}.weights[{i}]",
                f"{shown(w)} is not a parameter of the network {shown_names(sorted(params))}{_names_hint(w, params)}",
            )
    try:
        return grad_operation(network, **kwargs)
    except NotDifferentiableError as exc:
        raise NotDifferentiableError(f"{field}: {exc}") from None
    except GraphError as exc:
        raise WireError(field, str(exc)) from None


def decode_args(
    tensors: Sequence[pb.Tensor], expected: Sequence[Value], limits: Limits = DEFAULT_LIMITS, field: str = "inputs"
) -> list[np.ndarray]:
    """Positional arrays for a graph's declared inputs, each checked against its dtype and shape."""
    if len(tensors) != len(expected):
        want = ", ".join(f"{_bare(v.name)}: {_type_text(v.dtype, v.shape)}" for v in expected[:8]) + (", ..." if len(expected) > 8 else "")
        raise WireError(field, f"expected {len(expected)} tensors ({want}), got {len(tensors)}")
    arrays = []
    for i, (t, v) in enumerate(zip(tensors, expected)):
        a = decode_tensor(t, limits, f"{field}[{i}]")
        if a.dtype != v.dtype or a.shape != v.shape:
            raise WireError(f"{field}[{i}]", f"{shown(v.name)} is declared {_type_text(v.dtype, v.shape)}, got {_type_text(a.dtype, a.shape)}")
        arrays.append(a)
    return arrays


def decode_parameter_overrides(
    tensors: Mapping[str, pb.Tensor], network: Graph, limits: Limits = DEFAULT_LIMITS, field: str = "parameters"
) -> dict[str, np.ndarray]:
    """Parameter values replacing the network's own for one call, each checked against the parameter."""
    params = {p.name: p.value for p in network.params}
    out = {}
    for name in sorted(tensors):
        if name not in params:
            raise WireError(f"{field}{_key(name)}", f"the network has no parameter {shown(name)}{_names_hint(name, params)}")
        a = decode_tensor(tensors[name], limits, f"{field}{_key(name)}")
        v = params[name]
        if a.dtype != v.dtype or a.shape != v.shape:
            raise WireError(f"{field}{_key(name)}", f"parameter {shown(name)} is {_type_text(v.dtype, v.shape)}, got {_type_text(a.dtype, a.shape)}")
        out[name] = a
    return out


@dataclass
class Call:
    """A decoded Grad or Run request: run ``compile_graph(graph)(*args, params=params)``."""

    graph: Graph
    args: list[np.ndarray]
    params: dict[str, np.ndarray]


def decode_grad_call(network: Graph, req: spb.GradRequest, limits: Limits = DEFAULT_LIMITS) -> Call:
    """The gradient graph, positional arrays (inputs, then sens) and overrides of a GradRequest."""
    g = apply_grad_operation(network, req.grad, "grad")
    args = decode_args(req.inputs, network.inputs, limits, "inputs")
    if req.grad.sens_param:
        args += decode_args(req.sens, g.inputs[len(network.inputs):], limits, "sens")
    elif req.sens:
        raise WireError("sens", "sens tensors are given but grad.sens_param is false")
    return Call(g, args, decode_parameter_overrides(req.parameters, network, limits, "parameters"))


def decode_run_call(network: Graph, req: spb.RunRequest, limits: Limits = DEFAULT_LIMITS) -> Call:
    """The network, positional arrays and overrides of a RunRequest."""
    args = decode_args(req.inputs, network.inputs, limits, "inputs")
    return Call(network, args, decode_parameter_overrides(req.parameters, network, limits, "parameters"))


# ---- result trees ----


def encode_tree(tree: Any, out: pb.TensorTree | None = None) -> pb.TensorTree:
    """The wire form of a result: an array, or nested tuples/lists of arrays."""
    msg = pb.TensorTree() if out is None else out
    if isinstance(tree, (tuple, list)):
        msg.tuple.SetInParent()
        for t in tree:
            encode_tree(t, msg.tuple.items.add())
    else:
        encode_tensor(tree, msg.tensor)
    return msg


def decode_tree(msg: pb.TensorTree, limits: Limits = DEFAULT_LIMITS, field: str = "result", depth: int = 1) -> Any:
    """A result tree as nested tuples of read-only arrays, validated like any received tensor."""
    if depth > limits.max_nesting_depth:
        raise LimitError(field, f"tree nests deeper than the limit of {limits.max_nesting_depth}")
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return tuple(decode_tree(t, limits, f"{field}.tuple.items[{i}]", depth + 1) for i, t in enumerate(msg.tuple.items))
    if kind is None:
        raise WireError(field, "neither tensor nor tuple is set")
    return decode_tensor(msg.tensor, limits, f"{field}.tensor")


# ---- op catalog ----


def list_ops() -> spb.ListOpsResponse:
    """Every op of the engine's op table, sorted by name, as ListOps reports it."""
    resp = spb.ListOpsResponse()
    for name in sorted(OPS):
        opdef = OPS[name]
        fixed = opdef.inputs[:-1] if opdef.variadic else opdef.inputs
        m = resp.ops.add(
            name=name,
            inputs=list(fixed),
            variadic_input=opdef.inputs[-1].rstrip("*") if opdef.variadic else "",
            differentiable=opdef.differentiable,
            nondiff_inputs=list(opdef.nondiff),
            doc=opdef.doc,
            outputs=[] if opdef.outputs[-1].endswith("*") else list(opdef.outputs),
            variadic_output=opdef.outputs[-1].rstrip("*") if opdef.outputs[-1].endswith("*") else "",
        )
        for key, spec in opdef.attrs.items():
            a = m.attrs.add(name=key, kind=spb.AttrKind.Value(f"ATTR_KIND_{spec.kind.upper()}"), required=spec.default is REQUIRED, doc=spec.doc)
            if spec.default is not REQUIRED and spec.default is not None:
                encode_attr(spec.default, spec.kind, a.default)
    return resp

