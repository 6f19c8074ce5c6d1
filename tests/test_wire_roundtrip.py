"""Random networks built from the op table survive engine -> proto -> engine -> proto unchanged:
identical messages and bytes (bit-exact tensors), the same structural hash and network id."""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradserve.engine import OPS, Graph, GraphBuilder, GraphError, TensorType, Value, flatten
from gradserve.engine.optable import REQUIRED
from gradserve.proto import codec
from gradserve.v1 import graph_pb2 as pb

SHAPES = [(), (3,), (2, 3), (3, 3)]
F32 = np.dtype("float32")


def shape_preserving_ops(arity: int, shape: tuple[int, ...]) -> list[str]:
    """Ops of the table that take ``arity`` float32 tensors of ``shape`` with default attributes
    and return one float32 tensor of that shape (so they chain freely)."""
    t = TensorType(F32, shape)
    found = []
    for name, op in sorted(OPS.items()):
        if op.variadic or len(op.inputs) != arity or any(a.default is REQUIRED for a in op.attrs.values()):
            continue
        try:
            out = op.infer([t] * arity, **{k: a.default for k, a in op.attrs.items()})
        except GraphError:
            continue
        if out == t:
            found.append(name)
    return found


UNARY = {s: shape_preserving_ops(1, s) for s in SHAPES}
BINARY = {s: shape_preserving_ops(2, s) for s in SHAPES}
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def test_the_table_offers_enough_ops() -> None:
    assert all(len(UNARY[s]) >= 5 and len(BINARY[s]) >= 3 for s in SHAPES), (UNARY, BINARY)


@st.composite
def trees(draw: Any, values: list[Value], depth: int = 0) -> Any:
    if depth < 3 and draw(st.booleans()):
        return tuple(draw(trees(values, depth + 1)) for _ in range(draw(st.integers(0, 3))))
    return draw(st.sampled_from(values))


def chain(draw: Any, name: str, library: dict[str, Graph], shape: tuple[int, ...], n_inputs: int) -> Graph:
    """A random graph over ``n_inputs`` float32 inputs of ``shape``: ops from the table, constants,
    casts, parameters, stop_gradient marks, custom and automatic names, a random output tree."""
    b = GraphBuilder(name, library)
    vals = [b.input(f"x{i}", "float32", shape) for i in range(n_inputs)]
    for k in range(draw(st.integers(0, 2))):
        vals.append(b.param(f"{name}_w{k}", draw(hnp.arrays(F32, shape, elements=floats32)), draw(st.booleans())))
    for k in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "cast"]))
        opts: dict[str, Any] = {
            "name": draw(st.one_of(st.none(), st.just(f"{name}_n{k}"))),
            "stop_gradient": draw(st.booleans()),
            "output_names": draw(st.one_of(st.none(), st.just([f"{name}_v{k}"]))),
        }
        if kind == "unary":
            out = b.add_node(draw(st.sampled_from(UNARY[shape])), [draw(st.sampled_from(vals))], **opts)
        elif kind == "binary":
            ins = [draw(st.sampled_from(vals)), draw(st.sampled_from(vals))]
            out = b.add_node(draw(st.sampled_from(BINARY[shape])), ins, **opts)
        elif kind == "const":
            data = draw(hnp.arrays(F32, shape, elements=floats32))
            out = b.add_node("Const", [], {"value": data}, **opts)
        else:
            mid = b.add_node("Cast", [draw(st.sampled_from(vals))], {"dtype": draw(st.sampled_from(["float16", "float64"]))})
            out = b.add_node("Cast", list(mid), {"dtype": "float32"}, **opts)
        vals.append(out[0])
    return b.build(draw(trees(vals)))


@st.composite
def networks(draw: Any) -> Graph:
    """A main graph applying random GradOperations (first and second order) to a random library graph."""
    shape = draw(st.sampled_from(SHAPES))
    n = draw(st.integers(1, 2))
    library: dict[str, Graph] = {}
    library["f"] = f = chain(draw, "f", library, shape, n)
    while not flatten(f.outputs):
        library["f"] = f = chain(draw, "f", library, shape, n)
    b = GraphBuilder("g", library)
    xs = [b.input(f"x{i}", "float32", shape) for i in range(n)]
    outs = b.add_node("GradOperation", xs, {"fn": "f", "get_all": True})
    library["g"] = b.build(tuple(outs))
    b = GraphBuilder("main", library)
    xs = [b.input(f"x{i}", "float32", shape) for i in range(n)]
    flags = {"get_all": draw(st.booleans()), "sens_param": draw(st.booleans())}
    weights = [p.name for p in f.params]
    if weights and draw(st.booleans()):
        flags |= {"get_by_list": True, "weights": draw(st.permutations(weights))}
    sens = [b.input(f"s{i}", "float32", v.shape) for i, v in enumerate(flatten(f.outputs))] if flags["sens_param"] else []
    first = b.add_node("GradOperation", xs + sens, {"fn": "f", **flags}, name="first")
    second = b.add_node("GradOperation", xs, {"fn": "g"}, name="second", stop_gradient=draw(st.booleans()))
    return b.build((tuple(first), second[0]) if draw(st.booleans()) else tuple(first + second))


def _same_tensors(a: pb.Graph, b: pb.Graph) -> None:
    """Every parameter and constant tensor is bit-for-bit the same (NaN payloads included)."""
    ta = [p.value.data for p in a.parameters] + [n.attrs["value"].tensor.data for n in a.nodes if n.op == "Const"]
    tb = [p.value.data for p in b.parameters] + [n.attrs["value"].tensor.data for n in b.nodes if n.op == "Const"]
    assert ta == tb


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks())
def test_random_networks_round_trip_unchanged(g: Graph) -> None:
    m1 = codec.encode_graph(g)
    wire = m1.SerializeToString(deterministic=True)
    g2 = codec.decode_graph(pb.Graph.FromString(wire))
    m2 = codec.encode_graph(g2)
    assert m2 == m1
    assert m2.SerializeToString(deterministic=True) == wire
    assert g2.structural_hash() == g.structural_hash()
    for key in g.library:
        assert g2.library[key].structural_hash() == g.library[key].structural_hash()
        _same_tensors(m1.library[key], m2.library[key])
    _same_tensors(m1, m2)
    assert codec.network_id(g2) == codec.network_id(g)
    for p1, p2 in zip(g.params, g2.params):
        assert p1.data.tobytes() == p2.data.tobytes() and p1.requires_grad == p2.requires_grad


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks(), st.randoms(use_true_random=False))
def test_node_order_on_the_wire_does_not_matter(g: Graph, rnd: Any) -> None:
    m1 = codec.encode_graph(g)
    for graph in [m1, *m1.library.values()]:
        nodes = list(graph.nodes)
        rnd.shuffle(nodes)
        del graph.nodes[:]
        graph.nodes.extend(nodes)
    g2 = codec.decode_graph(m1)
    assert sorted(n.name for n in g2.nodes) == sorted(n.name for n in g.nodes)
    m2 = codec.encode_graph(g2)
    assert codec.encode_graph(codec.decode_graph(m2)) == m2
