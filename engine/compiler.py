"""Compile once, run many: lowering, dead-code elimination, common-subexpression elimination,
constant folding, negations carried as signs and sums regrouped, then a flat plan that frees every intermediate after
its last use."""
from __future__ import annotations

import functools
import keyword
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from . import heap
from .autodiff import lower
from .builder import gc_paused
from .errors import InputError, Interrupted, shown, shown_names
from .ir import Graph, Node, TensorType, Value, unflatten
from .optable import OPS, broadcast, traffic_cost

FOLD_LIMIT = 1 << 16
"""Largest constant (in elements) that folding may create, so programs stay small."""

COMMUTATIVE = frozenset({"Add", "Mul"})
"""Ops whose result (bit for bit, broadcasting included) does not depend on their inputs' order, so ``Mul(a, b)`` and
``Mul(b, a)`` are one subexpression: reverse mode makes both orders, and higher orders multiply them."""

STRAIGHT_AFTER = 8
"""Runs a program makes with the step loop before its straight-line plan is generated: compiling the plan costs about
as much as 40 runs' worth of loop overhead, so a program run once or a few times never pays for it."""


def _frozen(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.dtype):
        return v.str
    return v


@gc_paused
def optimize(g: Graph) -> Graph:
    """Lower ``g`` and rebuild it without dead nodes, with repeated subexpressions merged, nodes
    over constants (or over types only, like OnesLike) folded to constants and negations carried as signs
    (:func:`_signs`, then merged again, as carrying them makes more subexpressions alike), then chains of sums regrouped
    (:func:`_sums`) and merged once more. When the result still doubles a value (``x + x``), the same is done carrying
    doublings as scales too, and the cheaper of the two graphs (:func:`_run_cost`) is kept: scales spare the large
    passes of a network's second derivative, signs alone the few steps of an elementwise one. A node none of whose inputs
    changed is kept as it is (shared with ``g``, which is never modified), so only what a rewrite reaches is copied."""
    lowered = lower(g).pruned()
    signed = _simplified(lowered, doubling=False)
    if not any(_doubles(n) for n in signed.nodes):
        return signed
    scaled = _simplified(lowered, doubling=True)
    return scaled if _run_cost(scaled) < _run_cost(signed) else signed



def _doubles(n: Node) -> bool:
    """Whether ``n`` is ``x + x``, which the sign pass can carry as a scale (``_signs(g, doubling=True)``)."""
    return n.op == "Add" and n.inputs[0] is n.inputs[1]


STEP_ELEMENTS = 4096
"""A step's fixed cost in elements moved: NumPy's call costs about 0.4 us, a pass over some 4,000 float32 elements."""


def _run_cost(g: Graph) -> int:
    """An estimate of one run's time, to choose between rewrites: per step, its fixed cost and the elements it moves."""
    return sum(STEP_ELEMENTS + sum(v.type.size for v in (*n.inputs, *n.outputs)) for n in g.nodes if n.op != "Const")


def _simplified(g: Graph, doubling: bool) -> Graph:
    """``g`` (lowered and pruned) merged, with negations (and doublings, if ``doubling``) carried as scales, merged
    again, and its sums regrouped (up to SUM_ROUNDS rounds)."""
    merged = _merged(_signs(g, doubling))
    signed = _signs(merged, doubling)
    if signed is not merged:
        merged = _merged(signed)
    for _ in range(SUM_ROUNDS):
        summed, factored = _sums(merged)
        if summed is not merged:
            merged = _merged(summed)
        if not factored:
            break
    return merged


def _merged(g: Graph) -> Graph:
    """``g`` (lowered and pruned) with repeated subexpressions merged and nodes over constants or types folded. A node
    reading a value that was merged or folded away is copied over the value that replaced it but keeps defining its own
    output values, so the nodes after it are kept as they are (a copy made at the seed of a deep chain's backward pass
    reaches two nodes, not every node after it)."""
    env: dict[Value, Value] = {}  # Values hash by identity: no id() ints to allocate per lookup
    consts: dict[Value, np.ndarray] = {}
    ones: set[Value] = set()
    seen: dict[tuple, tuple[Value, ...]] = {}  # by (op, ids of the inputs, attributes): ids, so keys never compare Values
    frozen: dict[int, tuple] = {}  # by id of an attrs dict: builders share one dict among the nodes they inferred alike
    nodes: list[Node] = []
    changed = False
    for n in g.nodes:
        op, attrs, inputs = n.op, n.attrs, n.inputs
        replaced = bool(env) and not env.keys().isdisjoint(inputs)
        ins = [env.get(v, v) for v in inputs] if replaced else inputs
        akey = frozen.get(id(attrs)) if attrs else ()
        if akey is None:
            akey = frozen[id(attrs)] = _attrs_key(attrs)
        key: tuple
        if len(ins) == 2:  # the common case, spelled out: the same key as below
            a, b = id(ins[0]), id(ins[1])
            key = (op, b, a, akey) if b < a and op in COMMUTATIVE else (op, a, b, akey)
        elif len(ins) == 1:
            key = (op, id(ins[0]), akey)
        else:
            key = (op, *(sorted(map(id, ins)) if op in COMMUTATIVE else map(id, ins)), akey)
        outs = seen.get(key) or (_times_one(n, ins, ones) if op == "Mul" and ones else None)
        if outs is None:
            foldable = op != "Const" and (OPS[op].type_only or (bool(ins) and ins[0] in consts and all(v in consts for v in ins)))
            folded = _fold(n, ins, consts) if foldable else None
            if folded is not None:
                nodes.extend(folded)
                outs = tuple(f.outputs[0] for f in folded)
            else:
                outs = n.outputs
                if replaced:
                    changed = True  # a copy over the new inputs, defining the same values: its readers stay as they are
                    nodes.append(Node(op, tuple(ins), attrs, outs, n.name, n.stop_gradient, n.calls))
                else:
                    nodes.append(n)
            if op == "Const":
                consts[outs[0]] = attrs["value"]
            if op == "OnesLike" or (consts and outs[0] in consts and np.all(consts[outs[0]] == 1)):
                ones.add(outs[0])
            seen[key] = outs
        if outs is not n.outputs:
            changed = True
            for v, o in zip(n.outputs, outs):
                env[v] = o
    if not changed:
        return g
    outputs = unflatten(g.outputs, iter([env.get(v, v) for v in g.flat_outputs]))
    return Graph(g.inputs, g.params, tuple(nodes), outputs, g.library, g.name).pruned()


