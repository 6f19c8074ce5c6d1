"""RegisterNetwork with an ONNX model's bytes: the server converts it, Grad on the id gives PyTorch autograd's
gradients, the id is the converted graph's, and a model that cannot be converted is INVALID_ARGUMENT naming its node."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnxkit import export, model

from gradserve.engine.onnx_import import convert, load_model
from gradserve.proto import codec
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_graph_nodes=40))



def test_an_onnx_model_registers_and_gives_torch_gradients(stub: service_pb2_grpc.GradientStub) -> None:
    m, x = model("cnn", torch.float64)
    data = export(m, x)
    reg = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=data), timeout=60)
    assert reg.network_id == codec.network_id(convert(load_model(data)))
    assert not stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=data), timeout=60).created
    names = ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    resp = stub.Grad(service_pb2.GradRequest(network_id=reg.network_id, inputs=[codec.encode_tensor(x.numpy())],
                                             grad=graph_pb2.GradOperation(get_all=True, get_by_list=True, weights=names),
                                             return_forward=True), timeout=60)
    (gx,), gw = codec.decode_tree(resp.gradients)
    xt = x.clone().requires_grad_(True)
    y = m(xt)
    want = torch.autograd.grad(y.sum(), [xt, *(dict(m.named_parameters())[n] for n in names)])
    np.testing.assert_allclose(codec.decode_tree(resp.forward), y.detach().numpy(), rtol=1e-9)
    for got, w in zip((gx, *gw), want):
        np.testing.assert_allclose(got, w.numpy(), rtol=1e-9, atol=1e-12)


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return err.code(), err.details()


def test_what_cannot_be_registered_is_named(stub: service_pb2_grpc.GradientStub) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    bad = helper.make_model(helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], "g", [x], [y]),
                            opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=bad.SerializeToString()), timeout=30)
    code, details = _status(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "onnx_model: ONNX node 'hm': op 'Hardmax' of domain 'ai.onnx' is not supported" in details
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=b"\xff\xff not a model"), timeout=30)
    assert _status(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT and "not an ONNX model" in _status(info.value)[1]
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(), timeout=30)
    assert _status(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "set exactly one of graph and onnx_model")
    many = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x" if i == 0 else f"h{i}"], [f"h{i + 1}" if i < 49 else "y"]) for i in range(50)],
        "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=many.SerializeToString()), timeout=30)
    assert _status(info.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "onnx_model: the model has 50 nodes, more than max_graph_nodes=40")
