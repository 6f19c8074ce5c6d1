"""grad_fn.stream(batches, in_flight): results in order, equal to unary calls, at most in_flight batches read
ahead of the results, errors at their own item; embedded and through a 2-worker server (one GradStream)."""
from __future__ import annotations

from typing import Any, Iterator

import grpc
import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Tensor
from gradserve.client.remote import RemoteError
from gradserve.parallel import stream
from gradserve.server.app import running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2_grpc

from .serverkit import request_counters
from .trainkit import normed


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    """Two workers; a request over 10**7 flops is refused (so that one batch of a stream can fail on the server)."""
    return ServerConfig(host="127.0.0.1", port=0, workers=2, limits=Limits(max_request_flops=10**7))


def mlp() -> nn.Cell:
    nn.set_seed(3)
    return nn.SequentialCell([nn.Dense(6, 8), nn.Tanh(), nn.Dense(8, 3)])


def batches(n: int, rows: int = 5) -> list[tuple[Tensor, Tensor]]:
    rng = np.random.default_rng(7)
    return [(Tensor(rng.normal(size=(rows, 6)).astype(np.float32)), Tensor(rng.integers(0, 3, rows).astype(np.int32)))
            for _ in range(n)]


class Counted:
    """An iterator over ``items`` that counts how many were read."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.read = items, 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.read += 1
            yield item


def close(a: Any, b: Any) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.asnumpy(), y.asnumpy(), rtol=1e-6, atol=1e-7)


def test_gradoperation_stream_is_in_order_and_equals_unary_calls(where: str, server: Any) -> None:
    loss = nn.WithLossCell(mlp(), nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    data = batches(9)
    expected = [grad_fn(x, y) for x, y in data]
    got = list(grad_fn.stream(data, in_flight=4))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        close(g, e)
    # distinct batches give distinct gradients, so equality above also checks the order
    assert not np.allclose(got[0][0].asnumpy(), got[1][0].asnumpy())


@pytest.mark.parametrize("in_flight", [1, 3])
def test_at_most_in_flight_batches_are_read_ahead(where: str, server: Any, in_flight: int) -> None:
    loss = nn.WithLossCell(mlp(), nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    source = Counted(batches(8))
    for k, _ in enumerate(grad_fn.stream(source, in_flight=in_flight)):
        assert source.read <= k + in_flight
        if where == "remote":  # the window is filled before waiting: in_flight requests are on the stream
            assert source.read == min(8, k + in_flight)
        else:  # in process: one at a time
            assert source.read == k + 1
    assert source.read == 8


def test_a_remote_stream_is_one_gradstream(clean_context: None, server: Any) -> None:
    gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    loss = nn.WithLossCell(mlp(), nn.MSELoss())
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    rng = np.random.default_rng(1)
    data = [(Tensor(rng.normal(size=(4, 6)).astype(np.float32)), Tensor(rng.normal(size=(4, 3)).astype(np.float32)))
            for _ in range(6)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        before = request_counters(stub)
        assert len(list(grad_fn.stream(data, in_flight=2))) == 6
        after = request_counters(stub)
    gained = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert gained.get(("GradStream", "OK"), 0) == 6
    assert gained.get(("Grad", "OK"), 0) == 0


def test_value_and_grad_and_forward_stream(where: str, server: Any) -> None:
    net = mlp()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="sum")

    def forward_fn(x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(net(x), y)

    vg = gs.value_and_grad(forward_fn, None, net.trainable_params())
    data = batches(5)
    for (v, g), (x, y) in zip(vg.stream(data, in_flight=2), data, strict=True):
        ev, eg = vg(x, y)
        close((v,), (ev,))
        close(g, eg)
    xs = [x for x, _ in data]
    for out, x in zip(stream(net, xs, in_flight=3), xs, strict=True):
        close((out,), (net(x),))


def test_a_client_side_error_surfaces_at_its_item(where: str, server: Any) -> None:
    loss = nn.WithLossCell(mlp(), nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    data: list[Any] = batches(5)
    data[3] = (Tensor(np.ones((5, 4), np.float32)), data[3][1])  # 4 features where the first Dense takes 6
    got = []
    with pytest.raises(ValueError, match="in_channels|6"):
        for g in grad_fn.stream(data, in_flight=4):
            got.append(g)
    assert len(got) == 3
    for g, (x, y) in zip(got, data[:3]):
        close(g, grad_fn(x, y))


def test_a_server_error_surfaces_at_its_item(clean_context: None, server: Any) -> None:
    gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    loss = nn.WithLossCell(mlp(), nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    data = batches(6)
    data[2] = batches(1, rows=100_000)[0]  # over the server's max_request_flops
    got = []
    with pytest.raises(RemoteError) as info:
        for g in grad_fn.stream(data, in_flight=3):
            got.append(g)
    assert info.value.code.name == "RESOURCE_EXHAUSTED"
    assert len(got) == 2
    for g, (x, y) in zip(got, data[:2]):
        close(g, grad_fn(x, y))


def test_in_flight_must_be_a_positive_int(clean_context: None, server: Any) -> None:
    gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    grad_fn = ops.GradOperation()(mlp())
    with pytest.raises(ValueError, match="in_flight"):
        list(grad_fn.stream([Tensor(np.ones((2, 6), np.float32))], in_flight=0))


def test_a_stream_whose_server_is_down_moves_to_the_next_target(clean_context: None, server: Any) -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")) as gone:
        port = gone.port
    gs.set_context(target=f"127.0.0.1:{port},127.0.0.1:{server.port}", retry_seconds=5)  # the first stream goes to the stopped one
    loss = nn.WithLossCell(mlp(), nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    data = batches(5)
    got = list(grad_fn.stream(data, in_flight=2))
    for g, (x, y) in zip(got, data, strict=True):
        close(g, grad_fn(x, y))


def test_a_stream_with_no_server_reachable_ends_unavailable(clean_context: None) -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")) as gone:
        port = gone.port
    gs.set_context(target=f"127.0.0.1:{port}", retry_seconds=0)
    grad_fn = ops.GradOperation()(mlp())
    with pytest.raises(RemoteError) as info:
        list(grad_fn.stream([Tensor(np.ones((2, 6), np.float32))] * 3, in_flight=2))
    assert info.value.code.name == "UNAVAILABLE"


def test_a_network_the_server_evicted_is_sent_inline_on_the_stream(clean_context: None) -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning",
                              limits=Limits(max_registered_networks=1))) as small:
        gs.set_context(target=f"127.0.0.1:{small.port}", retry_seconds=0)
        net = mlp()
        grad_fn = ops.GradOperation()(net)
        data = [Tensor(np.full((2, 6), v, np.float32)) for v in (0.1, 0.2, 0.3)]
        first = list(grad_fn.stream(data, in_flight=2))
        ops.GradOperation()(nn.Dense(3, 2))(Tensor(np.ones((1, 3), np.float32)))  # evicts the mlp's network
        with grpc.insecure_channel(f"127.0.0.1:{small.port}") as ch:
            before = request_counters(service_pb2_grpc.GradientStub(ch))
            again = list(grad_fn.stream(data, in_flight=2))
            after = request_counters(service_pb2_grpc.GradientStub(ch))
    assert after.get(("GradStream", "NOT_FOUND"), 0) > before.get(("GradStream", "NOT_FOUND"), 0)
    for a, b in zip(again, first, strict=True):
        close((a,), (b,))


def dropout_step(net: nn.Cell) -> int:
    (dropout,) = [c for _, c in net.cells_and_names() if isinstance(c, nn.Dropout)]
    return dropout.step


@pytest.mark.parametrize("functional", [False, True])
def test_a_stream_one_in_flight_writes_as_direct_calls_in_order(where: str, server: Any, functional: bool) -> None:
    def gradient(loss: nn.Cell) -> Any:
        if functional:
            return gs.value_and_grad(loss, None, loss.trainable_params())
        return ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))

    data = batches(4)
    oracle = normed(6, 8)
    expected = [gradient(oracle)(x, y) for x, y in data]  # each direct call writes before the next one
    loss = normed(6, 8)
    got = list(gradient(loss).stream(data, in_flight=1))
    for g, e in zip(got, expected, strict=True):
        close(g[1], e[1]) if functional else close(g, e)
    assert dropout_step(loss) == 4
    for p, q in zip(loss.get_parameters(), oracle.get_parameters(), strict=True):
        np.testing.assert_allclose(p.asnumpy(), q.asnumpy(), rtol=1e-6, atol=1e-7)


def test_a_batch_read_ahead_reads_the_state_before_earlier_batches_writes(where: str, server: Any) -> None:
    loss = normed(6, 8)
    grad_fn = ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(loss.trainable_params()))
    assert len(list(grad_fn.stream(batches(5), in_flight=3))) == 5
    # embedded: one batch at a time, 5 steps. Remotely batches 0-2 are prepared at once (each reads step 0 and
    # writes 1); batch 3 is prepared after batch 0's result was given and batch 4 after batch 1's (both read 1)
    assert dropout_step(loss) == (5 if where == "embedded" else 2)


def test_a_streamed_forward_writes_its_moving_statistics(where: str, server: Any) -> None:
    data = batches(3)
    oracle, loss = normed(6, 8), normed(6, 8)
    expected = [oracle(x, y) for x, y in data]
    got = list(stream(loss, data, in_flight=1))
    close(got, expected)
    for p, q in zip(loss.get_parameters(), oracle.get_parameters(), strict=True):
        np.testing.assert_allclose(p.asnumpy(), q.asnumpy(), rtol=1e-6, atol=1e-7)
