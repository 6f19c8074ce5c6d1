"""Reverse mode as a graph transform, MindSpore's GradOperation and the functional VJP on top of it, and the
lowering that expands nodes carrying a library graph (inner ones first), which is all higher-order
differentiation needs."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .builder import GraphBuilder, gc_paused, signature_copy
from .errors import GraphError, NotDifferentiableError, shown, shown_names
from .ir import Graph, Node, TensorType, Tree, Value, flatten, unflatten
from .optable import OPS, F, total


def inline(b: GraphBuilder, g: Graph, args: Sequence[Value], expand_all: bool = True) -> Tree:
    """Copy ``g``'s nodes into ``b`` applied to ``args``, expanding nodes whose op carries a library graph
    (``OpDef.expand``) unless ``expand_all`` is False (they are then copied as nodes: ``b`` shares the library);
    returns the output tree. ``g``'s parameters are shared with ``b``'s by name (declared in ``b`` if missing)."""
    if len(args) != len(g.inputs):
        raise GraphError(f"graph {shown(g.name)} takes {len(g.inputs)} inputs, got {len(args)}")
    env: dict[Value, Value] = {}  # keyed by the Values themselves, which hash by identity
    for v, a in zip(g.inputs, args):
        if v.type != a.type:
            raise GraphError(f"graph {shown(g.name)}: input {shown(v.name)} is {v.type}, got {shown(a.name)}: {a.type}")
        env[v] = a
    for p in g.params:
        env[p.value] = shared_param(b, p.name, p.data, p.requires_grad)
    copy_node = b.copy_node
    for n in g.nodes:
        ins = [env[v] for v in n.inputs]
        expand = OPS[n.op].expand if expand_all else None
        if expand is not None:
            outs: Sequence[Value] = flatten(inline(b, expand(g.library, n.attrs), ins))
        else:
            outs = copy_node(n, ins)
        if len(outs) == 1:
            env[n.outputs[0]] = outs[0]
        else:
            env.update(zip(n.outputs, outs))
    return unflatten(g.outputs, iter([env[v] for v in flatten(g.outputs)]))


def shared_param(b: GraphBuilder, name: str, data: np.ndarray, requires_grad: bool) -> Value:
    """The parameter ``name`` of ``b``, declared from ``data`` if ``b`` does not have it yet."""
    if not b.has_param(name):
        return b.param(name, data, requires_grad)
    v = b.get_param(name)
    if v.shape != data.shape or v.dtype != data.dtype:
        raise GraphError(f"parameter {shown(name)} is {v.type} in graph {shown(b.name)} but {data.dtype.name}{list(data.shape)} in a sub-graph")
    return v


def lower(g: Graph) -> Graph:
    """The same function with every node that carries a library graph expanded into primitive nodes."""
    if not any(OPS[n.op].lowered for n in g.nodes):
        return g
    b, args = signature_copy(g)
    return b.build(inline(b, g, args))


def fit(ct: Value, t: TensorType) -> Value:
    """Un-broadcast a cotangent to shape ``t.shape`` (sum over broadcast axes) and cast it to
    ``t.dtype``: the one place where broadcasting and integer inputs are handled for every rule."""
    if ct.type == t:
        return ct
    if ct.shape != t.shape:
        lead = ct.ndim - len(t.shape)
        if lead < 0:
            raise GraphError(f"cotangent {shown(ct.name)} {ct.type} has lower rank than its value {t}")
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(t.shape) if d == 1 and ct.shape[lead + i] != 1
        )
        if axes:
            ct = F.ReduceSum(ct, axis=axes, keep_dims=False)
        if ct.shape != t.shape:
            ct = F.Reshape(ct, shape=t.shape)
    if ct.dtype != t.dtype:
        ct = F.Cast(ct, dtype=t.dtype)
    return ct


def backprop(
    b: GraphBuilder, nodes: Sequence[Node], wrt: Sequence[Value], outs: Sequence[Value], cts: Sequence[Value]
) -> list[Value]:
    """Append to ``b`` the nodes computing d(sum_i <outs_i, cts_i>)/d(wrt_j) for each j.

    Visits, iteratively and in reverse, only nodes on a path from ``wrt`` to ``outs`` that are not
    stopped by a node's stop_gradient mark (a StopGradient op stops them through its zero VJP); contributions are summed by Add
    nodes; a ``wrt`` value that does not reach the outputs gets zeros of its shape and dtype."""
    reach = set(wrt)  # Values hash by identity
    active: list[Node] = []
    for n in nodes:
        if n.stop_gradient:
            continue
        if not reach.isdisjoint(n.inputs):
            active.append(n)
            reach.update(n.outputs)
    contribs: dict[Value, list[Value]] = {}
    for o, c in zip(outs, cts):
        if o in reach:
            contribs.setdefault(o, []).append(fit(c, o.type))
    for n in reversed(active):
        outputs = n.outputs
        if len(outputs) == 1:
            g = total(contribs.pop(outputs[0], None))
            if g is None:
                continue
        else:
            gs = [total(contribs.pop(o, None)) for o in outputs]
            if all(g is None for g in gs):
                continue
        opdef = OPS[n.op]
        if opdef.vjp is None:
            raise NotDifferentiableError(
                f"{n.op} {shown(n.name)} has no gradient, but inputs "
                f"{shown_names([v.name for v in n.inputs if v in reach])} need one through it"
            )
        if len(outputs) == 1:
            res = opdef.vjp(g, outputs[0], *n.inputs, **n.attrs)
        else:
            res = opdef.vjp(tuple(gs), outputs, *n.inputs, **n.attrs)
        res = (res,) if not isinstance(res, (tuple, list)) else res
        if len(res) != len(n.inputs):
            raise AssertionError(f"VJP of {n.op} returned {len(res)} cotangents for {len(n.inputs)} inputs")
        for v, ct in zip(n.inputs, res):
            if ct is not None and v in reach:
                contribs.setdefault(v, []).append(ct if ct.type is v.type else fit(ct, v.type))
    return [total(contribs.get(w)) or F.ZerosLike(w) for w in wrt]


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_k`` for the first k that is not in ``taken``; the name chosen is added to it."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _differentiate(
    g: Graph, wrt_inputs: Sequence[int], weights: Sequence[str], sens_param: bool, name: str, used: int | None = None
) -> tuple[GraphBuilder, Tree, list[Value], list[Value]]:
    """Build the forward of ``g`` followed by its backward pass; returns the builder, the forward's output
    tree, and the gradients for the chosen inputs (by position) and weights (by name). ``used`` limits the
    differentiated outputs to the first ``used`` leaves (the others are values only)."""
    b, args = signature_copy(g, name)
    out = inline(b, g, args)
    leaves = flatten(out)[:used]
    if sens_param:
        base = "sens" if len(leaves) == 1 else "sens_0"
        sens = []
        taken = {v.name for v in b.inputs} | {p.name for p in b.params}
        for i, o in enumerate(leaves):
            sens.append(b.input(fresh_name(taken, base if i == 0 else f"sens_{i}"), o.dtype, o.shape))
    else:
        sens = [F.OnesLike(o) for o in leaves]
    wrt = [args[i] for i in wrt_inputs]
    for w in weights:
        if not b.has_param(w):
            raise GraphError(
                f"GradOperation over {shown(g.name)}: weight {shown(w)} is not a parameter of the network; "
                f"parameters: {shown_names([p.name for p in g.params])}"
            )
        wrt.append(b.get_param(w))
    grads = backprop(b, list(b.nodes), wrt, leaves, sens)
    return b, out, grads[: len(wrt_inputs)], grads[len(wrt_inputs):]


@gc_paused
def grad(g: Graph, wrt: Sequence[str], sens_param: bool = False) -> Graph:
    """Reverse mode: a graph taking ``g``'s inputs (then one sensitivity per output leaf if
    ``sens_param``, else ones) and returning the tuple of gradients of the named inputs/parameters."""
    names = [v.name for v in g.inputs]
    pos = [names.index(w) for w in wrt if w in names]
    weights = [w for w in wrt if w not in names]
    b, _, gi, gw = _differentiate(g, pos, weights, sens_param, f"grad_{g.name}")
    by_name = dict(zip([w for w in wrt if w in names], gi)) | dict(zip(weights, gw))
    return b.build(tuple(by_name[w] for w in wrt)).pruned()


@gc_paused
def grad_operation(
    g: Graph,
    get_all: bool = False,
    get_by_list: bool = False,
    sens_param: bool = False,
    weights: Sequence[str] | str = (),
) -> Graph:
    """MindSpore's GradOperation as a graph transform.

    Returns a graph over ``g``'s inputs (plus one sensitivity input per output leaf when
    ``sens_param``) whose output is: the gradient of the first input (no flags); a tuple over all
    inputs (``get_all``); a tuple over ``weights`` (``get_by_list``; a bare gradient when ``weights``
    is one name given as a str); or ``((inputs...), (weights...))`` with both flags. Without
    ``sens_param`` every output leaf gets a sensitivity of ones, so tuple outputs are summed."""
    bare_weight = isinstance(weights, str)
    wlist = (weights,) if isinstance(weights, str) else tuple(weights)
    key = (get_all, get_by_list, sens_param, wlist, bare_weight)
    cached = g.derived.get(key)
    if cached is not None:
        return cached
    if not get_by_list and wlist:
        raise GraphError(f"GradOperation over {shown(g.name)}: weights {shown_names(list(wlist))} given without get_by_list")
    if not get_all and not get_by_list and not g.inputs:
        raise GraphError(f"GradOperation over {shown(g.name)}: the network has no inputs to differentiate")
    wrt_inputs = list(range(len(g.inputs))) if get_all else ([0] if not get_by_list else [])
    b, _, gi, gw = _differentiate(g, wrt_inputs, wlist if get_by_list else (), sens_param, f"grad_{g.name}")
    out = grad_structure(gi + gw, len(gi), get_all, get_by_list, bare_weight)
    result = b.build(out).pruned()
    return g.keep_derived(key, result)


def grad_structure(leaves: Sequence[Any], n_inputs: int, get_all: bool, get_by_list: bool, bare_weight: bool) -> Any:
    """MindSpore's GradOperation result from flat gradients (``n_inputs`` input gradients, then the weights'):
    the first input's gradient (no flags), a tuple over inputs (``get_all``), over weights (``get_by_list``;
    the bare gradient when ``bare_weight``), or ``(inputs, weights)`` with both flags."""
    if not get_all and not get_by_list:
        return leaves[0]
    grads_in = tuple(leaves[:n_inputs])
    grads_w: Any = tuple(leaves[n_inputs:])
    if bare_weight:
        grads_w = grads_w[0]
    if get_all and get_by_list:
        return grads_in, grads_w
    return grads_in if get_all else grads_w


def check_positions(g: Graph, positions: Sequence[int], what: str) -> tuple[int, ...]:
    """``positions`` as a tuple of distinct input indices of ``g``, or a GraphError naming the transform and graph."""
    n = len(g.inputs)
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise GraphError(f"{what} over {shown(g.name)}: position {bad[0]} is out of range; the graph has {n} inputs")
    if len(set(positions)) != len(positions):
        raise GraphError(f"{what} over {shown(g.name)}: positions {list(positions)} repeat an input")
    return tuple(positions)


@gc_paused
def vjp(g: Graph, positions: Sequence[int], weights: Sequence[str] = (), sens_param: bool = False, used: int | None = None) -> Graph:
    """Reverse mode for the functional transforms: a graph over ``g``'s inputs (then one cotangent per
    differentiated output leaf when ``sens_param``, else ones) whose output is ``(g's output tree, (gradients of
    the inputs at positions..., of the weights...))``; ``used`` differentiates only the first output leaves."""
    key = ("vjp", tuple(positions), tuple(weights), sens_param, used)
    cached = g.derived.get(key)
    if cached is not None:
        return cached
    check_positions(g, positions, "Vjp")
    b, out, gi, gw = _differentiate(g, positions, weights, sens_param, f"vjp_{g.name}", used)
    result = b.build((out, tuple(gi + gw))).pruned()
    return g.keep_derived(key, result)
