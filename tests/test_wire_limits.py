"""Caller mistakes that NumPy would only meet at run time, and inputs built to make decoding slow or
large, are refused while the wire graph is decoded: a WireError naming the field and node, with a short
message, before anything large is allocated; the server answers them INVALID_ARGUMENT."""
from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import grpc
import numpy as np
import pytest

from gradserve.engine import EngineError, GraphBuilder, GraphError, ShapeError, compile_graph
from gradserve.proto import codec
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2, service_pb2_grpc

MIB = 1 << 20
SHORT = 1000
"""Longest message any of these errors may have."""


def net(inputs: list[tuple[str, str, tuple[int, ...]]], nodes: list[tuple[str, list[str], list[str], dict[str, tuple[str, Any]]]],
        out: str, name: str = "") -> pb.Graph:
    """A wire graph: inputs (name, dtype, shape); nodes (op, inputs, outputs, {attr: (kind, value)}); one output.
    ``name`` names the first node."""
    g = pb.Graph(name="g")
    for n, dt, shape in inputs:
        g.inputs.add(name=n, dtype=codec.encode_dtype(np.dtype(dt)), shape=list(shape))
    for i, (op, ins, outs, attrs) in enumerate(nodes):
        node = g.nodes.add(op=op, inputs=ins, outputs=outs, name=name if i == 0 else f"n{i}")
        for key, (kind, value) in attrs.items():
            codec.encode_attr(value, kind, node.attrs[key])
    g.outputs.value = out
    return g


def one(op: str, dtype: str, shape: tuple[int, ...], /, name: str = "bad", **attrs: tuple[str, Any]) -> pb.Graph:
    """x -> op[attrs] -> y."""
    return net([("x", dtype, shape)], [(op, ["x"], ["y"], attrs)], "y", name)


def to_rank64() -> tuple[str, list[str], list[str], dict[str, tuple[str, Any]]]:
    """A node reshaping x: f32[1] to rank 64, the most NumPy holds."""
    return ("Reshape", ["x"], ["r"], {"shape": ("ints", (1,) * 64)})


