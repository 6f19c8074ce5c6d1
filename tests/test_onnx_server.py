"""RegisterNetwork with an ONNX model's bytes: the server converts it, Grad on the id gives PyTorch autograd's
gradients, the id is the converted graph's, and a model that cannot be converted is INVALID_ARGUMENT naming its node."""
from __future__ import annotations

import pathlib

import grpc
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnxkit import export, model

from gradserve.engine.onnx_import import OnnxImportError, convert, load_model
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


def test_malformed_tensors_and_constants_are_named_not_internal(stub: service_pb2_grpc.GradientStub) -> None:
    """An initializer or a tensor attribute whose data does not fill its dims, of an unknown dtype or a negative dimension,
    an attribute that is not UTF-8, and constants an op refuses when folded (a Gather index out of range, a Slice step of
    0) are INVALID_ARGUMENT naming the initializer or node, as a client in any language may send them."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])

    def graph(nodes: list, inits: list = ()) -> bytes:  # type: ignore[assignment]
        g = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    def const(name: str, value: np.ndarray) -> object:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                                                   value.shape, value.reshape(-1).tolist()))

    add = helper.make_node("Add", ["x", "w"], ["y"])
    bad_utf8 = helper.make_node("Add", ["x", "x"], ["y"], name="add")
    bad_utf8.attribute.add().CopyFrom(helper.make_attribute("note", b"\xff\xfe"))
    cases = {
        "ONNX initializer 'w': its data does not make a tensor of dims [2, 2]":
            graph([add], [TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2], raw_data=b"\0" * 4)]),
        "ONNX initializer 'w': dtype 999 is not supported":
            graph([add], [TensorProto(name="w", data_type=999, dims=[2], raw_data=b"\0" * 8)]),
        "ONNX initializer 'w': dims [-1] has a negative dimension":
            graph([add], [TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1], raw_data=b"\0" * 8)]),
        "ONNX node 'c' (op Constant): attribute 'value': its data does not make a tensor of dims [1099511627776]":
            graph([helper.make_node("Constant", [], ["w"], name="c", value=TensorProto(data_type=TensorProto.FLOAT, dims=[1 << 40])), add]),
        "ONNX node 'add' (op Add): attribute 'note' is not valid UTF-8": graph([bad_utf8]),
        "ONNX node 'g' (op Gather, domain ai.onnx, opset 17): Gather: index 10 is out of range":
            graph([const("d", np.array([1.0, 2.0, 3.0], np.float32)), const("i", np.array([10, 0])),
                   helper.make_node("Gather", ["d", "i"], ["w"], name="g"), add]),
        "ONNX node 's' (op Slice, domain ai.onnx, opset 17): its attributes or constant inputs cannot be used: ValueError":
            graph([const("b", np.array([0])), const("e", np.array([2])), const("a", np.array([0])), const("p", np.array([0])),
                   helper.make_node("Slice", ["x", "b", "e", "a", "p"], ["y"], name="s")]),
    }
    for said, data in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=data), timeout=30)
        code, details = _status(info.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"onnx_model: {said}"), details
    np.testing.assert_allclose(codec.decode_tree(stub.Grad(service_pb2.GradRequest(
        network_id=stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=graph([helper.make_node("Sin", ["x"], ["y"])])),
                                        timeout=30).network_id,
        inputs=[codec.encode_tensor(np.array([0.0, 1.0], np.float32))]), timeout=30).gradients), np.cos([0.0, 1.0]), rtol=1e-6)


def test_tensor_data_in_external_files_is_refused(stub: service_pb2_grpc.GradientStub, tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Constant whose value, or an initializer whose data, names an external file is INVALID_ARGUMENT naming it, and
    the file is never read: a file beside the server (here in its working directory) does not come back in a result."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(np.array([7.0, 9.0], np.float32).tobytes())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])

    def external(name: str) -> TensorProto:
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
        t.external_data.add(key="location", value="secret.bin")
        return t

    add = helper.make_node("Add", ["x", "w"], ["y"])
    constant = helper.make_node("Constant", [], ["w"], name="c")
    constant.attribute.add().CopyFrom(helper.make_attribute("value", external("w")))
    model = helper.make_model(helper.make_graph([constant, add], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=model.SerializeToString()), timeout=30)
    assert _status(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "onnx_model: ONNX node 'c' (op Constant): attribute 'value': "
                                   "its data is stored in an external file; send a self-contained model")
    with pytest.raises(OnnxImportError, match="attribute 'value': its data is stored in an external file"):
        convert(model)
    model = helper.make_model(helper.make_graph([add], "g", [x], [y], initializer=[external("w")]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match="ONNX initializer 'w': its data is stored in an external file"):
        convert(model)
