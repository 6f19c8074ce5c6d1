"""Forward mode as a graph transform, derived from the VJP rules, and Jacobians in either mode.

A VJP graph is linear in its cotangent ``u``, so the JVP is its transpose: ``J v = d/du <vjp(u), v>``.
``jvp`` builds the forward and the VJP with a placeholder ``u`` (zeros), then differentiates
``<vjp(u), v>`` with respect to ``u`` by reverse mode again. The nodes that depend on ``u`` only feed
the discarded VJP values, so pruning leaves the forward, the residuals the VJP rules read (``cos x``,
weights) and one linear tangent pass: no op needs a JVP rule of its own, and the result is an ordinary
graph in the same IR, so forward and reverse mode compose to any order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .autodiff import backprop, check_positions, fresh_name, inline, vjp
from .builder import GraphBuilder, gc_paused, signature_copy
from .errors import GraphError, shown
from .ir import Graph, Value, flatten, unflatten
from .optable import F

MAX_JACOBIAN_COLUMNS = 4096
"""Most basis vectors one Jacobian node may unroll into (input elements in forward mode, output elements in reverse)."""

MAX_UNROLLED_NODES = 1 << 17
"""Most nodes the unrolled passes of one Jacobian may add, checked before any is built."""


@gc_paused
def jvp(g: Graph, positions: Sequence[int]) -> Graph:
    """A graph over ``g``'s inputs followed by one tangent per input at ``positions`` whose output is
    ``(g's output tree, the tangent tree of the same structure)``."""
    key = ("jvp", tuple(positions))
    cached = g.derived.get(key)
    if cached is not None:
        return cached
    check_positions(g, positions, "Jvp")
    b, args = signature_copy(g, f"jvp_{g.name}")
    taken = {v.name for v in args} | {p.name for p in g.params}
    tangents = [b.input(fresh_name(taken, f"{args[i].name}_dot"), args[i].dtype, args[i].shape) for i in positions]
    out = inline(b, g, args)
    leaves = flatten(out)
    us = [F.ZerosLike(o) for o in leaves]
    grads = backprop(b, list(b.nodes), [args[i] for i in positions], leaves, us)
    dots = backprop(b, list(b.nodes), us, grads, tangents)
    result = b.build((out, unflatten(out, iter(dots)))).pruned()
    return g.keep_derived(key, result)


@gc_paused
def jacobian(g: Graph, positions: Sequence[int], mode: str) -> Graph:
    """A graph over ``g``'s inputs whose output is ``(g's output tree, jacobians)``, where ``jacobians`` holds, for
    each output leaf i and then each position j, d out_i / d x_j of shape ``out_i.shape + x_j.shape``.
    ``mode`` "forward" unrolls one JVP per input element, "reverse" one VJP per output element."""
    if mode not in ("forward", "reverse"):
        raise GraphError(f"Jacobian over {shown(g.name)}: mode must be 'forward' or 'reverse', got {shown(mode)}")
    key = ("jacobian", tuple(positions), mode)
    cached = g.derived.get(key)
    if cached is not None:
        return cached
    check_positions(g, positions, "Jacobian")
    b, args = signature_copy(g, f"jac_{g.name}")
    out = inline(b, g, args)
    leaves = flatten(out)
    xs = [args[i] for i in positions]
    if mode == "forward":
        jacs = _forward_columns(b, g, args, positions, leaves)
    else:
        jacs = _reverse_rows(b, g, args, positions, leaves)
    result = b.build((out, tuple(jacs[i][j] for i in range(len(leaves)) for j in range(len(xs))))).pruned()
    return g.keep_derived(key, result)


def _check_columns(g: Graph, count: int, what: str, pass_nodes: int) -> None:
    """Refuse, before unrolling, more than MAX_JACOBIAN_COLUMNS passes or more than MAX_UNROLLED_NODES nodes."""
    if count > MAX_JACOBIAN_COLUMNS:
        raise GraphError(
            f"Jacobian over {shown(g.name)}: {count} {what} would each need a pass; at most {MAX_JACOBIAN_COLUMNS} are supported"
        )
    if count * pass_nodes > MAX_UNROLLED_NODES:
        raise GraphError(
            f"Jacobian over {shown(g.name)}: {count} {what} times {pass_nodes} nodes per pass exceeds {MAX_UNROLLED_NODES} nodes"
        )


def _basis(v: Value, k: int) -> np.ndarray:
    e = np.zeros(v.type.size, v.dtype)
    e[k] = 1
    return e.reshape(v.shape)


def _forward_columns(b: GraphBuilder, g: Graph, args: list[Value], positions: Sequence[int], leaves: list[Value]) -> list[list[Value]]:
    """d leaf / d x_j for each leaf and position, one JVP of ``g`` per element of x_j."""
    subs = {p: jvp(g, (p,)) for p in positions}
    _check_columns(g, sum(args[p].type.size for p in positions), "input elements", max(len(s.nodes) for s in subs.values()))
    jacs: list[list[Value]] = [[] for _ in leaves]
    for p in positions:
        x = args[p]
        sub = subs[p]
        cols: list[list[Value]] = [[] for _ in leaves]
        for k in range(x.type.size):
            res = flatten(inline(b, sub, [*args, b.const(_basis(x, k))]))[len(leaves):]
            for i, t in enumerate(res):
                cols[i].append(F.ExpandDims(t, axis=-1))
        for i, leaf in enumerate(leaves):
            jacs[i].append(_assemble(cols[i], -1, leaf.shape + x.shape, leaf))
    return jacs


def _reverse_rows(b: GraphBuilder, g: Graph, args: list[Value], positions: Sequence[int], leaves: list[Value]) -> list[list[Value]]:
    """d leaf / d x_j for each leaf and position, one VJP of ``g`` per element of each leaf."""
    sub = vjp(g, positions, sens_param=True)
    _check_columns(g, sum(v.type.size for v in leaves), "output elements", len(sub.nodes))
    jacs: list[list[Value]] = []
    for i, leaf in enumerate(leaves):
        rows: list[list[Value]] = [[] for _ in positions]
        for k in range(leaf.type.size):
            sens = [b.const(_basis(o, k) if m == i else np.zeros(o.shape, o.dtype)) for m, o in enumerate(leaves)]
            grads = flatten(inline(b, sub, [*args, *sens]))[len(leaves):]
            for j, gr in enumerate(grads):
                rows[j].append(F.ExpandDims(gr, axis=0))
        jacs.append([_assemble(rows[j], 0, leaf.shape + args[p].shape, leaf) for j, p in enumerate(positions)])
    return jacs


def _assemble(parts: list[Value], axis: int, shape: tuple[int, ...], leaf: Value) -> Value:
    """Stack ``parts`` along ``axis`` and reshape to ``shape``; zeros when there are none (an empty leaf or input)."""
    if not parts:
        return leaf.builder.const(np.zeros(shape, leaf.dtype))  # type: ignore[union-attr]
    return F.Reshape(F.Concat(*parts, axis=axis), shape=shape)