def _signs(g: Graph, doubling: bool = False) -> Graph:
    """``g`` with floating negations (and, if ``doubling``, doublings) carried as scales (powers of two) instead of
    computed where that is exact in IEEE arithmetic up to overflow: a product or quotient of a scaled operand is the scaled product (also a
    product with ``factors``, MatMul; a quotient by a doubled divisor divides by it, as halving after could overflow),
    ``a + -y`` is ``a - y``, ``-x + b`` is ``b - x``, ``a - -y`` is ``a + y``,
    ``x + x`` is x scaled by 2, ``2x - 2y`` is ``2(x - y)`` (``-2x + 2y`` is ``2(y - x)``, so a zero keeps its sign; only
    ``-2x - 2y`` as ``-2(x + y)`` turns a +0 into -0) and ``--x`` is ``x``; a scaled value any other node or an
    output reads is computed once (a Neg, an ``x + x``, or a product with the scale). Higher orders of reverse mode
    negate and double, then multiply and add, so most of their Negs cancel or turn into a Sub and their doublings meet
    at a sum or at an output, often a small one (the PINN's second derivative scales its 1000x1 result, not three
    1000x64 passes)."""
    if not any(n.op == "Neg" or (doubling and _doubles(n)) for n in g.nodes):
        return g
    scale: dict[int, tuple[Value, float]] = {}  # by id of a value of g: (the value of the result, its scale)
    made: dict[tuple[int, float], Value] = {}  # by (id of a value of the result, scale): the computed scaled value
    nodes: list[Node] = []
    products = _factor_ops()

    def plain(v: Value) -> Value:
        x, k = scale.get(id(v), (v, 1.0))
        if k == 1:
            return x
        if (id(x), k) not in made:
            out = Value(v.name if k == -1 else f"{v.name}:x{k:g}", v.type, None)  # a doubling's base keeps the name
            if k == -1:
                nodes.append(Node("Neg", (x,), {}, (out,), f"{v.name}:neg"))
            elif k == 2:
                nodes.append(Node("Add", (x, x), {}, (out,), f"{v.name}:twice"))
            else:
                const, c = _constant(k, v.dtype, f"{v.name}:{k:g}", f"{v.name}:c")
                nodes.extend((const, Node("Mul", (x, c), {}, (out,), f"{v.name}:scaled")))
            made[(id(x), k)] = out
        return made[(id(x), k)]

    def emit(n: Node, op: str, ins: tuple[Value, ...], k: float) -> None:
        outs = tuple(Value(v.name, v.type, None) for v in n.outputs)
        nodes.append(Node(op, ins, n.attrs, outs, n.name, n.stop_gradient, n.calls))
        for v, out in zip(n.outputs, outs):
            scale[id(v)] = (out, k)

    for n in g.nodes:
        got = [scale.get(id(v), (v, 1.0)) for v in n.inputs]
        floating = n.outputs[0].type.dtype.kind == "f"
        twice = doubling and n.op == "Add" and got[0][0] is got[1][0] and got[0][1] == got[1][1]
        scaling = n.op in _SIGNED or (doubling and n.op in products and len(n.inputs) == 2)
        carried = floating and (n.op == "Neg" or twice or (scaling and any(k != 1 for _, k in got)))
        if not carried:
            ins = tuple(plain(v) for v in n.inputs)
            if all(a is v for a, v in zip(ins, n.inputs)):
                nodes.append(n)
            else:
                emit(n, n.op, ins, 1.0)
        elif n.op == "Neg":
            scale[id(n.outputs[0])] = (got[0][0], -got[0][1])
        elif twice:
            scale[id(n.outputs[0])] = (got[0][0], 2 * got[0][1])
        elif n.op == "RealDiv":  # a scaled divisor is divided by as it is: a / 2b as (a / b) * 0.5 could overflow
            den, k = got[1] if abs(got[1][1]) == 1 else (plain(n.inputs[1]), 1.0)
            emit(n, n.op, (got[0][0], den), got[0][1] / k)
        elif n.op == "Mul" or n.op in products and doubling:
            emit(n, n.op, (got[0][0], got[1][0]), got[0][1] * got[1][1])
        elif doubling and n.op in ("Add", "Sub") and abs(got[0][1]) == abs(got[1][1]):
            same = (got[0][1] == got[1][1]) == (n.op == "Add")  # the result is k0 * (a + b) or k0 * (a - b)
            if got[0][1] < 0 and not same:  # -k a + k b is k (b - a): a zero keeps its sign (-x - -x is +0, not -(x - x))
                emit(n, "Sub", (got[1][0], got[0][0]), -got[0][1])
            else:
                emit(n, "Add" if same else "Sub", (got[0][0], got[1][0]), got[0][1])
        elif n.op == "Add" and got[0][1] == got[1][1] == -1 and got[0][0] is got[1][0]:
            emit(n, "Add", (got[0][0], got[0][0]), -1.0)
        elif n.op == "Sub" and got[0][1] == 1 and got[1][1] == -1:
            emit(n, "Add", (got[0][0], got[1][0]), 1.0)
        elif n.op == "Add" and got[0][1] == 1 and got[1][1] == -1:
            emit(n, "Sub", (got[0][0], got[1][0]), 1.0)
        elif n.op == "Add" and got[0][1] == -1 and got[1][1] == 1:
            emit(n, "Sub", (got[1][0], got[0][0]), 1.0)
        else:
            emit(n, n.op, tuple(plain(v) for v in n.inputs), 1.0)
    if not scale:
        return g
    outputs = unflatten(g.outputs, iter([plain(v) for v in g.flat_outputs]))
    return Graph(g.inputs, g.params, tuple(nodes), outputs, g.library, g.name).pruned()


_SIGNED = frozenset({"Neg", "Mul", "RealDiv", "Add", "Sub"})
"""The ops :func:`_signs` carries a negation through."""


