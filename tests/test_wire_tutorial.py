"""The tutorial's networks written as protobuf messages by hand, the way a client in another language
would (struct-packed little-endian bytes, no NumPy), give the tutorial's numbers."""
from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from gradserve.engine import compile_graph
from gradserve.proto import codec
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

F32, F64 = pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64
X = [0.8, 0.6, 0.2, 1.8, 1.3, 1.1]
Y = [0.11, 3.3, 1.1, 1.1, 0.2, 1.4, 1.1, 2.2, 0.3]


def f32(shape: list[int], values: list[float]) -> pb.Tensor:
    return pb.Tensor(dtype=F32, shape=shape, data=struct.pack(f"<{len(values)}f", *values))


def floats(t: pb.Tensor) -> list[float]:
    fmt = {F32: "f", F64: "d"}[t.dtype]
    return list(struct.unpack(f"<{len(t.data) // struct.calcsize(fmt)}{fmt}", t.data))


def matmul_net(stop_gradient: bool | None = None) -> pb.Graph:
    """``Net``: out = MatMul(x * z, y); with ``stop_gradient`` set, ``Net2``: MatMul(x, y) + MatMul(x, y)
    where the second product is (or, when False, is not) marked stop_gradient."""
    g = pb.Graph()
    g.inputs.add(name="x", dtype=F32, shape=[2, 3])
    g.inputs.add(name="y", dtype=F32, shape=[3, 3])
    if stop_gradient is None:
        g.parameters.add(name="z", value=f32([1], [1.0]))
        g.nodes.add(op="Mul", inputs=["x", "z"], outputs=["xz"])
        g.nodes.add(op="MatMul", inputs=["xz", "y"], outputs=["out"])
    else:
        g.nodes.add(op="MatMul", inputs=["x", "y"], outputs=["out1"])
        g.nodes.add(op="MatMul", inputs=["x", "y"], outputs=["out2"], stop_gradient=stop_gradient)
        g.nodes.add(op="Add", inputs=["out1", "out2"], outputs=["out"])
    g.outputs.value = "out"
    return g


def grad(graph: pb.Graph, **flags: Any) -> spb.GradResponse:
    """What the server does with a GradRequest, through the codec and the engine only."""
    req = spb.GradRequest(graph=graph, grad=pb.GradOperation(**flags), inputs=[f32([2, 3], X), f32([3, 3], Y)])
    if req.grad.sens_param:
        req.sens.append(f32([2, 3], [0.1, 0.6, 0.2, 0.8, 1.3, 1.1]))
    req = spb.GradRequest.FromString(req.SerializeToString())
    call = codec.decode_grad_call(codec.decode_graph(req.graph), req)
    resp = spb.GradResponse(gradients=codec.encode_tree(compile_graph(call.graph)(*call.args, params=call.params)))
    return spb.GradResponse.FromString(resp.SerializeToString())


def test_gradient_wrt_x() -> None:
    resp = grad(matmul_net())
    t = resp.gradients.tensor
    assert t.dtype == F32 and list(t.shape) == [2, 3]
    assert floats(t) == pytest.approx([4.51, 2.7, 3.6] * 2, rel=1e-6)


def test_gradient_wrt_weights() -> None:
    (dz,) = grad(matmul_net(), get_by_list=True, weights=["z"]).gradients.tuple.items
    assert list(dz.tensor.shape) == [1] and floats(dz.tensor) == pytest.approx([21.536], rel=1e-6)
    bare = grad(matmul_net(), get_by_list=True, weights=["z"], bare_weight=True).gradients
    assert bare.WhichOneof("kind") == "tensor" and floats(bare.tensor) == pytest.approx([21.536], rel=1e-6)


def test_get_all_and_weights_nest_like_python() -> None:
    (inputs, weights) = grad(matmul_net(), get_all=True, get_by_list=True, weights=["z"]).gradients.tuple.items
    assert [list(i.tensor.shape) for i in inputs.tuple.items] == [[2, 3], [3, 3]]
    assert floats(weights.tuple.items[0].tensor) == pytest.approx([21.536], rel=1e-6)


def test_sensitivity_scaling() -> None:
    got = floats(grad(matmul_net(), sens_param=True).gradients.tensor)
    assert got == pytest.approx([2.211, 0.51, 1.49, 5.588, 2.68, 4.07], rel=1e-6)


@pytest.mark.parametrize(("stop", "want"), [(True, [4.51, 2.7, 3.6]), (False, [9.02, 5.4, 7.2])])
def test_stop_gradient(stop: bool, want: list[float]) -> None:
    assert floats(grad(matmul_net(stop_gradient=stop)).gradients.tensor) == pytest.approx(want * 2, rel=1e-6)


def sin_network() -> pb.Graph:
    """GradSec(Grad(Net)): the network is ``first(x) = GradOperation[fn="net"](x)`` with ``net = Sin``
    in the library; a GradRequest with an empty GradOperation then asks for d/dx of the first derivative."""
    g = pb.Graph()
    net = g.library["net"]
    net.inputs.add(name="x", dtype=F64, shape=[1])
    net.nodes.add(op="Sin", inputs=["x"], outputs=["y"])
    net.outputs.value = "y"
    g.inputs.add(name="x", dtype=F64, shape=[1])
    node = g.nodes.add(op="GradOperation", inputs=["x"], outputs=["dx"])
    node.attrs["fn"].string_value = "net"
    g.outputs.value = "dx"
    return g


def test_second_derivative_of_sin() -> None:
    x = pb.Tensor(dtype=F64, shape=[1], data=struct.pack("<d", 3.1415926))
    req = spb.GradRequest(graph=sin_network(), inputs=[x])
    call = codec.decode_grad_call(codec.decode_graph(req.graph), req)
    (d2,) = floats(codec.encode_tree(compile_graph(call.graph)(*call.args, params=call.params)).tensor)
    assert d2 == pytest.approx(-5.35897932e-08, rel=1e-6) and d2 == pytest.approx(-math.sin(3.1415926), rel=1e-9)


def doc_examples() -> list[Any]:
    """Every ``textproto`` block of docs/wire-format.md, parsed as the message its header names."""
    from pathlib import Path

    from google.protobuf import symbol_database, text_format

    text = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```textproto\n")[1:]]
    out = []
    for block in blocks:
        header, _, body = block.partition("\n")
        name = header.removeprefix("# proto-message: ")
        out.append(text_format.Parse(body, symbol_database.Default().GetSymbol(name)()))
    return out


def test_documented_examples_parse_and_give_the_documented_numbers() -> None:
    tensor, net, schema, first, second = doc_examples()
    assert floats(tensor) == floats(f32([2, 3], X)) and tensor.data.hex(" ") == "cd cc 4c 3f 9a 99 19 3f cd cc 4c 3e 66 66 e6 3f 66 66 a6 3f cd cc 8c 3f"
    assert schema == next(o for o in codec.list_ops().ops if o.name == "MatMul")
    assert first.inputs[1] == f32([3, 3], Y)
    first.graph.CopyFrom(net)
    call = codec.decode_grad_call(codec.decode_graph(first.graph), first)
    (dz,) = compile_graph(call.graph)(*call.args, params=call.params)
    assert dz.tolist() == pytest.approx([21.536], rel=1e-6)
    call = codec.decode_grad_call(codec.decode_graph(second.graph), second)
    assert compile_graph(call.graph)(*call.args, params=call.params).tolist() == pytest.approx([-5.35897932e-08], rel=1e-6)
