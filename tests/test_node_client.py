"""A Node.js client written from docs/wire-format.md and the .proto files alone (examples/node/tutorial.mjs,
@grpc/grpc-js + @grpc/proto-loader) gets the tutorial's numbers and a readable BadRequest from a real server.

Needs ``node`` and ``npm ci --prefix examples/node`` (CI runs it); without them the test fails rather than skips."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from google.rpc import status_pb2
from onnx import numpy_helper

from gradserve.server.app import Server

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples" / "node"
SCRIPT = NODE_DIR / "tutorial.mjs"
# google/rpc/status.proto and error_details.proto ship with the googleapis-common-protos wheel, next to the
# generated modules; that directory is the include root the Node script needs for service.proto's import.
GOOGLEAPIS = pathlib.Path(status_pb2.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(server: Server) -> dict:
    node = shutil.which("node")
    assert node, "node is not on PATH; install Node.js 18+ to run the Node client test"
    assert (NODE_DIR / "node_modules").is_dir(), \
        "examples/node/node_modules is missing: run `npm ci --prefix examples/node` first"
    assert (GOOGLEAPIS / "google" / "rpc" / "status.proto").is_file(), f"no google/rpc/status.proto under {GOOGLEAPIS}"
    env = {**os.environ, "GOOGLEAPIS_PROTO_DIR": str(GOOGLEAPIS)}
    proc = subprocess.run([node, str(SCRIPT), f"127.0.0.1:{server.port}"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, f"tutorial.mjs failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
    return json.loads(proc.stdout)


def values(t: dict, dtype: str, shape: list[int]) -> np.ndarray:
    assert (t["dtype"], t["shape"]) == (dtype, shape)
    return np.asarray(t["value"])


def test_list_ops_and_registration(result: dict) -> None:
    assert set(result["ops_checked"]) >= {"MatMul", "Mul", "Sin", "Jvp", "Conv2D"}
    assert result["network_id"] and result["created"] is True


def test_first_order_gradients(result: dict) -> None:
    f32 = dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values(result["dx"], "DATA_TYPE_FLOAT32", [2, 3]),
                               [[4.51, 2.7, 3.6], [4.51, 2.7, 3.6]], **f32)
    np.testing.assert_allclose(values(result["dz"], "DATA_TYPE_FLOAT32", [1]), [21.536], **f32)
    np.testing.assert_allclose(values(result["sens"], "DATA_TYPE_FLOAT32", [2, 3]),
                               [[2.211, 0.51, 1.49], [5.588, 2.68, 4.07]], **f32)


@pytest.mark.parametrize("key", ["d2sin", "d2sin_run"])
def test_second_derivative_of_sin(result: dict, key: str) -> None:
    (v,) = values(result[key], "DATA_TYPE_FLOAT64", [1])
    assert v == pytest.approx(-5.35897932e-08, rel=1e-8, abs=0)


def test_forward_mode_node_built_by_hand(result: dict) -> None:
    """A Jvp node over a library Sin, written by hand in the Node client: (sin x, cos x * v) at x = 0.5, v = 2."""
    y, dy = result["jvp_sin"]
    np.testing.assert_allclose(values(y, "DATA_TYPE_FLOAT64", [1]), [np.sin(0.5)], rtol=1e-15)
    np.testing.assert_allclose(values(dy, "DATA_TYPE_FLOAT64", [1]), [2 * np.cos(0.5)], rtol=1e-15)


def test_bad_graph_names_the_op_field(result: dict) -> None:
    bad = result["bad_graph"]
    assert bad is not None, "the graph with op 'Matmul' was accepted"
    assert (bad["code"], bad["code_name"]) == (3, "INVALID_ARGUMENT")
    fields = {v["field"]: v["description"] for v in bad["field_violations"]}
    assert "graph.nodes[1].op" in fields, bad
    assert "unknown op 'Matmul'" in fields["graph.nodes[1].op"] and "MatMul" in fields["graph.nodes[1].op"]


def test_convolution_network_built_by_hand(result: dict) -> None:
    """A two-layer CNN (3x3 stride-2 padded Conv2D, Tanh, grouped 2x2 Conv2D, sum of squares) written as graph
    nodes in the Node client: its loss and gradients w.r.t. the input and both weights equal PyTorch's (float64)."""
    conv = result["conv"]
    x, w1, w2 = (torch.tensor(np.asarray(conv[k], np.float64), requires_grad=True) for k in ("x", "w1", "w2"))
    c2 = torch.nn.functional.conv2d(torch.tanh(torch.nn.functional.conv2d(x, w1, stride=2, padding=1)), w2, groups=2)
    loss = (c2 * c2).sum()
    dx, dw1, dw2 = torch.autograd.grad(loss, (x, w1, w2))
    np.testing.assert_allclose(values(conv["loss"], "DATA_TYPE_FLOAT64", []), loss.item(), rtol=1e-12)
    np.testing.assert_allclose(values(conv["dx"], "DATA_TYPE_FLOAT64", [2, 3, 6, 6]), dx.numpy(), rtol=1e-10, atol=1e-12)
    got_w1, got_w2 = conv["dw"]
    np.testing.assert_allclose(values(got_w1, "DATA_TYPE_FLOAT64", [4, 3, 3, 3]), dw1.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(values(got_w2, "DATA_TYPE_FLOAT64", [2, 2, 2, 2]), dw2.numpy(), rtol=1e-10, atol=1e-12)


def test_onnx_model_sent_as_bytes(result: dict) -> None:
    """examples/node/fixtures/mlp.onnx registered from Node by its bytes: forward and gradients w.r.t. the input and
    every initializer equal PyTorch's on the model rebuilt from the file's initializers (float64)."""
    model = onnx.load(NODE_DIR / "fixtures" / "mlp.onnx")
    w = {t.name: torch.tensor(numpy_helper.to_array(t), requires_grad=True) for t in model.graph.initializer}
    x = torch.tensor(np.asarray(result["onnx"]["x"], np.float64), requires_grad=True)
    y = torch.tanh(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]
    want = torch.autograd.grad(y.sum(), [x, *(w[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))])
    np.testing.assert_allclose(values(result["onnx"]["y"], "DATA_TYPE_FLOAT64", [2, 2]), y.detach().numpy(), rtol=1e-12)
    (dx,), dws = result["onnx"]["gradients"]
    for got, ref in zip((dx, *dws), want):
        np.testing.assert_allclose(values(got, "DATA_TYPE_FLOAT64", list(ref.shape)), ref.numpy(), rtol=1e-12, atol=1e-14)
