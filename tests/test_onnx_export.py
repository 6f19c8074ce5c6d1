"""ONNX export: networks and gradient programs written as standard ONNX models pass onnx.checker (with shape
inference) and give gradserve's numbers in ONNX Runtime; every op with an export rule is checked against the
engine's forward on the op table's rows (tests/test_ops.py), so adding a rule adds its coverage."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from clientkit import Net, tutorial_grad_x
from test_ops import BINARY, ROWS, UNARY, Row, V, points, v

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, Tensor
from gradserve.engine import OPS, GraphBuilder, GraphError, compile_graph
from gradserve.engine.onnx_export import DEFAULT_OPSET, exportable_ops, to_model
from gradserve.engine.onnx_import import OnnxImportError, convert
from gradserve.onnx import export, load

TOL = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture(autouse=True)
def rng() -> np.random.Generator:
    """Each test's own data generator, and the initializers' and Dropout seeds' global seed set afresh, so every test
    sees the same numbers whatever ran before it."""
    gs.set_seed(14)
    return np.random.default_rng(14)


def run_onnx(model: onnx.ModelProto, *inputs: np.ndarray) -> list[np.ndarray]:
    """Check ``model`` fully (types, shapes, standard ops only) and run it in ONNX Runtime on ``inputs`` in order."""
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain for o in model.opset_import} == {""}
    assert all(n.domain == "" for n in model.graph.node)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # parameters that are also inputs (params_as_inputs) are overridable on purpose
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in model.graph.input]  # ONNX Runtime's get_inputs() leaves out inputs with an initializer
    assert len(names) == len(inputs)
    return session.run(None, dict(zip(names, inputs)))


def leaves(tree: Any) -> list[np.ndarray]:
    """The arrays of a result's Tensor leaves, in order."""
    if isinstance(tree, (tuple, list)):
        return [a for t in tree for a in leaves(t)]
    return [tree.asnumpy()]


def assert_same(got: list[np.ndarray], want: list[np.ndarray], **tol: Any) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, **(tol or TOL))


# ---- the tutorial network ----

X = Tensor([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], dtype=gs.float32)
Y = Tensor([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], dtype=gs.float32)


def test_tutorial_gradient_program_runs_in_onnx_runtime_with_gradserves_numbers(tmp_path: Path) -> None:
    net = Net()
    grad_fn = ops.GradOperation(get_all=True, get_by_list=True)(net, net.trainable_params())
    path = tmp_path / "tutorial_grad.onnx"
    export(grad_fn, X, Y, path=path)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["x", "y"]
    assert model.opset_import[0].version == DEFAULT_OPSET
    got = run_onnx(model, X.asnumpy(), Y.asnumpy())
    assert_same(got, leaves(grad_fn(X, Y)))
    # MindSpore's documented gradient of the tutorial (In [2]): every row of dx is [4.51, 2.7, 3.6]
    np.testing.assert_allclose(got[0], tutorial_grad_x(), rtol=1e-6)
    np.testing.assert_allclose(got[0], [[4.51, 2.7, 3.6]] * 2, rtol=1e-6)


def test_tutorial_forward_and_value_and_grad_export() -> None:
    net = Net()
    assert_same(run_onnx(export(net, X, Y), X.asnumpy(), Y.asnumpy()), [net(X, Y).asnumpy()])
    vg = gs.value_and_grad(net, grad_position=(0, 1), weights=net.trainable_params())
    assert_same(run_onnx(export(vg, X, Y), X.asnumpy(), Y.asnumpy()), leaves(vg(X, Y)))


# ---- a small CNN: Conv2d, ReLU, MaxPool, Flatten, Dense, softmax cross-entropy ----


class CNN(nn.Cell):
    """Conv2d(1->3, 3x3, same) + ReLU + MaxPool(2) + Dense(3*3*3 -> 4): logits of (N, 1, 6, 6) images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, pad_mode="same", has_bias=True, weight_init="normal")
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.dense = nn.Dense(27, 4)

    def construct(self, x: Tensor) -> Tensor:
        return self.dense(self.flatten(self.pool(self.relu(self.conv(x)))))


class CNNLoss(nn.Cell):
    """The CNN's mean softmax cross-entropy against one-hot labels."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.loss = nn.SoftmaxCrossEntropyWithLogits(reduction="mean")

    def construct(self, x: Tensor, labels: Tensor) -> Tensor:
        return self.loss(self.net(x), labels)


