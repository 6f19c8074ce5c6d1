"""``set_context(batch_split=True)``: training through TrainOneStepCell and through a functional value_and_grad loop
splits each gradient over three loopback replicas and ends at the weights unsplit training reaches; calls that
cannot be split run whole on one replica with one warning; the embedded engine ignores the flag. And the
Parameter writes of split calls (``data_parallel``): once per call, with the first shard's BatchNorm statistics."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Tensor
from gradserve.client import backends
from gradserve.parallel import data_parallel
from gradserve.server.app import Server
from gradserve.v1 import service_pb2_grpc

from .serverkit import one_worker_servers, request_counters, targets
from .trainkit import normed

STEPS = 4


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Server]]:
    """Three one-worker servers on free loopback ports."""
    with one_worker_servers(3) as found:
        yield found


def grad_calls(servers: list[Server], method: str = "Grad") -> list[int]:
    """Each server's count of ``method`` calls answered OK (a functional transform's network runs by Run)."""
    counts = []
    for s in servers:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            counts.append(request_counters(service_pb2_grpc.GradientStub(ch)).get((method, "OK"), 0))
    return counts


def data(rows: int = 10) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(2)
    return Tensor(rng.normal(size=(rows, 4)).astype(np.float32)), Tensor(rng.integers(0, 3, rows).astype(np.int32))


def mlp() -> nn.Cell:
    nn.set_seed(5)
    return nn.SequentialCell([nn.Dense(4, 6), nn.Tanh(), nn.Dense(6, 3)])


def weights(net: nn.Cell) -> list[np.ndarray]:
    return [p.asnumpy().copy() for p in net.get_parameters()]


def train_cell(steps: int) -> tuple[list[np.ndarray], list[float]]:
    """TrainOneStepCell with Momentum for ``steps`` steps: the weights and the losses."""
    net = mlp()
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9))
    x, y = data()
    losses = [float(step(x, y).asnumpy()) for _ in range(steps)]
    return weights(net), losses


def train_functional(steps: int) -> tuple[list[np.ndarray], list[float]]:
    """MindSpore 2.x's functional loop, ``value_and_grad(forward_fn, None, optimizer.parameters)`` then Adam."""
    net = mlp()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="sum")
    optimizer = nn.Adam(net.trainable_params(), learning_rate=0.01)

    def forward_fn(a: Tensor, b: Tensor) -> Tensor:
        return loss_fn(net(a), b)

    grad_fn = gs.value_and_grad(forward_fn, None, optimizer.parameters)
    x, y = data()
    losses = []
    for _ in range(steps):
        value, grads = grad_fn(x, y)
        optimizer(grads)
        losses.append(float(value.asnumpy()))
    return weights(net), losses


@pytest.mark.parametrize(("train", "method"), [(train_cell, "Grad"), (train_functional, "Run")])
def test_split_training_reaches_the_unsplit_weights_with_each_replica_answering_a_shard(
        clean_context: None, servers: list[Server], train: Callable[[int], tuple[list[np.ndarray], list[float]]],
        method: str) -> None:
    expected, expected_losses = train(STEPS)  # embedded, whole batches: the oracle
    gs.set_context(target=targets(servers), retry_seconds=0, batch_split=True)
    before = grad_calls(servers, method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these calls split: no fallback warning
        got, losses = train(STEPS)
    # one shard per replica per step (TrainOneStepCell's forward is a Run on one replica)
    assert [a - b for a, b in zip(grad_calls(servers, method), before)] == [STEPS] * 3
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_a_call_that_cannot_split_runs_whole_on_one_replica_warning_once(clean_context: None, servers: list[Server]) -> None:
    net = mlp()
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    grad_fn = gs.grad(loss, 0, net.trainable_params())  # the input's gradient too: does not add up over shards
    x, y = data()
    expected = grad_fn(x, y)
    gs.set_context(target=targets(servers), retry_seconds=0, batch_split=True)
    before = grad_calls(servers, "Run")
    with pytest.warns(UserWarning, match="runs whole on one replica.*grad_position=None"):
        got = grad_fn(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = gs.grad(loss, 0, net.trainable_params())(x, y)  # the same reason: no second warning
    assert sum(grad_calls(servers, "Run")) - sum(before) == 2
    for g, e in zip((got[0], *got[1]), (expected[0], *expected[1]), strict=True):
        np.testing.assert_allclose(g.asnumpy(), e.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again[0].asnumpy(), expected[0].asnumpy(), rtol=1e-5, atol=1e-6)


def test_the_flag_is_read_from_the_environment_and_ignored_embedded(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gs.get_context("batch_split") is False
    monkeypatch.setenv("GRADSERVE_BATCH_SPLIT", "1")
    assert gs.get_context("batch_split") is True
    assert backends.batch_splitter() is None  # no target: the embedded engine runs the call whole
    with pytest.raises(TypeError, match="batch_split must be None or a bool"):
        gs.set_context(batch_split="yes")
    expected, _ = train_cell(2)
    gs.set_context(batch_split=True)
    np.testing.assert_allclose(train_cell(2)[0][0], expected[0])


def all_values(net: nn.Cell) -> list[np.ndarray]:
    """Every Parameter's value in order, the moving statistics included, then Dropout's step counter."""
    (dropout,) = [c for _, c in net.cells_and_names() if isinstance(c, nn.Dropout)]
    return [p.asnumpy().copy() for p in net.get_parameters()] + [np.array(dropout.step)]


@pytest.mark.parametrize("functional", [False, True])
def test_a_split_call_writes_once_with_the_first_shards_statistics(clean_context: None, servers: list[Server],
                                                                   functional: bool) -> None:
    def gradient(loss: nn.Cell) -> Any:
        params = loss.trainable_params()
        if functional:
            return gs.value_and_grad(loss, None, params)
        return ops.GradOperation(get_by_list=True)(loss, gs.ParameterTuple(params))

    x, y = data(rows=10)  # three shards of rows 0:3, 3:7 and 7:10
    oracle = normed(4, 6)
    initial = all_values(oracle)
    gradient(oracle)(x[:3], y[:3])  # embedded, one call on the first shard
    expected = all_values(oracle)
    assert expected[-1] == 1  # one step of Dropout
    assert any(not np.array_equal(a, b) for a, b in zip(initial, expected))  # that call wrote something

    gs.set_context(target=targets(servers), retry_seconds=0)
    loss = normed(4, 6)
    data_parallel(gradient(loss))(x, y)
    for got, want in zip(all_values(loss), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_split_train_step_writes_once_through_its_forward(clean_context: None, servers: list[Server]) -> None:
    x, y = data(rows=10)
    oracle = normed(4, 6)
    oracle(x, y)  # embedded: the forward alone writes the step's statistics and advances Dropout once
    expected = all_values(oracle)
    gs.set_context(target=targets(servers), retry_seconds=0, batch_split=True)
    loss = normed(4, 6)
    weights = loss.trainable_params()
    before = [w.asnumpy().copy() for w in weights]
    nn.TrainOneStepCell(loss, nn.SGD(weights, learning_rate=0.0))(x, y)  # lr 0: only the writes change anything
    got = all_values(loss)
    assert got[-1] == 1
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    for w, b in zip(weights, before):
        np.testing.assert_array_equal(w.asnumpy(), b)
