"""ONNX import: models exported by PyTorch, loaded with gradserve.onnx.load, give PyTorch autograd's gradients
(inputs and every initializer, first and second order), embedded and through a server; optimizers train them;
what cannot be converted fails naming the node, op type and domain."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnxkit import MODELS, export, model

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import ParameterTuple, Tensor
from gradserve import onnx as gonnx
from gradserve.engine.onnx_import import convert

TOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def torch_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating parameter and buffer of ``m`` as a leaf that requires grad, by its state-dict name (the
    ONNX initializer name)."""
    named = {**dict(m.named_parameters()), **dict(m.named_buffers())}
    return {k: v.detach().clone().requires_grad_(True) for k, v in named.items() if v.is_floating_point()}


def reference(m: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``m`` on ``x`` with its parameters and buffers taken from ``state``."""
    if hasattr(m, "explicit_bn"):
        m.explicit_bn = True
    try:
        return torch.func.functional_call(m, state, (x,))
    finally:
        if hasattr(m, "explicit_bn"):
            m.explicit_bn = False


def close(got: Any, want: torch.Tensor, rtol: float) -> None:
    """Elementwise relative agreement, with an absolute floor of rtol times the largest reference magnitude."""
    want_np = want.detach().numpy()
    got_np = got.asnumpy() if isinstance(got, Tensor) else got.detach().numpy()
    np.testing.assert_allclose(got_np, want_np, rtol=rtol, atol=rtol * max(float(np.abs(want_np).max()), 1e-30))


CASES = [("mlp", torch.float32, 17), ("cnn", torch.float32, 17), ("encoder", torch.float32, 17), ("encoder", torch.float32, 20),
         ("mlp", torch.float64, 17), ("cnn", torch.float64, 17), ("encoder", torch.float64, 20)]


@pytest.mark.parametrize(("name", "dtype", "opset"), CASES, ids=[f"{n}-{str(d)[6:]}-opset{o}" for n, d, o in CASES])
def test_gradients_equal_torch_autograd(where: str, name: str, dtype: torch.dtype, opset: int) -> None:
    m, x = model(name, dtype)
    net = gonnx.load(export(m, x, opset))
    state = torch_state(m)
    assert [p.name for p in net.trainable_params()] == [p.name for p in convert(onnx.load_from_string(export(m, x, opset))).params]
    assert set(p.name for p in net.trainable_params()) == set(state)
    xt = x.clone().requires_grad_(True)
    y = reference(m, state, xt)
    close(m(x), y, TOL[dtype])  # the reference is the exported model
    sens = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(y, [xt, *state.values()], grad_outputs=sens)
    params = ParameterTuple(net.trainable_params())
    out, (gx, gw) = net(Tensor(x.numpy())), ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)(net, params)(
        Tensor(x.numpy()), Tensor(sens.numpy()))
    close(out, y, TOL[dtype])
    close(gx[0], want[0], TOL[dtype])
    by_name = dict(zip(state, want[1:]))
    for p, g in zip(params, gw):
        close(g, by_name[p.name], TOL[dtype])


class Signal1d(torch.nn.Module):
    """Conv1d (strided, padded), ReLU, MaxPool1d, ConvTranspose1d, AvgPool1d, Linear: PyTorch exports each as the
    ONNX op with 1-D attributes, which the importer runs as 2-D with a unit height."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 4, 3, stride=2, padding=1)
        self.pool = torch.nn.MaxPool1d(3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.avg = torch.nn.AvgPool1d(2)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avg(self.up(self.pool(torch.relu(self.conv(x))))).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_torch_conv1d_and_pool1d_export_gives_torch_gradients(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    m = Signal1d().to(dtype).eval()
    x = torch.randn(2, 3, 16, dtype=dtype)
    data = export(m, x)
    assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool"} <= {n.op_type for n in onnx.load_from_string(data).graph.node}
    net = gonnx.load(data)
    state = torch_state(m)
    xt = x.clone().requires_grad_(True)
    y = reference(m, state, xt)
    want = torch.autograd.grad(y.sum(), [xt, *state.values()])
    params = ParameterTuple(net.trainable_params())
    (gx,), gw = ops.GradOperation(get_all=True, get_by_list=True)(net, params)(Tensor(x.numpy()))
    close(net(Tensor(x.numpy())), y, TOL[dtype])
    close(gx, want[0], TOL[dtype])
    by_name = dict(zip(state, want[1:]))
    assert sorted(p.name for p in params) == sorted(by_name)
    for p, g in zip(params, gw):
        close(g, by_name[p.name], TOL[dtype])


class GradNorm(nn.Cell):
    """sum over the elements of (d sum(net(x) * sens) / dx) squared: a scalar whose weight gradient is second order."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation(sens_param=True)

    def construct(self, x: Tensor, sens: Tensor) -> Tensor:
        gx = self.grad(self.net)(x, sens)
        return (gx * gx).sum()


@pytest.mark.parametrize("name", ["mlp", "encoder"])
def test_second_order_equals_torch_double_backward(where: str, name: str) -> None:
    m, x = model(name, torch.float64)
    net = gonnx.load(export(m, x, 20))
    state = torch_state(m)
    xt = x.clone().requires_grad_(True)
    y = reference(m, state, xt)
    sens = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (gx,) = torch.autograd.grad(y, [xt], grad_outputs=sens, create_graph=True)
    leaves = [xt, *state.values()]
    want = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, torch.autograd.grad((gx * gx).sum(), leaves, allow_unused=True))]
    params = ParameterTuple(net.trainable_params())
    hx, hw = ops.GradOperation(get_all=True, get_by_list=True)(GradNorm(net), params)(Tensor(x.numpy()), Tensor(sens.numpy()))
    close(hx[0], want[0], 1e-9)
    by_name = dict(zip(state, want[1:]))
    for p, g in zip(params, hw):
        close(g, by_name[p.name.removeprefix("net.")], 1e-9)  # GradNorm's attribute prefixes the names


def test_functional_grad_and_an_optimizer_step_match_torch(where: str) -> None:
    m, x = model("mlp")
    net = gonnx.load(export(m, x))
    target = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))

    def loss_fn(inp: Tensor, tgt: Tensor) -> Tensor:
        d = net(inp) - tgt
        return (d * d).mean()

    params = ParameterTuple(net.trainable_params())
    loss, grads = ops.value_and_grad(loss_fn, None, params)(Tensor(x.numpy()), Tensor(target.numpy()))
    tloss = ((m(x) - target) ** 2).mean()
    tloss.backward()
    close(loss, tloss, 1e-5)
    for p, g in zip(params, grads):
        close(g, dict(m.named_parameters())[p.name].grad, 1e-5)
    opt = nn.SGD(params, learning_rate=0.1)
    opt(grads)
    with torch.no_grad():
        for p in m.parameters():
            p -= 0.1 * p.grad
    for p in params:
        close(p, dict(m.named_parameters())[p.name], 1e-5)
    close(net(Tensor(x.numpy())), m(x), 1e-5)


def test_frozen_initializers_and_static_shapes() -> None:
    m, x = model("mlp")
    data = export(m, x)
    assert not gonnx.load(data, trainable=False).trainable_params()
    dynamic = onnx.load_from_string(data)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(gonnx.OnnxImportError, match=r"input 'x': dimension 0 is dynamic \(batch\)"):
        gonnx.load(dynamic)
    net = gonnx.load(dynamic.SerializeToString(), shapes={"x": (5, 4)})
    x5 = torch.randn(5, 4)
    close(net(Tensor(x5.numpy())), m(x5), 1e-5)


def _model(node: onnx.NodeProto, opset: int = 17, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", dtype, [2, 3])
    y = helper.make_tensor_value_info("y", dtype, [2, 3])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", opset)])


def test_what_cannot_be_converted_is_named() -> None:
    with pytest.raises(gonnx.OnnxImportError) as info:
        gonnx.load(_model(helper.make_node("Hardmax", ["x"], ["y"], name="hm")))
    text = str(info.value)
    assert "ONNX node 'hm': op 'Hardmax' of domain 'ai.onnx' is not supported" in text
    assert all(op in text for op in ("Conv", "Gemm", "LayerNormalization", "MatMul", "Softmax"))
    with pytest.raises(gonnx.OnnxImportError, match="node 'mine': op 'Relu' of domain 'com.example'"):
        gonnx.load(_model(helper.make_node("Relu", ["x"], ["y"], name="mine", domain="com.example")))
    with pytest.raises(gonnx.OnnxImportError, match="opset 9 is not supported; supported: 13 to 21"):
        gonnx.load(_model(helper.make_node("Relu", ["x"], ["y"]), opset=9))
    with pytest.raises(gonnx.OnnxImportError, match="input 'x': dtype COMPLEX64 is not supported"):
        gonnx.load(_model(helper.make_node("Relu", ["x"], ["y"]), dtype=TensorProto.COMPLEX64))
    with pytest.raises(gonnx.OnnxImportError, match=r"node 'ap' \(op AveragePool, domain ai.onnx, opset 17\): only 1-D \(NCL\) and 2-D \(NCHW\) inputs are supported, got input shape \(2, 3\)"):
        gonnx.load(_model(helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[1, 1], dilations=[2, 2])))


def test_supported_ops_cover_the_issue_list() -> None:
    wanted = ("Gemm MatMul Conv ConvTranspose MaxPool AveragePool GlobalAveragePool BatchNormalization Relu LeakyRelu Sigmoid "
              "Tanh Gelu Erf Softmax LogSoftmax LayerNormalization Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Reshape "
              "Transpose Flatten Concat Split Slice Gather Unsqueeze Squeeze Expand Tile Where Equal Less Greater Not Cast "
              "ReduceMean ReduceSum ReduceMax Clip Identity Dropout Constant ConstantOfShape Shape Range").split()
    assert set(wanted) <= set(gonnx.supported_ops())
    assert set(MODELS) == {"mlp", "cnn", "encoder"}


def test_docs_import_example_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/onnx.md's Import example, as written (it exports, loads, differentiates and trains)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/onnx.md", "exec"), scope)
    assert scope["dx"].shape == (2, 4) and [g.shape for g in scope["dw"]] == [(8, 4), (8,), (3, 8), (3,)]