def cnn_batch(rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    images = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[[1, 3]]
    return Tensor(images), Tensor(labels)


def torch_cnn_gradients(net: CNN, images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """PyTorch autograd's gradients of the same loss w.r.t. the image and the CNN's parameters, an independent oracle."""
    t = {p.name: torch.tensor(p.asnumpy(), dtype=torch.float64, requires_grad=True) for p in net.trainable_params()}
    w = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]: v for name, v in t.items()}
    x = torch.tensor(images, dtype=torch.float64, requires_grad=True)
    h = torch.nn.functional.conv2d(x, w["conv.weight"], w["conv.bias"], padding=1)
    h = torch.nn.functional.max_pool2d(torch.relu(h), 2).flatten(1)
    logits = h @ w["dense.weight"].T + w["dense.bias"]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels, dtype=torch.float64))
    grads = torch.autograd.grad(loss, [x, *t.values()])
    return [g.numpy() for g in grads]


@pytest.mark.parametrize("opset", [DEFAULT_OPSET, 21])
def test_cnn_gradient_program_runs_in_onnx_runtime_and_matches_gradserve_and_pytorch(opset: int, rng: np.random.Generator) -> None:
    net = CNN()
    loss = CNNLoss(net)
    images, labels = cnn_batch(rng)
    grad_fn = gs.grad(loss, grad_position=0, weights=net.trainable_params())
    model = export(grad_fn, images, labels, opset=opset)
    assert model.opset_import[0].version == opset
    # the input gradient is a ConvTranspose, the filter gradient a Conv, MaxPool's a scatter of its indices
    assert {"Conv", "ConvTranspose", "MaxPool", "ScatterND"} <= {n.op_type for n in model.graph.node}
    got = run_onnx(model, images.asnumpy(), labels.asnumpy())
    want = leaves(grad_fn(images, labels))
    assert_same(got, want)
    oracle = torch_cnn_gradients(net, images.asnumpy(), labels.asnumpy())
    for g, o in zip(got, oracle):
        np.testing.assert_allclose(g, o, rtol=1e-4, atol=1e-5)


def test_cnn_second_order_grad_of_grad_exports_and_matches(rng: np.random.Generator) -> None:
    """d/dx of <dL/dx, u>: gradients of the conv backprop ops and of MaxPool's scatter (UnsortedSegmentSum -> Gather)."""
    net = CNN()
    loss = CNNLoss(net)
    images, labels = cnn_batch(rng)
    u = Tensor(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))
    first = gs.grad(loss, grad_position=0)

    def directional(x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return (first(x, y) * v).sum()

    second = gs.grad(directional, grad_position=0, weights=net.trainable_params())
    model = export(second, images, labels, u)
    assert "Gather" in {n.op_type for n in model.graph.node}  # the scatter's own gradient
    got = run_onnx(model, images.asnumpy(), labels.asnumpy(), u.asnumpy())
    assert_same(got, leaves(second(images, labels, u)), rtol=1e-4, atol=1e-6)
    assert any(abs(g).max() > 0 for g in got[1:])


def test_hessian_of_an_mlp_exports_and_matches_the_closed_form(rng: np.random.Generator) -> None:
    """f(x) = sum(tanh(W x + b)): gradserve's Hessian and the closed form W^T diag(-2 t (1 - t^2)) W, t = tanh(W x + b)."""
    w = Parameter(Tensor(rng.standard_normal((3, 4)).astype(np.float64)), name="w")
    b = Parameter(Tensor(rng.standard_normal((3,)).astype(np.float64)), name="b")

    def f(x: Tensor) -> Tensor:
        return ops.tanh((w * x).sum(axis=1) + b).sum()

    x = Tensor(rng.standard_normal((4,)))
    hess = gs.hessian(f)
    model = export(hess, x)
    (got,) = run_onnx(model, x.asnumpy())
    np.testing.assert_allclose(got, hess(x).asnumpy(), rtol=1e-10, atol=1e-12)
    t = np.tanh(w.asnumpy() @ x.asnumpy() + b.asnumpy())
    closed = w.asnumpy().T @ np.diag(-2 * t * (1 - t * t)) @ w.asnumpy()
    np.testing.assert_allclose(got, closed, rtol=1e-10, atol=1e-12)


def test_transformer_encoder_layer_gradient_program_exports_in_training_mode(rng: np.random.Generator) -> None:
    """Attention (BatchMatMul, Softmax), LayerNorm, GeLU and Dropout with its step input, through their gradients."""
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.2, activation="gelu", batch_first=True)
    layer.set_train(True)
    src = Tensor(rng.standard_normal((2, 3, 8)).astype(np.float32))

    def loss(x: Tensor) -> Tensor:
        return (layer(x) ** 2).mean()

    grad_fn = gs.grad(loss, grad_position=0, weights=layer.trainable_params())
    model = export(grad_fn, src)
    got = run_onnx(model, src.asnumpy())
    assert_same(got, leaves(grad_fn(src)), rtol=1e-4, atol=1e-6)


