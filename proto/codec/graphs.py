"""Graphs: an engine Graph and its library <-> a gradserve.v1 Graph, and the network id derived from it."""
from __future__ import annotations

import hashlib
import heapq
import math
import re
from typing import Any, Mapping

from gradserve.engine import (
    OPS,
    Graph,
    GraphBuilder,
    GraphError,
    NotDifferentiableError,
    OpDef,
    Value,
    get_op,
)
from gradserve.engine.errors import NAME_LIMIT, shown, shown_names
from gradserve.v1 import graph_pb2 as pb

from .attrs import decode_attr, encode_attr
from .errors import LimitError, WireError, bare, field_key, names_hint, type_text
from .limits import DEFAULT_LIMITS, Limits
from .tensors import check_shape, decode_dtype, decode_tensor, encode_dtype, encode_tensor


def _fn_refs(g: pb.Graph) -> list[tuple[int, str]]:
    """(node index, function name) of every well-formed library reference in ``g``: the attributes an op's
    table entry names in ``calls`` (GradOperation's and the other transform nodes' ``fn``), the only
    cross-graph references."""
    return [
        (i, n.attrs[a].string_value)
        for i, n in enumerate(g.nodes)
        if n.op in OPS
        for a in OPS[n.op].calls
        if a in n.attrs and n.attrs[a].WhichOneof("value") == "string_value"
    ]


def _function_order(msg: pb.Graph, limits: Limits, path: str) -> list[str]:
    """Library function names, each after the functions it refers to; rejects missing references,
    cycles, and chains of references deeper than the nesting limit."""
    lib = msg.library
    graphs = [(None, msg, path)] + [(k, lib[k], f"{path}.library{field_key(k)}") for k in sorted(lib)]
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
                    f"refers to function {shown(fn)}, which is not in {path}.library {shown_names(sorted(lib))}{names_hint(fn, lib)}",
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
                raise WireError(f"{path}.library{field_key(name)}", f"functions refer to each other in a cycle: {_cycle_text(list(map(bare, cycle)))}")
            if k == 0:
                on_path.append(name)
                on_set.add(name)
            if k < len(refs[name]):
                stack += [(name, k + 1), (refs[name][k], 0)]
                continue
            on_set.discard(on_path.pop())
            hops[name] = max((1 + hops[r] for r in refs[name]), default=0)
            if hops[name] > limits.max_nesting_depth:
                raise LimitError(f"{path}.library{field_key(name)}", _nesting_text(hops[name], limits))
            order.append(name)
    main_hops = max((1 + hops[r] for r in refs[None]), default=0)
    if main_hops > limits.max_nesting_depth:
        raise LimitError(path, _nesting_text(main_hops, limits))
    return order


def _nesting_text(hops: int, limits: Limits) -> str:
    """The message for transform nodes nested through too many library functions."""
    return f"GradOperation and other transform nodes nest {hops} deep through library functions; the limit is {limits.max_nesting_depth}"


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
                    f"value {shown(name)} is not defined (not an input, parameter or node output){names_hint(name, defined)}",
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
    """Nodes the builder's newest node stands for once expanded: the size of a transform node's expansion
    (already built, and cached, by the engine when the node was added), else 1."""
    n = b.nodes[-1]
    expand = OPS[n.op].expand
    return 1 if expand is None else len(expand(b.library, n.attrs).nodes)


def _decode_node_attrs(n: pb.Node, opdef: OpDef, limits: Limits, npath: str) -> dict[str, Any]:
    """A node's attributes as engine values, rejecting unknown names and wrong kinds (the engine fills defaults)."""
    attrs = {}
    for key in sorted(n.attrs):
        spec = opdef.attrs.get(key)
        if spec is None:
            raise WireError(
                f"{npath}.attrs{field_key(key)}",
                f"{opdef.name} has no attribute {shown(key)}; it takes {sorted(opdef.attrs)}{names_hint(key, opdef.attrs)}",
                _node_label(n),
            )
        attrs[key] = decode_attr(n.attrs[key], spec.kind, limits, f"{npath}.attrs{field_key(key)}", _node_label(n))
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
        raise WireError(f"{field}.value", f"value {shown(msg.value)} is not defined in this graph{names_hint(msg.value, env)}")
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
                    f"{shown(made.name)} would be {type_text(made.dtype, made.shape)} ({math.prod(made.shape)} elements); the limit is {limits.max_tensor_elements}",
                    label,
                )
        env.update((made.name, made) for made in outs)
        expanded += _expanded_nodes(b)
        if expanded > limits.max_graph_nodes:
            raise LimitError(npath, f"expanding GradOperation and other transform nodes makes the graph larger than {limits.max_graph_nodes} nodes", label)
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
        library[fn] = _decode_body(msg.library[fn], msg.library[fn].name or fn, library, limits, f"{path}.library{field_key(fn)}")
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
    return message_id(encode_graph(g))


def message_id(msg: pb.Graph) -> str:
    """``network_id`` of the network ``encode_graph`` wrote as ``msg``, for a caller that already holds it."""
    return "sha256:" + hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()
