"""gradserve.parallel.data_parallel: a batch split across three loopback replicas at once gives the gradient of
the whole batch (per the loss's mean or sum), and a replica stopped before or during the call has its shard
computed by another."""
from __future__ import annotations

import threading
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Tensor
from gradserve.client.parallel import loss_reduction
from gradserve.parallel import data_parallel
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2_grpc

from .serverkit import long_run, one_worker_servers, request_counters, targets, wait_until


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Server]]:
    """Three one-worker servers on free loopback ports."""
    with one_worker_servers(3) as found:
        yield found


def grad_calls(server: Server) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        return request_counters(service_pb2_grpc.GradientStub(ch)).get(("Grad", "OK"), 0)


def problem(reduction: str, rows: int = 10) -> tuple[nn.Cell, Tensor, Tensor]:
    nn.set_seed(5)
    net = nn.SequentialCell([nn.Dense(4, 6), nn.Tanh(), nn.Dense(6, 3)])
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction=reduction))
    rng = np.random.default_rng(2)
    return loss, Tensor(rng.normal(size=(rows, 4)).astype(np.float32)), Tensor(rng.integers(0, 3, rows).astype(np.int32))


def whole_batch(grad_fn: Any, *args: Any) -> Any:
    """The unsplit call on the embedded engine: the oracle."""
    before = gs.get_context("target")
    gs.set_context(target=None)
    try:
        return grad_fn(*args)
    finally:
        gs.set_context(target=before)


def close(a: Any, b: Any) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.asnumpy(), y.asnumpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_split_gradient_equals_the_whole_batch_and_uses_every_replica(clean_context: None, servers: list[Server],
                                                                       reduction: str) -> None:
    loss, x, y = problem(reduction)
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    expected = whole_batch(grad_fn, x, y)
    gs.set_context(target=targets(servers), retry_seconds=0)
    before = [grad_calls(s) for s in servers]
    split = data_parallel(grad_fn)  # the reduction is read from the loss Cell
    assert split.reduction == reduction
    close(split(x, y), expected)
    assert [grad_calls(s) - b for s, b in zip(servers, before)] == [1, 1, 1]  # shards of 3, 4 and 3 rows


def test_value_and_grad_of_a_function_splits_its_value_too(clean_context: None, servers: list[Server]) -> None:
    loss, x, y = problem("mean", rows=11)
    net, loss_fn = loss.backbone_network, loss._loss_fn

    def forward_fn(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        logits = net(a)
        return loss_fn(logits, b), logits

    vg = gs.value_and_grad(forward_fn, None, net.trainable_params(), has_aux=True)
    (value, logits), grads = whole_batch(vg, x, y)
    gs.set_context(target=targets(servers), retry_seconds=0)
    (s_value, s_logits), s_grads = data_parallel(vg)(x, y)
    close((s_value, s_logits), (value, logits))  # the scalar loss averaged, the per-sample logits concatenated
    close(s_grads, grads)


def test_embedded_shards_give_the_same_gradient(clean_context: None) -> None:
    loss, x, y = problem("mean", rows=7)
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    close(data_parallel(grad_fn, shards=3)(x, y), grad_fn(x, y))


def test_reduction_must_be_known_and_only_weights_are_split(clean_context: None) -> None:
    loss, x, y = problem("none")
    weights = gs.ParameterTuple(loss.trainable_params())
    with pytest.raises(ValueError, match="reduction='mean' or reduction='sum'"):
        data_parallel(ops.GradOperation(get_by_list=True)(loss, weights))
    assert loss_reduction(problem("sum")[0]) == "sum"
    with pytest.raises(ValueError, match="inputs' gradients"):
        data_parallel(ops.GradOperation(get_all=True)(loss), reduction="mean")
    with pytest.raises(ValueError, match="grad_position=None"):
        data_parallel(gs.grad(loss, 0, weights), reduction="mean")


def test_a_replica_stopped_before_the_call_has_its_shard_done_by_another(clean_context: None, servers: list[Server]) -> None:
    loss, x, y = problem("mean")
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    expected = whole_batch(grad_fn, x, y)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")) as gone:
        port = gone.port
    gs.set_context(target=f"{targets(servers[:2])},127.0.0.1:{port}", retry_seconds=5)
    close(data_parallel(grad_fn)(x, y), expected)


def test_a_replica_killed_mid_call_has_its_shard_done_by_another(clean_context: None, servers: list[Server]) -> None:
    loss, x, y = problem("mean")
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    expected = whole_batch(grad_fn, x, y)
    doomed = Server(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning"))
    doomed.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{doomed.port}")
        busy = service_pb2_grpc.GradientStub(channel).Run.future(long_run(service_pb2_grpc.GradientStub(channel)))
        wait_until(lambda: doomed.servicer._inflight == 1, "the long run holds the only worker")
        gs.set_context(target=f"{targets(servers[:2])},127.0.0.1:{doomed.port}", retry_seconds=5)
        out: dict[str, Any] = {}

        def split_call() -> None:
            try:
                out["grads"] = data_parallel(grad_fn)(x, y)
            except Exception as exc:  # shown by the assert below
                out["error"] = exc

        call = threading.Thread(target=split_call)
        call.start()
        wait_until(lambda: doomed.servicer._inflight == 2, "the third shard waits on the doomed replica")
        doomed.stop(0)
        call.join(60)
        assert not call.is_alive()
        assert "error" not in out, out.get("error")
        close(out["grads"], expected)
        with pytest.raises(grpc.RpcError):
            busy.result(60)
        channel.close()
    finally:
        doomed.stop(0)