def test_exported_models_load_back_through_the_importer() -> None:
    """export, then gradserve.onnx.load: the CNN's forward, and an MLP's gradient program, which the importer then
    differentiates again (a Hessian-vector product through the exported backward pass)."""
    images, _ = cnn_batch(np.random.default_rng(3))
    net = CNN()
    assert_same(leaves(load(export(net, images))(images)), [net(images).asnumpy()])
    w = Parameter(Tensor(np.random.default_rng(4).standard_normal((3, 4))), name="w")

    def f(x: Tensor) -> Tensor:
        return ops.tanh((w * x).sum(axis=1)).sum()

    x = Tensor(np.random.default_rng(5).standard_normal((4,)))
    first = gs.grad(f)
    imported = load(export(first, x), trainable=False)
    np.testing.assert_allclose(imported(x).asnumpy(), first(x).asnumpy(), rtol=1e-12)
    v = Tensor(np.ones(4))
    hvp = gs.grad(lambda x: (imported(x) * v).sum())(x)
    np.testing.assert_allclose(hvp.asnumpy(), gs.hessian(f)(x).asnumpy() @ v.asnumpy(), rtol=1e-10)


def test_cnn_gradient_program_with_maxpool_loads_back_and_differentiates_again(rng: np.random.Generator) -> None:
    """The CNN's exported gradient program (MaxPool with Indices, Mod, ScatterND 'add') imports as a Cell that gives
    gradserve's gradients, and differentiating the imported Cell gives gradserve's second-order gradients (a
    directional derivative of dL/dx, w.r.t. the image and the weights)."""
    net = CNN()
    loss = CNNLoss(net)
    images, labels = cnn_batch(rng)
    first = gs.grad(loss, grad_position=0, weights=net.trainable_params())
    model = export(first, images, labels)
    pools = [node for node in model.graph.node if node.op_type == "MaxPool" and len(node.output) == 2]
    assert pools and {"Mod", "ScatterND"} <= {node.op_type for node in model.graph.node}
    imported = load(model)
    assert_same(leaves(imported(images, labels)), leaves(first(images, labels)))
    assert [p.name for p in imported.trainable_params()] == [p.name for p in net.trainable_params()]
    u = Tensor(rng.standard_normal((2, 1, 6, 6)).astype(np.float32))
    dx = gs.grad(loss, grad_position=0)

    def directional(x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return (dx(x, y) * v).sum()

    def imported_directional(x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return (imported(x, y)[0] * v).sum()

    want = gs.grad(directional, grad_position=0, weights=net.trainable_params())(images, labels, u)
    got = gs.grad(imported_directional, grad_position=0, weights=imported.trainable_params())(images, labels, u)
    assert_same(leaves(got), leaves(want), rtol=1e-4, atol=1e-6)
    assert any(abs(g).max() > 0 for g in leaves(got)[1:])


def test_jvp_program_exports() -> None:
    net = Net()
    v = (Tensor(np.ones((2, 3), np.float32)), Tensor(np.full((3, 3), 0.5, np.float32)))

    def tangents(x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> Any:
        return gs.jvp(net, (x, y), (vx, vy))

    got = run_onnx(export(tangents, X, Y, *v), X.asnumpy(), Y.asnumpy(), *(t.asnumpy() for t in v))
    assert_same(got, leaves(tangents(X, Y, *v)))


def test_parameters_can_be_model_inputs_with_their_values_as_defaults() -> None:
    net = Net()
    grad_fn = ops.GradOperation(get_by_list=True)(net, net.trainable_params())
    model = export(grad_fn, X, Y, params_as_inputs=True, output_names=["dz"])
    assert [i.name for i in model.graph.input] == ["x", "y", "z"] and model.graph.output[0].name == "dz"
    (stored,) = run_onnx(model, X.asnumpy(), Y.asnumpy(), np.array([1.0], np.float32))
    assert_same([stored], leaves(grad_fn(X, Y)))
    # d/dz sum((x z) @ y) = sum(x @ y) whatever z is, so feed another weight to a gradient that depends on it: dx = z * ...
    dx_fn = ops.GradOperation()(net)
    dx_model = export(dx_fn, X, Y, params_as_inputs=True)
    (dx,) = run_onnx(dx_model, X.asnumpy(), Y.asnumpy(), np.array([2.0], np.float32))
    np.testing.assert_allclose(dx, 2 * tutorial_grad_x(), rtol=1e-6)


def test_outputs_that_are_inputs_or_repeated_get_their_own_names() -> None:
    def f(x: Tensor, y: Tensor) -> Any:
        s = x + y
        return x, s, s

    model = export(f, X, X)
    assert [o.name for o in model.graph.output] == ["output0", "output1", "output2"]
    got = run_onnx(model, X.asnumpy(), X.asnumpy())
    assert_same(got, [X.asnumpy(), 2 * X.asnumpy(), 2 * X.asnumpy()])
    with pytest.raises(ValueError, match="also names of inputs"):
        export(f, X, X, output_names=["x", "s", "t"])


def test_an_op_without_an_export_rule_is_a_clear_error_naming_node_and_op(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    monkeypatch.setitem(OPS, "Conv2DBackpropFilter", dataclasses.replace(OPS["Conv2DBackpropFilter"], onnx=None))
    images, labels = cnn_batch(rng)
    net = CNN()
    grad_fn = gs.grad(CNNLoss(net), grad_position=None, weights=net.trainable_params())
    with pytest.raises(GraphError, match=r"^Conv2DBackpropFilter node '.+': op Conv2DBackpropFilter has no ONNX export rule.*'Conv2D'"):
        export(grad_fn, images, labels)


class DropoutMLP(nn.Cell):
    """Dense(6 -> 5), ReLU, Dropout (training: its mask is SplitMix64 of its seeds and the step Parameter), Dense(5 -> 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.relu, self.drop, self.out = nn.Dense(6, 5), nn.ReLU(), nn.Dropout(p=0.4), nn.Dense(5, 1)

    def construct(self, x: Tensor) -> Tensor:
        return self.out(self.drop(self.relu(self.hidden(x)))).sum()


def test_training_dropout_exports_with_its_step_as_an_input_and_draws_the_engines_mask(rng: np.random.Generator) -> None:
    net = DropoutMLP()
    net.set_train(True)
    net.drop.advance()
    x = Tensor(rng.standard_normal((8, 6)).astype(np.float32))
    grad_fn = gs.grad(net, grad_position=0, weights=net.trainable_params())
    model = export(grad_fn, x, params_as_inputs=True)
    names = [i.name for i in model.graph.input]
    weights = {p.name: p for p in net.get_parameters()}
    (step,) = set(names) - set(weights) - {"x"}  # the Dropout's step counter, a graph parameter the Cell does not list

    def feed(k: int) -> list[np.ndarray]:
        return [x.asnumpy(), *(np.array(k, np.int64) if n == step else weights[n].asnumpy() for n in names[1:])]

    k = net.drop.step
    want = leaves(grad_fn(x))  # each call draws the mask of the step it starts at, then moves the step on
    assert_same(run_onnx(model, *feed(k)), want)
    again = leaves(grad_fn(x))  # a new call: a new mask, in gradserve and in the same model fed the new step
    assert not np.allclose(again[0], want[0])
    assert_same(run_onnx(model, *feed(k + 1)), again)


class MulAdd(nn.Cell):
    """MindSpore's bprop test cell: true gradients (2, 1), user gradients (2 dout, 2 y)."""

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return 2 * x + y

    def bprop(self, x: Tensor, y: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * dout, 2 * y


def test_a_user_bprop_exports_as_its_forward_and_its_rule() -> None:
    x, y = Tensor(np.array([1.0, 2.0], np.float32)), Tensor(np.array([3.0, -1.0], np.float32))
    cell = MulAdd()
    assert_same(run_onnx(export(cell, x, y), x.asnumpy(), y.asnumpy()), [cell(x, y).asnumpy()])
    grad_fn = ops.GradOperation(get_all=True)(cell)
    got = run_onnx(export(grad_fn, x, y), x.asnumpy(), y.asnumpy())
    assert_same(got, leaves(grad_fn(x, y)))
    np.testing.assert_array_equal(got[0], [2.0, 2.0])
    np.testing.assert_array_equal(got[1], 2 * y.asnumpy())


def test_opset_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="opset must be between 18"):
        export(Net(), X, Y, opset=13)


# ---- every op with an export rule, on the op table's rows ----

EXTRA_ROWS = [  # ops test_ops.py leaves out (no gradient to check), with forward values all the same
    *(Row(op, BINARY, ints=True) for op in ("Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual")),
    Row("StopGradient", UNARY, ints=True),
    *(Row(op, [v((2, 3)), v((2, 3, 4), axis=1, output_type="int64")], ("distinct",), ints=True) for op in ("Argmax", "Argmin")),
    *(Row(op, [v(shape=(2, 3), Seed0=4), v(fixed={0: 7}, shape=(5,), dtype="float64", Seed1=2)]) for op in ("StandardNormal", "UniformReal")),
    Row("UniformInt", [v(shape=(2, 3), minval=-3, maxval=9, Seed0=4), v(fixed={0: 7}, shape=(4,), minval=0, maxval=2)]),
]
OP_CASES = [
    pytest.param(row, var, dtype, id=f"{row.op}-{i}-{dtype}")
    for row in ROWS + EXTRA_ROWS if OPS[row.op].onnx is not None
    for i, var in enumerate(row.variants)
    for dtype in ("float32", "int32")[: 1 + row.ints]
]


def test_every_primitive_has_an_export_rule() -> None:
    """Only the transform nodes go without one: they are expanded into primitives before export."""
    assert sorted(op for op, d in OPS.items() if d.onnx is None) == sorted(op for op, d in OPS.items() if d.lowered)


def test_every_op_with_an_export_rule_has_a_row() -> None:
    """Const, which takes no inputs, is in every other case's graph (Select's condition, Gather's indices); CustomVjp
    (whose bprop is a library graph) is checked by test_a_user_bprop_exports_as_its_forward_and_its_rule."""
    assert set(exportable_ops()) - {row.op for row in ROWS + EXTRA_ROWS} == {"Const", "CustomVjp"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_draws_with_a_seed_input_export_the_documented_stream(dtype: str) -> None:
    """With the step as an input (the traced ops.standard_normal/rand/uniform's counter), the exported model computes
    the engine's draws for any step fed to it: SplitMix64 in uint64, then each op's transform (Box-Muller in double)."""
    b = GraphBuilder("draws")
    seed = b.input("step", "int64", ())
    outs = (b.op("StandardNormal", seed, shape=(3, 4), dtype=dtype, Seed0=12, Seed1=5),
            b.op("UniformReal", seed, shape=(7,), dtype=dtype, Seed0=3), b.op("UniformInt", seed, shape=(2, 2), minval=-6, maxval=40, Seed0=9))
    graph = b.build(outs)
    model = to_model(graph)
    for step in (0, 1, 12345):
        want = list(compile_graph(graph)(np.array(step)))
        got = run_onnx(model, np.array(step))
        assert_same(got[1:], want[1:], rtol=0, atol=0)
        assert_same(got[:1], want[:1], rtol=1e-6 if dtype == "float32" else 1e-13, atol=1e-12)


def _forward_graph(row: Row, var: V, dtype: str) -> Any:
    b = GraphBuilder(row.op)
    xs = [b.input(f"x{i}", dtype, s) for i, s in enumerate(var.shapes)]
    it = iter(xs)
    args = [b.const(var.fixed[k]) if k in var.fixed else next(it) for k in range(len(xs) + len(var.fixed))]
    outs = b.op(row.op, *args, **var.attrs)
    return b.build(outs if isinstance(outs, tuple) else (outs,))


@pytest.mark.parametrize(("row", "var", "dtype"), OP_CASES)
def test_op_export_matches_the_engine_forward(row: Row, var: V, dtype: str) -> None:
    graph = _forward_graph(row, var, dtype)
    arrays = [np.asarray(np.round(a * 3) if dtype == "int32" else a, dtype) for a in points(row, var, np.random.default_rng(1))]
    want = list(compile_graph(graph)(*arrays))
    got = run_onnx(to_model(graph), *arrays)
    assert_same(got, want)


@pytest.mark.parametrize(("row", "var", "dtype"), OP_CASES)
def test_op_export_loads_back_through_the_importer(row: Row, var: V, dtype: str) -> None:
    """Every ONNX op the export rules write is one the importer reads: the round trip gives the engine's forward."""
    graph = _forward_graph(row, var, dtype)
    arrays = [np.asarray(np.round(a * 3) if dtype == "int32" else a, dtype) for a in points(row, var, np.random.default_rng(1))]
    model = to_model(graph)
    if any(t.data_type == onnx.TensorProto.UINT64 for t in model.graph.initializer):
        assert row.op in ("Dropout", "StandardNormal", "UniformReal", "UniformInt")  # SplitMix64 on uint64 bits (BitShift, BitwiseXor), a dtype the engine lacks
        with pytest.raises(OnnxImportError, match="dtype UINT64 is not supported"):
            convert(model)
        return
    got = compile_graph(convert(model))(*arrays)  # one output is an array, several a tuple
    assert_same(list(got) if isinstance(got, tuple) else [got], list(compile_graph(graph)(*arrays)))