SUM_ROUNDS = 3
"""Most times the sum pass runs: factoring a sum's products makes the sums they multiplied terms of a new sum, which
the next round flattens (the 4th derivative of sin(tanh(x)): 50 steps after one round, 48 after two, 46 after three,
where it stays); a round that factored nothing is the last."""

POSITIVE, NEGATIVE = 1, 2
"""Bits of the signs with which the sum pass saw a term added (a zero coefficient counts as both): a term added with both
has cancelled, if only in part (``2y - y`` is y but NaN for an infinite y), so its sum is left as it was."""

SUM_TERMS = 64
"""Most terms a flattened sum collects: a longer one is kept as a term of the next, so flattening stays linear."""


def _sums(g: Graph) -> tuple[Graph, bool]:
    """``g`` with each tree of floating linear ops (``OpDef.linear``: Add, Sub, Neg; and a product with ``factors`` by a
    finite scalar constant, which scales its other input) whose inner results feed only that tree
    computed as one sum of its distinct terms, when that takes fewer steps: a term added k times is scaled once, and
    the terms are added level by level of their coefficients' magnitude, Horner-like (``4a + 2(b - c) + d`` is
    ``((a * 2 + (b - c)) * 2) + d``). Higher orders of reverse mode add the same products again and again (the 4th
    derivative of sin(tanh(x)) sums 10 distinct terms in 17 steps, 11 after this), and products of a shared input that
    only the tree reads become one product of their sum (:func:`_factored`). Only the order of additions and where a
    scaling rounds change (scaling by the small integer counts is exact up to overflow); a sum whose terms cancel, even
    in part (``2y - y``), whose terms no longer broadcast to its type, or with a coefficient below 1 in magnitude or
    beyond its dtype's range (Horner's steps scale up, then down by the last level: ``4a + b * 0.5`` as
    ``(a * 8 + b) * 0.5`` could overflow where the sum does not), is left as it was. Also says whether a product was
    factored (only then can another round find more)."""
    linear, factor_ops = _linear_ops(), _factor_ops()
    scalars: dict[int, float] = {}  # by id of a 0-d constant: its value
    chained: list[tuple[Node, list[tuple[Value, float]]]] = []  # the linear nodes, each with its inputs' coefficients
    for n in g.nodes:
        op = n.op
        if op in linear:
            if n.outputs[0].type.dtype.kind == "f":
                chained.append((n, list(zip(n.inputs, linear[op]))))
        elif op == "Const":
            if not n.outputs[0].type.shape:
                scalars[id(n.outputs[0])] = float(n.attrs["value"].real)
        elif scalars and op in factor_ops and len(n.inputs) == 2 and (id(n.inputs[0]) in scalars) != (id(n.inputs[1]) in scalars):
            x, const = n.inputs if id(n.inputs[1]) in scalars else n.inputs[::-1]
            k = scalars[id(const)]
            if x.type == n.outputs[0].type and x.dtype.kind == "f" and math.isfinite(k):
                chained.append((n, [(x, k)]))  # a product by a finite scalar constant scales its other input
    uses = dict.fromkeys([id(n.outputs[0]) for n, _ in chained], 0)  # by id of a linear node's output: the nodes reading it
    if not any(id(v) in uses for _, pairs in chained for v, _ in pairs):
        return g, False  # no linear node reads another: nothing to flatten
    products = {id(n.outputs[0]): n for n in g.nodes if n.op in factor_ops and len(n.inputs) == 2}
    uses.update(dict.fromkeys(products, 0))
    for n in g.nodes:
        for v in n.inputs:
            if id(v) in uses:
                uses[id(v)] += 1
    for v in g.flat_outputs:
        if id(v) in uses:
            uses[id(v)] += 1  # an output is read once more than by any tree, so it is always computed as itself
    forms: dict[int, dict[int, list[Any]]] = {}  # by id of a linear node's output: id of a term -> [term, coefficient,
    # reads, signs]
    steps: dict[int, int] = {}  # by id of a linear node's output: the nodes its tree has
    parent: dict[int, int] = {}  # by id of an absorbed output: id of the output whose tree took it
    for n, pairs in chained:
        out = n.outputs[0]
        form: dict[int, list[Any]] = {}
        count = 1
        for v, c in pairs:
            sub = forms.get(id(v)) if uses.get(id(v)) == 1 else None
            if sub is None or len(sub) + len(form) > SUM_TERMS:
                terms: Any = ((v, 1.0, 1, POSITIVE),)
            else:
                count += steps[id(v)]
                parent[id(v)] = id(out)
                if not form and c == 1:
                    form = sub  # the only reader takes the tree over as it is: a chain costs one step per node
                    continue
                terms = sub.values()
            for t, a, reads, signs in terms:
                entry = form.setdefault(id(t), [t, 0.0, 0, 0])
                entry[1] += c * a
                entry[2] += reads
                entry[3] |= signs if c > 0 else (signs & POSITIVE) << 1 | signs >> 1 if c < 0 else POSITIVE | NEGATIVE
        forms[id(out)], steps[id(out)] = form, count
    plans = {}
    dropped: set[int] = set()
    for n, _ in chained:
        k = id(n.outputs[0])
        if k in parent or steps[k] == 1:
            continue
        terms = [[t, c] for t, c, _, _ in forms[k].values()]
        cancels = any(signs != POSITIVE and signs != NEGATIVE for *_, signs in forms[k].values())
        largest = float(np.finfo(n.outputs[0].type.dtype).max)
        unscalable = any(not 1 <= abs(c) <= largest for _, c in terms)  # scaled down at the end, Horner's steps could overflow
        if cancels or unscalable or broadcast(*(t.type.shape for t, _ in terms)) != n.outputs[0].type.shape:
            continue
        private = {  # a scaling (itself a tree, whose absorbed sums its own plan may drop) is never factored
            id(t): products[id(t)]
            for t, _, reads, _ in forms[k].values()
            if id(t) in products and id(t) not in forms and uses[id(t)] == reads
        }
        terms, removed = _factored(terms, private)
        plan = _sum_plan(terms)
        if 0 < plan[0] < steps[k] + len(removed):
            plans[k] = plan[1]
            dropped.update(removed)
    if not plans:
        return g, False
    for n in reversed(g.nodes):
        k = id(n.outputs[0])
        if k in parent and (parent[k] in plans or parent[k] in dropped):
            dropped.add(k)
    nodes: list[Node] = []
    for n in g.nodes:
        k = id(n.outputs[0])
        if k in dropped:
            continue
        if k not in plans:
            nodes.append(n)
            continue
        _emit_sum(n, plans[k], nodes)
        nodes[-1] = Node(nodes[-1].op, nodes[-1].inputs, nodes[-1].attrs, n.outputs, n.name)  # the root keeps its value
    return Graph(g.inputs, g.params, tuple(nodes), g.outputs, g.library, g.name).pruned(), bool(dropped & products.keys())


