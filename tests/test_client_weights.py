"""Weights travel with the call: a network is registered once per server by its structure, and each Grad or Run
carries only the parameter values that differ from the registered ones. Over 1,000 training steps a server sees
one RegisterNetwork, one plan key and a registry that does not grow, and every gradient equals the embedded
engine's and the closed form."""
from __future__ import annotations

import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from serverkit import wait_until
from trainkit import LR, STEPS, W0, B, T, X, closed_form, squared_error

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor
from gradserve.client import backends, context, remote
from gradserve.client.backend import GradFlags
from gradserve.client.embedded import EmbeddedBackend
from gradserve.client.remote import RemoteBackend
from gradserve.server import compute
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc


class Recorded(grpc.UnaryUnaryClientInterceptor):
    """Keeps every request the client sends, by method name."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        kind = getattr(service_pb2, f"{method}Request")  # the backend sends each request serialized once, as bytes
        self.requests.append((method, kind.FromString(request) if isinstance(request, bytes) else request))
        return continuation(details, request)

    def of(self, method: str) -> list[Any]:
        return [r for m, r in self.requests if m == method]


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """Every request remote backends created in this test send."""
    seen = Recorded()
    monkeypatch.setattr(remote, "open_channel", lambda target, options: grpc.intercept_channel(
        context.open_channel(target, options), seen))
    return seen


@contextmanager
def two_workers() -> Iterator[Server]:
    """A two-worker server on a free loopback port serving /metrics on another, always stopped afterwards."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0)) as server:
        yield server


def served(server: Server) -> dict[tuple[str, str], int]:
    """``server``'s request counters by (method, status code name), from ServerInfo."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = service_pb2_grpc.GradientStub(channel).ServerInfo(service_pb2.ServerInfoRequest(), timeout=10)
    return {(c.method, c.code): c.count for c in info.request_counters}


def registered_networks(server: Server) -> float:
    """The gradserve_registered_networks gauge scraped from ``server``'s /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("gradserve_registered_networks "):
                return float(line.split()[1])
    raise AssertionError("no gradserve_registered_networks in /metrics")


def test_a_thousand_steps_register_once_and_send_only_changed_weights(recorded: Recorded) -> None:
    flags = GradFlags(get_by_list=True, weights=("w",))
    embedded = EmbeddedBackend()
    local_id = embedded.register(squared_error())
    w = W0
    with two_workers() as server:
        backend = RemoteBackend(f"127.0.0.1:{server.port}")
        try:
            nid = backend.register(squared_error())
            sizes = []
            for step in range(STEPS):
                params = {"w": w, "b": B}
                (dw,) = backend.grad(nid, flags, [X, T], params)
                (expected,) = embedded.grad(local_id, flags, [X, T], params)
                np.testing.assert_array_equal(dw, expected)
                np.testing.assert_allclose(dw, closed_form(w), rtol=1e-12, atol=1e-15)
                if step in (0, STEPS - 1):
                    sizes.append(registered_networks(server))
                w = w - LR * dw
        finally:
            backend.close()
        counts = served(server)
    assert counts.get(("RegisterNetwork", "OK"), 0) == 1 and counts.get(("Grad", "OK"), 0) == STEPS, counts
    assert sizes == [1.0, 1.0]
    grads = recorded.of("Grad")
    assert len(grads) == STEPS
    assert not grads[0].parameters  # the first step's w is the registered value
    assert all(set(r.parameters) == {"w"} for r in grads[1:])  # b never changed, so it is never sent
    assert len({compute.plan_key("grad", r, r.network_id) for r in grads}) == 1  # one compiled plan per worker
    np.testing.assert_allclose(X * w + B, T, atol=1e-6)  # the training converged to the least-squares fit


class Line(nn.Cell):
    """sum((x * w + b - t)^2) with trainable w and a fixed b, as a user writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(W0), name="w")
        self.b = Parameter(Tensor(B), name="b", requires_grad=False)

    def construct(self, x: Tensor, t: Tensor) -> Tensor:
        r = x * self.w + self.b - t
        return (r * r).sum()


def train(steps: int) -> list[np.ndarray]:
    """``steps`` of gradient descent with ``set_data`` on the current backend: each step's gradient."""
    net = Line()
    grad_fn = ops.GradOperation(get_by_list=True)(net, ParameterTuple([net.w]))
    x, t = Tensor(X), Tensor(T)
    out = []
    for _ in range(steps):
        (dw,) = grad_fn(x, t)
        out.append(dw.asnumpy())
        net.w.set_data(Tensor(net.w.asnumpy() - LR * out[-1]))
    return out