F32 = "float32"
BAD: dict[str, tuple[pb.Graph, str, list[str]]] = {
    # name: (graph, field, fragments of the message)
    "ReduceMax over an empty axis": (one("ReduceMax", F32, (0, 3), axis=("ints", (0,))), "graph.nodes[0]", ["axis 0", "(0, 3)", "empty"]),
    "ReduceMax of an empty tensor": (one("ReduceMax", F32, (2, 0)), "graph.nodes[0]", ["axis 1", "empty"]),
    "Softmax over an empty axis": (one("Softmax", F32, (2, 0)), "graph.nodes[0]", ["axis 1", "(2, 0)", "empty"]),
    "LogSoftmax of an empty vector": (one("LogSoftmax", F32, (0,)), "graph.nodes[0]", ["axis 0", "empty"]),
    "SoftmaxCrossEntropy without classes": (
        net([("z", F32, (4, 0)), ("t", F32, (4, 0))], [("SoftmaxCrossEntropyWithLogits", ["z", "t"], ["loss", "bp"], {})], "loss", "bad"),
        "graph.nodes[0]", ["axis 1", "empty"]),
    "Reshape to rank 65": (one("Reshape", F32, (1,), shape=("ints", (1,) * 65)), "graph.nodes[0]", ["rank 65", "at most 64"]),
    "ExpandDims to rank 65": (
        net([("x", F32, (1,))], [to_rank64(), ("ExpandDims", ["r"], ["y"], {"axis": ("int", 0)})], "y"),
        "graph.nodes[1]", ["rank 65", "at most 64"]),
    "Tile to rank 65": (one("Tile", F32, (1,), multiples=("ints", (1,) * 65)), "graph.nodes[0]", ["rank 65"]),
    "BroadcastTo rank 65": (one("BroadcastTo", F32, (1,), shape=("ints", (1,) * 65)), "graph.nodes[0]", ["rank 65"]),
    "StridedSlice adding an axis past rank 64": (
        net([("x", F32, (1,))], [to_rank64(), ("StridedSlice", ["r"], ["y"], {
            "begin": ("ints", (0,)), "end": ("ints", (0,)), "strides": ("ints", (1,)), "new_axis_mask": ("int", 1)})], "y"),
        "graph.nodes[1]", ["more than 64 dimensions"]),
    "Reshape whose element count wraps int64": (
        one("Reshape", F32, (0,), shape=("ints", (1 << 32, 1 << 32, 0))), "graph.nodes[0]", ["int64"]),
    "Reshape of an empty tensor to more bytes than int64 counts": (
        one("Reshape", "float64", (0,), shape=("ints", ((1 << 63) - 1, 0))), "graph.nodes[0]", ["int64"]),
    "Tile whose element count wraps int64": (
        one("Tile", F32, (0, 2), multiples=("ints", (1, 1 << 62))), "graph.nodes[0]", ["int64"]),
    "StridedSliceGrad to a shape wrapping int64": (
        one("StridedSliceGrad", F32, (1,), shape=("ints", (1 << 40, 1 << 40)), begin=("ints", (0,)), end=("ints", (1,)),
            strides=("ints", (1,))),
        "graph.nodes[0]", ["int64"]),
    "Split into 10**9 pieces with one output name": (
        one("Split", F32, (4,), output_num=("int", 10**9)), "graph.nodes[0]", ["1 output names given", "1000000000 outputs"]),
    "Split into more pieces than names": (
        one("Split", F32, (4,), output_num=("int", 2)), "graph.nodes[0]", ["1 output names given", "2 outputs"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_run_time_numpy_failures_are_found_while_decoding(case: str) -> None:
    g, field, fragments = BAD[case]
    tracemalloc.start()
    try:
        with pytest.raises(codec.WireError) as info:
            codec.decode_graph(g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = info.value
    assert not isinstance(err, codec.LimitError)
    assert err.field == field, str(err)
    assert "'bad'" in err.description or field != "graph.nodes[0]", str(err)
    for part in fragments:
        assert part in str(err), f"{part!r} not in {str(err)!r}"
    assert len(str(err)) < SHORT
    assert peak < 4 * MIB, f"decoding allocated {peak} bytes"


def test_empty_reductions_with_an_identity_and_nonempty_axes_still_work() -> None:
    g = net([("x", F32, (0, 3))], [("ReduceMax", ["x"], ["m"], {"axis": ("ints", (1,))}),
                                   ("ReduceSum", ["x"], ["y"], {"axis": ("ints", (0,))})], "y")
    prog = compile_graph(codec.decode_graph(g))
    np.testing.assert_array_equal(prog(np.zeros((0, 3), np.float32)), np.zeros(3, np.float32))
    b = GraphBuilder()
    x = b.input("x", F32, (0, 3))
    out = compile_graph(b.build((b.op("ReduceMax", x, axis=(1,)), b.op("Softmax", x))))(np.zeros((0, 3), np.float32))
    assert [o.shape for o in out] == [(0,), (0, 3)]


def test_split_into_many_pieces_is_refused_before_inference_builds_them() -> None:
    b = GraphBuilder()
    x = b.op("BroadcastTo", b.input("x", F32, ()), shape=(1 << 30,))
    tracemalloc.start()
    try:
        with pytest.raises(GraphError, match="would have 1000000000 outputs; at most 65536"):
            b.op("Split", x, output_num=10**9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB
    pieces = b.op("Split", x, output_num=1 << 16)
    assert len(pieces) == 1 << 16 and pieces[0].shape == (1 << 14,)


def test_engine_inputs_beyond_numpy_are_refused() -> None:
    b = GraphBuilder()
    with pytest.raises(ShapeError, match="rank 65"):
        b.input("x", F32, (1,) * 65)
    with pytest.raises(ShapeError, match="int64"):
        b.input("y", F32, (1 << 40, 1 << 40))


EXTREMES = (2**63 - 1, -(2**63), 2**62, 65, 64, 1, 0, -1)
"""int64 attribute values at and near the edges of what NumPy takes."""


def extreme_graphs() -> list[pb.Graph]:
    """One-node graphs with an extreme value in each integer attribute of the ops that take axes, shapes or counts."""
    slices = [one("StridedSlice", F32, (3, 4), begin=("ints", (b,)), end=("ints", (e,)), strides=("ints", (s,)))
              for b, e, s in itertools.product(EXTREMES, repeat=3)]
    masks = [one("StridedSlice", F32, (3, 4), begin=("ints", (0, 0)), end=("ints", (1, 1)), strides=("ints", (1, 1)), **{m: ("int", v)})
             for m in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask") for v in EXTREMES]
    per_value = [
        g
        for v in EXTREMES
        for g in (
            one("ExpandDims", F32, (3,), axis=("int", v)), one("Squeeze", F32, (1, 3), axis=("ints", (v,))),
            one("Transpose", F32, (2, 3), perm=("ints", (v, 0))), one("ReduceMax", F32, (2, 3), axis=("ints", (v,))),
            one("Split", F32, (4,), axis=("int", v)), one("Split", F32, (4,), output_num=("int", v)),
            one("Tile", F32, (2,), multiples=("ints", (v,))), one("Reshape", "float64", (0,), shape=("ints", (v, 0))),
            one("BroadcastTo", F32, (1,), shape=("ints", (v,))), one("Concat", F32, (2,), axis=("int", v)),
            one("Softmax", F32, (2, 3), axis=("ints", (v,))), one("LogSoftmax", F32, (2, 3), axis=("int", v)),
            one("StridedSliceGrad", F32, (1,), shape=("ints", (v,)), begin=("ints", (0,)), end=("ints", (1,)), strides=("ints", (1,))),
        )
    ]
    return slices + masks + per_value


def test_extreme_attributes_fail_as_wire_or_engine_errors_never_numpy_ones() -> None:
    """Each graph is refused while decoding (WireError) or compiles and runs, failing at most with an EngineError."""
    decoded = 0
    for g in extreme_graphs():
        try:
            graph = codec.decode_graph(g)
        except codec.WireError:
            continue
        decoded += 1
        try:
            compile_graph(graph)(*[np.zeros(tuple(i.shape), np.dtype(codec.decode_dtype(i.dtype, "x"))) for i in g.inputs])
        except EngineError:
            pass
    assert decoded > 100


# ---- echoed names stay short ----

LONG = "n" * MIB


def renamed(g: pb.Graph, **where: str) -> pb.Graph:
    """A copy of ``g`` with a caller-chosen string replaced by LONG."""
    g2 = pb.Graph()
    g2.CopyFrom(g)
    if "node" in where:
        g2.nodes[0].name = LONG
    if "input" in where:
        g2.nodes[0].inputs[0] = LONG
    if "op" in where:
        g2.nodes[0].op = LONG
    if "attr" in where:
        g2.nodes[0].attrs[LONG].int_value = 1
    if "output" in where:
        g2.outputs.value = LONG
    if "fn" in where:
        g2.nodes[0].op = "GradOperation"
        g2.nodes[0].attrs["fn"].string_value = LONG
    return g2


@pytest.mark.parametrize("where", ["node", "input", "op", "attr", "output", "fn"])
def test_a_one_mebibyte_name_gives_a_short_message(where: str) -> None:
    base = one("Softmax", F32, (2, 0)) if where == "node" else one("Sin", F32, (3,))
    with pytest.raises(codec.WireError) as info:
        codec.decode_graph(renamed(base, **{where: LONG}))
    assert len(str(info.value)) < SHORT, str(info.value)[:300]
    assert len(info.value.field) < SHORT
    assert "1048576 characters" in str(info.value) or where in ("input", "attr")


def test_long_names_in_calls_and_engine_errors_are_cut() -> None:
    network = codec.decode_graph(one("Sin", F32, (3,)))
    with pytest.raises(codec.WireError) as info:
        codec.decode_parameter_overrides({LONG: codec.encode_tensor(np.ones(3, np.float32))}, network)
    assert len(str(info.value)) < SHORT and "1048576 characters" in str(info.value)
    b = GraphBuilder(LONG)
    x = b.input(LONG + "x", F32, (2,))
    with pytest.raises(ShapeError) as e:
        b.add_node("Reshape", [x], {"shape": (3,)}, name=LONG + "r")
    assert len(str(e.value)) < SHORT and "1048577 characters" in str(e.value)
    prog = compile_graph(b.build(b.op("Sin", x)))
    with pytest.raises(Exception) as e2:
        prog(np.ones(3, np.float32))
    assert len(str(e2.value)) < SHORT


# ---- decoding work is linear in the input ----


def test_a_200k_entry_axis_list_decodes_to_the_same_reduction() -> None:
    """200,000 axis entries (about 400 KB on the wire) decode in one linear pass and mean the axes they name."""
    axes = (0, -1) * 100_000
    g = one("ReduceSum", "float64", (3, 4), axis=("ints", axes))
    graph = codec.decode_graph(g)
    assert graph.nodes[0].attrs["axis"] == axes
    x = np.arange(12.0).reshape(3, 4)
    assert compile_graph(graph)(x) == x.sum()


@pytest.mark.parametrize(
    ("op", "attr", "values", "fragment"),
    [
        ("Reshape", "shape", (1,) * 250_000, "rank 250000"),
        ("Tile", "multiples", (1,) * 250_000, "rank 250000"),
        ("Transpose", "perm", tuple(range(250_000)), "out of range for rank 1"),
        ("Squeeze", "axis", (0,) * 250_000, None),
    ],
)
def test_quarter_million_entry_lists_are_decoded_or_refused_in_one_pass(op: str, attr: str, values: tuple, fragment: str | None) -> None:
    g = one(op, F32, (1,), **{attr: ("ints", values)})
    if fragment is None:
        assert codec.decode_graph(g).nodes[0].outputs[0].shape == ()
        return
    with pytest.raises(codec.WireError, match=fragment) as info:
        codec.decode_graph(g)
    assert len(str(info.value)) < SHORT


def test_a_long_dangling_name_among_many_values_gets_a_bounded_hint() -> None:
    """A hint compares at most HINT_CANDIDATES names, and still finds a close one."""
    n = 20_000
    nodes = [("Sin", ["x" if i == 0 else f"v{i - 1}"], [f"v{i}"], {}) for i in range(n)]
    nodes.append(("Cos", [f"v{n - 1}x"], ["out"], {}))
    g = net([("x", F32, (1,))], nodes, "out")
    with pytest.raises(codec.WireError, match="did you mean") as info:
        codec.decode_graph(g, codec.Limits(max_graph_nodes=n + 1))
    assert info.value.field == f"graph.nodes[{n}].inputs[0]"


def test_a_long_chain_of_library_functions_is_ordered_in_one_pass() -> None:
    """10,000 functions each differentiating the next: the walk is linear, and the nesting limit names the
    first function found too deep."""
    n = 10_000
    g = net([("x", F32, (1,))], [("GradOperation", ["x"], ["y"], {"fn": ("str", "f0")})], "y")
    for i in range(n):
        f = g.library[f"f{i}"]
        f.inputs.add(name="x", dtype=codec.encode_dtype(np.float32), shape=[1])
        node = f.nodes.add(op="GradOperation" if i + 1 < n else "Sin", inputs=["x"], outputs=["y"])
        if i + 1 < n:
            node.attrs["fn"].string_value = f"f{i + 1}"
        f.outputs.value = "y"
    with pytest.raises(codec.LimitError, match="nest 33 deep") as info:
        codec.decode_graph(g, codec.Limits(max_graph_nodes=2 * n))
    assert info.value.field == f'graph.library["f{n - 34}"]'


def test_a_long_cycle_is_reported_in_a_short_message() -> None:
    n = 5_000
    nodes = [("Sin", [f"v{(i + 1) % n}"], [f"v{i}"], {}) for i in range(n)]
    with pytest.raises(codec.WireError, match="in the cycle") as info:
        codec.decode_graph(net([("x", F32, (1,))], nodes, "v0"))
    assert len(str(info.value)) < SHORT


# ---- through a live server ----


@pytest.mark.parametrize("case", ["ReduceMax of an empty tensor", "Reshape to rank 65", "Reshape whose element count wraps int64",
                                  "Split into 10**9 pieces with one output name"])
def test_the_server_answers_invalid_argument(channel: grpc.Channel, case: str) -> None:
    g, field, fragments = BAD[case]
    shape = tuple(g.inputs[0].shape)
    request = service_pb2.RunRequest(graph=g, inputs=[codec.encode_tensor(np.zeros(shape, np.float32))])
    with pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GradientStub(channel).Run(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert field in info.value.details() and fragments[0] in info.value.details()