@functools.cache
def _linear_ops() -> dict[str, tuple[float, ...]]:
    """The ops whose entry gives ``linear`` coefficients (read once, after the op modules filled the table)."""
    return {name: opdef.linear for name, opdef in OPS.items() if opdef.linear}


@functools.cache
def _factor_ops() -> dict[str, tuple[int, ...]]:
    """The ops whose entry gives ``factors`` (read once, after the op modules filled the table)."""
    return {name: opdef.factors for name, opdef in OPS.items() if opdef.factors}


@dataclass(frozen=True)
class _Factored:
    """A term of a sum that is one product: ``op(inner sum, factor)`` (the sum at input ``1 - at``), standing for the
    products of a common factor that the sum had as terms."""

    node: Node
    at: int
    factor: Value
    inner: list[tuple[float, list[tuple[Any, bool]]]]
    steps: int

    @property
    def type(self) -> TensorType:
        return self.node.outputs[0].type


FACTOR_MIN_ITEMSIZE = 4
"""Products narrower than float32 are never factored: in float16 ``(a + b) * y`` overflows where ``a*y + b*y`` need not."""


def _factored(terms: list[list[Any]], products: dict[int, Node]) -> tuple[list[list[Any]], list[int]]:
    """``terms`` with the ``products`` (by id of a term: its node; only nodes of this sum read them) that share an input
    (``OpDef.factors``: ``a * y + b * y`` is ``(a + b) * y``) grouped into one product of their sum, greedily by the
    largest group while that saves steps; and the ids of the products so replaced."""
    removed: list[int] = []
    while True:
        groups: dict[tuple, dict[int, int]] = {}  # (op, attributes, position or -1 if commutative, id of the shared input) -> term -> its position
        for i, (t, _) in enumerate(terms):
            n = products.get(id(t)) if isinstance(t, Value) else None
            if n is None:
                continue
            for p in _factor_ops()[n.op]:
                key = (n.op, _attrs_key(n.attrs), -1 if n.op in COMMUTATIVE else p, id(n.inputs[p]))
                groups.setdefault(key, {}).setdefault(i, p)
        best = max((m for m in groups.values() if len(m) > 1), key=len, default=None)
        if best is None:
            return terms, removed
        nodes = [products[id(terms[i][0])] for i in best]
        first, p0 = nodes[0], next(iter(best.values()))
        others = [n.inputs[1 - p] for n, p in zip(nodes, best.values())]
        if (len({v.type for v in others}) > 1 or len({n.outputs[0].type for n in nodes}) > 1
                or first.outputs[0].type.dtype.itemsize < FACTOR_MIN_ITEMSIZE):
            return terms, removed
        unit = min((terms[i][1] for i in best), key=abs)
        steps, inner = _sum_plan([[v, terms[i][1] / unit] for v, i in zip(others, best)])
        group = _Factored(first, 1 if first.op in COMMUTATIVE else p0, first.inputs[p0], inner, steps + 1)
        grouped = [*(t for i, t in enumerate(terms) if i not in best), [group, unit]]
        if _sum_plan(grouped)[0] >= _sum_plan(terms)[0] + len(best):
            return terms, removed
        terms = grouped
        removed += [id(n.outputs[0]) for n in nodes]


def _attrs_key(attrs: dict[str, Any]) -> tuple:
    """A hashable key of a node's attributes."""
    return tuple(sorted((k, _frozen(a)) for k, a in attrs.items()))


def _sum_plan(terms: list[list[Any]]) -> tuple[int, list[tuple[float, list[tuple[Any, bool]]]]]:
    """The steps (those of its factored terms included) and the levels (magnitude, then each term with whether it is
    subtracted, in order of appearance; largest magnitude first) of a sum of ``terms`` ([value, nonzero coefficient] pairs)."""
    levels: dict[float, list[tuple[Any, bool]]] = {}
    for t, c in terms:
        levels.setdefault(abs(c), []).append((t, c < 0))
    order = sorted(levels, reverse=True)
    steps = len(terms) + 2 * (len(order) - 1) - len(order) + sum(t.steps for t, _ in terms if isinstance(t, _Factored))
    if order[-1] != 1 or all(neg for _, neg in levels[order[-1]]) and len(order) == 1:
        steps += 1
    return steps, [(m, levels[m]) for m in order]


def _emit_sum(n: Node, levels: list[tuple[float, list[tuple[Any, bool]]]], nodes: list[Node]) -> Value:
    """Append to ``nodes`` the steps computing the sum ``levels`` describes (see :func:`_sum_plan`); its value."""
    dtype = n.outputs[0].type.dtype
    for k, (m, terms) in enumerate(levels):
        if any(isinstance(t, _Factored) for t, _ in terms):
            levels[k] = (m, [(_emit_factored(n, t, nodes) if isinstance(t, _Factored) else t, neg) for t, neg in terms])

    def emit(op: str, a: Value, b: Value | None = None) -> Value:
        ins = (a,) if b is None else (a, b)
        shape = a.type.shape if b is None else tuple(np.broadcast_shapes(a.type.shape, b.type.shape))
        out = Value(f"{n.outputs[0].name}:s{len(nodes)}", TensorType(dtype, shape), None)
        nodes.append(Node(op, ins, {}, (out,), f"{n.name}:s{len(nodes)}"))
        return out

    def scale(a: Value, factor: float) -> Value:
        const, c = _constant(factor, dtype, f"{n.name}:x{factor:g}", f"{n.name}:c{len(nodes)}")
        nodes.append(const)
        return emit("Mul", a, c)

    def level_sum(terms: list[tuple[Value, bool]]) -> tuple[Value, bool]:
        plus, minus = [t for t, neg in terms if not neg], [t for t, neg in terms if neg]
        negated = not plus
        first, adds, subs = (plus[0], plus[1:], minus) if plus else (minus[0], minus[1:], [])
        for t in adds:
            first = emit("Add", first, t)
        for t in subs:
            first = emit("Sub", first, t)
        return first, negated

    acc, neg = level_sum(levels[0][1])
    for (prev, _), (m, terms) in zip(levels, levels[1:]):
        acc = scale(acc, -prev / m if neg else prev / m)
        s, sneg = level_sum(terms)
        acc, neg = emit("Sub" if sneg else "Add", acc, s), False
    last = levels[-1][0]
    if last != 1:
        acc = scale(acc, -last if neg else last)
    elif neg:
        acc = emit("Neg", acc)
    return acc