def test_set_data_never_registers_again(clean_context: None, recorded: Recorded) -> None:
    embedded = train(STEPS)
    w = W0
    for dw in embedded:
        np.testing.assert_allclose(dw, closed_form(w), rtol=1e-12, atol=1e-15)
        w = w - LR * dw
    with two_workers() as server:
        gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
        try:
            served_grads = train(STEPS)
        finally:
            for backend in backends._backends.values():
                backend.close()
        counts = served(server)
        size = registered_networks(server)
    for dw, expected in zip(served_grads, embedded):
        np.testing.assert_array_equal(dw, expected)
    assert counts.get(("RegisterNetwork", "OK"), 0) == 1 and counts.get(("Grad", "OK"), 0) == STEPS, counts
    assert size == 1.0
    assert all(set(r.parameters) <= {"w"} for r in recorded.of("Grad"))


def test_a_restarted_server_gets_the_registered_values_and_the_changed_ones() -> None:
    flags = GradFlags(get_by_list=True, weights=("w",))
    with two_workers() as first:
        port = first.port
        backend = RemoteBackend(f"127.0.0.1:{port}")
        try:
            nid = backend.register(squared_error())
            w = W0 * 3
            (dw,) = backend.grad(nid, flags, [X, T], {"w": w, "b": B})
            np.testing.assert_allclose(dw, closed_form(w), rtol=1e-12)
            first.stop(1)
            with running(ServerConfig(host="127.0.0.1", port=port, workers=1)) as restarted:
                def answered() -> bool:  # UNAVAILABLE until the channel has reconnected
                    try:
                        return backend.grad(nid, flags, [X, T], {"w": w, "b": B}) is not None
                    except remote.RemoteError as exc:
                        if exc.code != grpc.StatusCode.UNAVAILABLE:
                            raise
                        return False

                wait_until(answered, "the restarted server to answer")
                for w in (W0 * 3, W0 * -2, W0):
                    (dw,) = backend.grad(nid, flags, [X, T], {"w": w, "b": B})
                    np.testing.assert_allclose(dw, closed_form(w), rtol=1e-12)
                counts = served(restarted)
        finally:
            backend.close()
    assert counts.get(("Grad", "NOT_FOUND"), 0) == 1 and ("RegisterNetwork", "OK") not in counts, counts
    assert counts.get(("Grad", "OK"), 0) >= 4, counts


def test_a_network_traced_again_with_other_values_is_the_same_network(recorded: Recorded) -> None:
    flags = GradFlags(get_by_list=True, weights=("w",))
    with two_workers() as server:
        backend = RemoteBackend(f"127.0.0.1:{server.port}")
        try:
            nid = backend.register(squared_error())
            again = backend.register(squared_error(W0 * 2))
            (dw,) = backend.grad(again, flags, [X, T], {"w": W0 * 2, "b": B})
            other = backend.register(squared_error(np.zeros(1)))  # a parameter's shape is structure
        finally:
            backend.close()
        counts = served(server)
    assert again == nid != other
    np.testing.assert_allclose(dw, closed_form(W0 * 2), rtol=1e-12)
    assert counts.get(("RegisterNetwork", "OK"), 0) == 2, counts
    assert set(recorded.of("Grad")[0].parameters) == {"w"}


class Reciprocal(nn.Cell):
    """x / w, whose sign of infinity tells a weight of -0.0 from one of 0.0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(Tensor(np.array([0.0, 2.0], np.float32)), name="w")

    def construct(self, x: Tensor) -> Tensor:
        return x / self.w


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # 1 / 0 is the point
def test_a_weight_equal_to_the_registered_one_but_not_bit_for_bit_is_sent(clean_context: None, recorded: Recorded) -> None:
    x = Tensor(np.array([1.0, 1.0], np.float32))
    with two_workers() as server:
        gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
        try:
            net = Reciprocal()
            before = net(x).asnumpy()
            net.w.set_data(Tensor(np.array([-0.0, 2.0], np.float32)))  # == the registered 0.0, yet 1 / w is -inf
            after = net(x).asnumpy()
        finally:
            for backend in backends._backends.values():
                backend.close()
    np.testing.assert_array_equal(before, [np.inf, 0.5])
    np.testing.assert_array_equal(after, [-np.inf, 0.5])  # IEEE 754: 1 / -0.0 is -inf, as the embedded engine gives
    runs = recorded.of("Run")
    assert not runs[0].parameters and set(runs[1].parameters) == {"w"}