def _emit_factored(n: Node, t: _Factored, nodes: list[Node]) -> Value:
    """Append to ``nodes`` the steps computing the factored term ``t`` (its sum, then the one product); its value."""
    inner = _emit_sum(n, t.inner, nodes)
    out = Value(f"{t.node.outputs[0].name}:f", t.type, None)
    ins = (inner, t.factor) if t.at == 1 else (t.factor, inner)
    nodes.append(Node(t.node.op, ins, t.node.attrs, (out,), f"{t.node.name}:f"))
    return out


def _times_one(n: Node, ins: Sequence[Value], ones: set[Value]) -> tuple[Value, ...] | None:
    """``Mul(x, ones)`` is ``x`` when x already has the product's type: the ones that seed reverse mode
    then cost nothing, and the forward value they were shaped after may become dead."""
    if n.op != "Mul":
        return None
    for a, other in ((ins[0], ins[1]), (ins[1], ins[0])):
        if a in ones and other.type == n.outputs[0].type:
            return (other,)
    return None


def _fold(n: Node, ins: Sequence[Value], consts: dict[Value, np.ndarray]) -> list[Node] | None:
    """Const nodes (named after ``n`` and its outputs) holding the results of ``n``, a node other than a Const whose
    inputs are all constants or whose op reads only its inputs' types (the caller checks), when no result exceeds
    FOLD_LIMIT elements; else None."""
    opdef = OPS[n.op]
    if any(o.type.size > FOLD_LIMIT for o in n.outputs):
        return None
    arrays = [consts[v] if v in consts else np.zeros(v.shape, v.dtype) for v in ins]
    res = opdef.forward(*arrays, **n.attrs)
    nodes = []
    for j, (r, o) in enumerate(zip(res if len(n.outputs) > 1 else (res,), n.outputs)):
        const, c = _constant(r, o.dtype, o.name, n.name if j == 0 else f"{n.name}:{j}")
        consts[c] = const.attrs["value"]
        nodes.append(const)
    return nodes


def _constant(value: Any, dtype: np.dtype, name: str, node_name: str) -> tuple[Node, Value]:
    """A Const node ``node_name`` holding a read-only copy of ``value`` as ``dtype``, and its value ``name``: what
    folding and the scalings of the sign and sum passes add to a graph."""
    arr = np.asarray(value).astype(dtype, copy=True)
    arr.setflags(write=False)
    c = Value(name, TensorType(arr.dtype, arr.shape), None)
    return Node("Const", (), {"value": arr}, (c,), node_name), c


class Program:
    """A graph compiled to a flat list of NumPy calls; call it with the inputs in order."""

    @gc_paused
    def __init__(self, graph: Graph) -> None:
        heap.keep_heap()  # its intermediates' pages are kept for the next run (see heap)
        self.source = graph
        self.graph = g = optimize(graph)
        slot: dict[Value, int] = {}  # Values hash by identity: no id() ints to allocate per lookup
        setdefault = slot.setdefault
        self._inputs = [(setdefault(v, len(slot)), v) for v in g.inputs]
        self._params = {p.name: (setdefault(p.value, len(slot)), p) for p in g.params}
        template: dict[int, np.ndarray] = {}
        plan_nodes: list[Node] = []
        memories: list[str] = []  # by step: its op's memory kind
        fresh: list[TensorType | None] = []  # by step: its result's type if it writes a fresh array (may take out=)
        dying_ins: list[tuple[int, ...]] = []  # by step that is a ufunc: its input slots of its result's type
        ufunc = np.ufunc
        fns: list[Callable[..., Any]] = []
        step_ins: list[tuple[int, ...]] = []
        step_outs: list[tuple[int, ...]] = []
        last: dict[int, int] = {}  # by slot: the last step that reads or writes it
        bound: dict[tuple[int, Callable[..., Any], tuple[TensorType, ...]], Callable[..., Any]] = {}  # by id of an attrs
        # dict (builders share one among the nodes they inferred alike), forward and, for an op with ``bind``, input types
        for n in g.nodes:
            op, attrs = n.op, n.attrs
            if op == "Const":
                template[setdefault(n.outputs[0], len(slot))] = attrs["value"]
                continue
            opdef = OPS[op]
            fwd = opdef.forward
            if attrs:
                types = tuple([v.type for v in n.inputs]) if opdef.bind is not None else ()
                key = (id(attrs), fwd, types)
                fn = bound.get(key)
                if fn is None:
                    fn = bound[key] = opdef.bind(attrs, types) if opdef.bind is not None else functools.partial(fwd, **attrs)
            else:
                fn = fwd
            inputs, outputs = n.inputs, n.outputs
            ins = tuple([setdefault(v, len(slot)) for v in inputs])
            outs = tuple([setdefault(v, len(slot)) for v in outputs])
            k = len(fns)
            for s in ins:
                last[s] = k
            for s in outs:
                last[s] = k
            if fn.__class__ is ufunc and len(outs) == 1:
                t = outputs[0].type
                fresh.append(t)
                dying_ins.append(tuple([s for s, v in zip(ins, inputs) if v.type == t]))
            else:
                fresh.append(outputs[0].type if opdef.out else None)
                dying_ins.append(())
            plan_nodes.append(n)
            memories.append(opdef.memory)
            fns.append(fn)
            step_ins.append(ins)
            step_outs.append(outs)
        out_slots = [setdefault(v, len(slot)) for v in g.flat_outputs]
        self._out_slots = out_slots
        fed = {s for s, _ in self._inputs} | {s for s, _ in self._params.values()}
        self._copied_outputs = [i for i, s in enumerate(out_slots) if s in template or s in fed]
        keep = set(out_slots) | set(template) | {s for s, _ in self._params.values()}
        frees: list[list[int]] = [[] for _ in fns]
        for s, k in last.items():
            if s not in keep:
                frees[k].append(s)
        into = _reused_buffers(memories, fresh, dying_ins, step_ins, step_outs, frees)
        self._steps = list(zip(fns, step_ins, step_outs, map(tuple, frees), into))
        self._plan_nodes = plan_nodes
        self._fed = fed
        self._straight: Callable[..., Any] | None = None
        self._straight_checked: Callable[..., Any] | None = None
        """The straight-line plan asking an ``interrupt`` before each step (a server worker's runs)."""
        self._runs = 0
        self._expected = [(v.dtype, v.shape, v) for _, v in self._inputs]
        self._n_inputs = len(self._inputs)
        for s, p in self._params.values():
            template[s] = p.data
        self._template = [template.get(i) for i in range(len(slot))]
        self._measured: tuple[int, int, int] | None = None
        """``(elements, flops, peak_bytes)``, worked out from the plan when one of them is first read (a program that
        is only run, as the SDK's are, never needs them)."""

    def __getstate__(self) -> dict[str, Any]:
        """What pickling a program keeps (a server worker's plan goes to its local lane so): all but its generated
        straight-line plans, functions ``exec`` made that pickle cannot name; the copy makes its own on its next run."""
        state = self.__dict__.copy()
        state["_straight"] = state["_straight_checked"] = None
        return state

    @property
    def elements(self) -> int:
        """Tensor elements one run reads and writes, over all its steps: a static measure of its work."""
        return self._measures()[0]

    @property
    def flops(self) -> int:
        """Static cost of one run: the sum of each step's ``OpDef.cost`` (element operations; 2·m·n·k for products)."""
        return self._measures()[1]

    @property
    def peak_bytes(self) -> int:
        """Most bytes of tensors live at once during one run, known before it starts: the inputs, parameters
        and constants throughout, each intermediate from the step that makes it until the step that frees it
        (a view keeps the buffer it looks into alive; a step that writes into a dying input's buffer adds none), the
        temporaries of each step (``OpDef.scratch_of``), the outputs, and the copies made of outputs that are inputs,
        parameters or constants."""
        return self._measures()[2]

    def _measures(self) -> tuple[int, int, int]:
        """``(elements, flops, peak_bytes)`` of one run, from each step's node types and the plan's slots, once."""
        measured = self._measured
        if measured is None:
            nbytes = [0 if a is None else a.nbytes for a in self._template]  # constants and parameters
            for s, v in self._inputs:
                nbytes[s] = v.type.nbytes
            elements = flops = 0
            memories, scratch = [], []
            for n, (_, _, outs, _, _) in zip(self._plan_nodes, self._steps):
                opdef = OPS[n.op]
                its, ots = [v.type for v in n.inputs], [v.type for v in n.outputs]
                moved = sum(t.size for t in its) + sum(t.size for t in ots)
                elements += moved
                flops += moved if opdef.cost is traffic_cost else opdef.cost(its, ots, n.attrs)
                scratch.append(opdef.scratch_of(its, ots, n.attrs))
                memories.append(opdef.memory)
                for s, t in zip(outs, ots):
                    nbytes[s] = t.nbytes
            resident = self._fed | {s for s, a in enumerate(self._template) if a is not None}
            copies = sum(nbytes[self._out_slots[i]] for i in self._copied_outputs)
            measured = self._measured = (elements, flops, _peak_bytes(nbytes, resident, memories, self._steps, scratch, copies))
        return measured

    def __str__(self) -> str:
        return str(self.graph)

    def __call__(
        self, *inputs: Any, params: dict[str, Any] | None = None, interrupt: Callable[[], bool] | None = None
    ) -> Any:
        """Run with ``inputs`` (arrays matching the declared dtypes and shapes, in order) and optional
        parameter values overriding the graph's; returns the output tree of NumPy arrays."""
        straight = self._straight
        if straight is not None and interrupt is None and len(inputs) == self._n_inputs:
            return straight(self._template, params, *inputs)  # the plan checks the inputs and parameters itself
        if len(inputs) != len(self._expected):
            names = [v.name for _, v in self._inputs]
            raise InputError(f"graph {shown(self.graph.name)} takes {len(names)} inputs {shown_names(names)}, got {len(inputs)}")
        for i, (a, (dtype, shape, v)) in enumerate(zip(inputs, self._expected)):
            if a.__class__ is not np.ndarray or a.dtype != dtype or a.shape != shape:
                inputs = (*inputs[:i], _check(a, v, "input"), *inputs[i + 1:])
        if params:
            for name, a in params.items():
                slot = self._params.get(name)
                if slot is None:
                    _unknown_parameter(self.graph.name, sorted(self._params), params)
                v = slot[1].value
                if a.__class__ is not np.ndarray or a.dtype != v.type.dtype or a.shape != v.type.shape:
                    params = {**params, name: _check(a, v, "parameter")}
        return self.run(inputs, params, interrupt)

    def run(
        self,
        inputs: Sequence[np.ndarray],
        params: Mapping[str, np.ndarray] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> Any:
        """``self(*inputs, params=params)`` without checking the arrays: for callers that have already
        made sure every one has its declared dtype and shape and every parameter name exists (the straight-line
        plan, once made, checks them anyway: inline, at no cost worth skipping).
        ``interrupt()``, when given, is asked before each step; True stops the run with :class:`Interrupted`."""
        straight = self._straight if interrupt is None else self._straight_checked
        if straight is None and self._runs >= STRAIGHT_AFTER:
            straight = straight_line(self, checked=interrupt is not None)
            if interrupt is None:
                self._straight = straight
            else:
                self._straight_checked = straight
        self._runs += 1
        if straight is not None:
            return straight(self._template, params, *inputs) if interrupt is None else straight(self._template, params, interrupt, *inputs)
        env = list(self._template)
        for (s, _), a in zip(self._inputs, inputs):
            env[s] = a
        if params:
            for name, a in params.items():
                env[self._params[name][0]] = a
        for fn, ins, outs, frees, into in self._steps if interrupt is None else self._checked_steps(interrupt):
            if into >= 0:
                r = fn(*[env[i] for i in ins], out=env[into])
            elif len(ins) == 2:  # the common arities without a list
                r = fn(env[ins[0]], env[ins[1]])
            elif len(ins) == 1:
                r = fn(env[ins[0]])
            else:
                r = fn(*[env[i] for i in ins])
            if len(outs) == 1:
                env[outs[0]] = r
            else:
                for s, x in zip(outs, r):
                    env[s] = x
            for s in frees:
                env[s] = None
        return self._results([env[s] for s in self._out_slots])

    def _results(self, arrays: list[Any]) -> Any:
        """The output tree from the output slots' values: arrays (a ufunc on 0-d arrays gives a NumPy scalar), and
        copies of those that are inputs, parameters or constants, so a caller never holds the program's own arrays."""
        results = [np.asarray(a) for a in arrays]
        for i in self._copied_outputs:
            results[i] = results[i].copy()
        return unflatten(self.graph.outputs, iter(results))

    def _checked_steps(self, interrupt: Callable[[], bool]) -> Iterator[tuple[Any, ...]]:
        """The steps, asking ``interrupt()`` before each (the plain list is iterated when there is nothing to ask)."""
        for k, step in enumerate(self._steps):
            if interrupt():
                _interrupted(self.graph.name, len(self._steps), k)
            yield step


def _interrupted(name: str, steps: int, done: int) -> NoReturn:
    """Raise Interrupted for a run of graph ``name`` stopped before its step ``done`` of ``steps``."""
    raise Interrupted(f"run of graph {shown(name)} interrupted after {done} of {steps} steps")


def _reused_buffers(
    memories: list[str], fresh: list[TensorType | None], dying_ins: list[tuple[int, ...]], step_ins: list[tuple[int, ...]],
    step_outs: list[tuple[int, ...]], frees: list[list[int]],
) -> list[int]:
    """Per step (its op's memory kind, its result's type if it writes a fresh array, for a ufunc its input slots of that
    type, its input and output slots), the slot of a buffer the step writes its result into (``out=``), or -1. Only a
    step that writes fresh arrays takes one (a ufunc without attributes, or an op marked ``out``), and only a buffer of
    its result's dtype and shape that such a step made as a fresh array of rank >= 1 (a 0-d ufunc result is a NumPy
    scalar) and no step that may return a view reads: for a ufunc, an input that dies at that step; else one that died
    at an earlier step, whose free then moves to this step (``frees`` is changed), the most recently dead first (still
    in cache): a fresh buffer of some hundred KiB costs more in page faults than an elementwise step's arithmetic."""
    owned: dict[int, TensorType] = {}  # live fresh buffers no view reads (yet): a slot leaves when it dies or is viewed
    pool: dict[TensorType, list[tuple[int, int]]] = {}
    into = []
    for k, (memory, t, cands, ins, outs, fr) in enumerate(zip(memories, fresh, dying_ins, step_ins, step_outs, frees)):
        if memory != "new":
            for s in ins:  # a buffer a step may return a view of is never written over (it dies at or after this step)
                owned.pop(s, None)
        r = -1
        if t is not None:
            for s in cands:
                if s in owned and s in fr:
                    r = s
                    break
            if r < 0 and pool:
                dead = pool.get(t)
                if dead:
                    r, died = dead.pop()
                    frees[died].remove(r)
                    fr.append(r)
            if t.shape:
                owned[outs[0]] = t
        into.append(r)
        if owned:
            for s in fr:
                dying = owned.pop(s, None)
                if dying is not None and s != r:
                    pool.setdefault(dying, []).append((s, k))
    return into


def straight_line(program: Program, checked: bool = False) -> Callable[..., Any]:
    """The plan as one generated Python function of the slot list and the inputs, returning the output tree (outputs
    that are inputs, parameters or constants copied): one line per step, locals instead of list slots,
    attributes passed as literal keywords, ``del`` where a value dies; the same forward functions in the same order, with
    the same ``out=`` buffers, as the step loop, so results and memory are identical and only the loop's cost goes. It
    begins by checking each input's class, dtype (by identity; an equal dtype that is another object goes to the full
    check) and shape and each given parameter's (inline, cheaper than the
    caller's loop: the slot list is never copied), so a call may go straight to it: ``plan(template, params, *inputs)``.
    ``checked``: ``plan(template, params, interrupt, *inputs)`` asks ``interrupt()`` before each step, as the step loop
    does, and raises Interrupted naming the steps done."""
    space: dict[str, Any] = {}
    used = {s for _, ins, _, _, _ in program._steps for s in ins} | set(program._out_slots)
    taken = [s for s, _ in program._inputs]
    lines = [f"def plan(e, p{', i' if checked else ''}{''.join(f', s{s}' for s in taken)}):"]
    space["halt"] = functools.partial(_interrupted, program.graph.name, len(program._steps))
    space["nd"], space["check"], space["miss"] = np.ndarray, _check, object()
    space["unknown"] = functools.partial(_unknown_parameter, program.graph.name, sorted(program._params))
    for i, (s, v) in enumerate(program._inputs):
        space[f"v{i}"], space[f"d{i}"], space[f"h{i}"] = v, v.dtype, v.shape
        lines.append(f"    if s{s}.__class__ is not nd or s{s}.dtype is not d{i} or s{s}.shape != h{i}:")
        lines.append(f"        s{s} = check(s{s}, v{i}, 'input')")
    lines += ["    if p:", "        n = len(p)"]
    for j, (name, (s, prm)) in enumerate(program._params.items()):
        v = prm.value
        space[f"k{j}"], space[f"pv{j}"], space[f"pd{j}"], space[f"ph{j}"] = name, v, v.dtype, v.shape
        lines += [f"        s{s} = p.get(k{j}, miss)", f"        if s{s} is miss:", f"            s{s} = e[{s}]", "        else:",
                  "            n -= 1", f"            if s{s}.__class__ is not nd or s{s}.dtype is not pd{j} or s{s}.shape != ph{j}:",
                  f"                s{s} = check(s{s}, pv{j}, 'parameter')"]
    lines += ["        if n:", "            unknown(p)", "    else:"]
    lines += [f"        s{s} = e[{s}]" for s, _ in program._params.values()] or ["        pass"]
    in_p = {s for s, _ in program._params.values()}
    lines += [f"    s{s} = e[{s}]" for s in sorted(used - set(taken) - in_p) if program._template[s] is not None or s in program._fed]
    for k, (n, (_, ins, outs, frees, into)) in enumerate(zip(program._plan_nodes, program._steps)):
        opdef = OPS[n.op]
        space[f"f{k}"] = opdef.forward
        if checked:
            lines.append(f"    if i(): halt({k})")
        args = [f"s{s}" for s in ins]
        if opdef.bind is not None and n.attrs:
            space[f"f{k}"] = program._steps[k][0]  # bound once, shared with the step loop
        for j, (key, val) in enumerate(n.attrs.items() if opdef.bind is None else ()):
            if not key.isidentifier() or keyword.iskeyword(key):
                space[f"f{k}"] = functools.partial(opdef.forward, **n.attrs)
                args = args[: len(ins)]
                break
            space[f"a{k}_{j}"] = val
            args.append(f"{key}=a{k}_{j}")
        if into >= 0:
            args.append(f"s{into}" if isinstance(opdef.forward, np.ufunc) and len(args) == len(ins) else f"out=s{into}")
        call = f"f{k}({', '.join(args)})"
        if len(outs) == 1:
            lines.append(f"    s{outs[0]} = {call}")
        else:
            lines.append(f"    r = {call}")
            lines += [f"    s{o} = r[{j}]" for j, o in enumerate(outs)]
            lines.append("    del r")
        if frees:
            lines.append(f"    del {', '.join(f's{s}' for s in frees)}")
    space["asarray"], space["array"] = np.asarray, np.array
    arrays = {outs[0] for n, (_, _, outs, _, _) in zip(program._plan_nodes, program._steps)
              if len(outs) == 1 and n.outputs[0].type.shape and (OPS[n.op].out or isinstance(OPS[n.op].forward, np.ufunc))}
    leaves = iter(  # a ufunc's result of rank >= 1, or an ``out`` op's, is an array already: no asarray to call
        f"array(s{s})" if i in program._copied_outputs else f"s{s}" if s in arrays else f"asarray(s{s})"
        for i, s in enumerate(program._out_slots)
    )
    lines.append(f"    return {_tree_code(program.graph.outputs, leaves)}")
    exec(compile("\n".join(lines), f"<plan of {program.graph.name[:64]}>", "exec"), space)
    return space["plan"]


def _tree_code(tree: Any, leaves: Iterator[str]) -> str:
    """Python source building ``tree``'s nesting of tuples from the leaf expressions, in order."""
    if isinstance(tree, tuple):
        return "(" + "".join(f"{_tree_code(t, leaves)}, " for t in tree) + ")"
    return next(leaves)


def _peak_bytes(
    nbytes: list[int], resident: set[int], memories: list[str], steps: list[tuple[Any, tuple[int, ...], tuple[int, ...], tuple[int, ...], int]],
    scratch: list[int], copies: int,
) -> int:
    """Replay ``steps`` (forward, input slots, output slots, slots freed after the step, the input slot whose buffer the
    output takes over or -1), with each op's memory kind and each step's scratch bytes, counting live bytes:
    ``resident`` slots stay live throughout, a view's buffer is its input's (kept alive by
    reference counts, as NumPy's ``base`` does), each step adds its scratch while it runs, and ``copies`` bytes
    of output copies are made at the end."""
    refs = [0] * len(nbytes)
    own = [0] * len(nbytes)
    parent: dict[int, int] = {}
    for s in resident:
        refs[s], own[s] = 2, nbytes[s]
    live = peak = sum(own)
    for memory, (_, ins, outs, frees, into), extra in zip(memories, steps, scratch):
        for s in outs:
            refs[s] = 1
            if into >= 0:
                own[s], own[into] = own[into], 0
            else:
                own[s] = 0 if memory == "view" else nbytes[s]
                live += own[s]
            if memory != "new":
                parent[s] = ins[0]
                refs[ins[0]] += 1
        if live + extra > peak:
            peak = live + extra
        for s in frees:
            refs[s] -= 1
            while refs[s] == 0:
                live -= own[s]
                if s not in parent:
                    break
                s = parent[s]
                refs[s] -= 1
    return max(peak, live + copies)


def _unknown_parameter(graph: str, names: list[str], params: Mapping[str, Any]) -> NoReturn:
    """The InputError for a parameter value given under a name that ``graph`` has no parameter of."""
    bad = next(n for n in params if n not in names)
    raise InputError(f"graph {shown(graph)} has no parameter {shown(bad)}; parameters: {shown_names(names)}")


def _check(a: Any, v: Value, what: str) -> np.ndarray:
    """``a`` as a plain ndarray (a subclass's data, so that every step computes on plain arrays, and results of rank >= 1
    need no conversion), or InputError unless it is an ndarray of ``v``'s dtype and shape."""
    if not isinstance(a, np.ndarray) or a.dtype != v.dtype or a.shape != v.shape:
        got = f"{a.dtype.name}{list(a.shape)}" if isinstance(a, np.ndarray) else f"a {type(a).__name__} (not an ndarray)"
        if isinstance(a, np.ndarray) and a.dtype.name == v.dtype.name and a.dtype != v.dtype:
            got += f" in another byte order ({a.dtype.str})"
        raise InputError(f"{what} {shown(v.name)} expects {v.dtype.name}{list(v.shape)}, got {got}")
    return np.asarray(a)


def compile_graph(graph: Graph) -> Program:
    """Compile ``graph`` into a reusable :class:`Program`."""
    return Program(graph)
