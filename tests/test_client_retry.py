"""The SDK rides out a server restart: a call made while no server listens retries UNAVAILABLE until one does,
for at most ``retry_seconds`` and never past the call's ``timeout``. The server comes back on the same port
only once the call has been refused (an interceptor on the SDK's channel sees the refusal), so nothing here
depends on how long anything takes; only the status codes and the results are asserted."""
from __future__ import annotations

import threading
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from clientkit import tutorial_grad_x
from serverkit import slow_request, wait_until

import gradserve as gs
from gradserve.client import context, remote
from gradserve.client.remote import RemoteError
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.server.tutorial import GRAD_X
from gradserve.v1 import service_pb2, service_pb2_grpc


class Refusals(grpc.UnaryUnaryClientInterceptor):
    """Counts the SDK's calls that end UNAVAILABLE and sets ``refused`` at the first."""

    def __init__(self) -> None:
        self.count = 0
        self.refused = threading.Event()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if outcome.code() == grpc.StatusCode.UNAVAILABLE:
            self.count += 1
            self.refused.set()
        return outcome


@pytest.fixture()
def refusals(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Refusals]:
    """A clean SDK context whose remote channels report refusals to the returned Refusals; backends closed afterwards."""
    seen = Refusals()
    monkeypatch.setattr(remote, "open_channel", lambda target, options: grpc.intercept_channel(
        context.open_channel(target, options), seen))
    yield seen


@pytest.fixture()
def free_port() -> int:
    """A loopback port a server just listened on and no longer does."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        return server.port


class LateServer:
    """Starts a one-worker server on ``port`` from another thread once ``start`` is set; ``stop()`` ends it."""

    def __init__(self, port: int, start: threading.Event) -> None:
        self.server: Server | None = None
        self.up, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(port, start), daemon=True)
        self._thread.start()

    def _serve(self, port: int, start: threading.Event) -> None:
        if not start.wait(60):
            return
        with running(ServerConfig(host="127.0.0.1", port=port, workers=1)) as self.server:
            self.up.set()
            self._done.wait(120)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    def grad_calls(self) -> dict[str, int]:
        """The server's Grad request counters by status code name, read over gRPC."""
        assert self.server is not None
        with grpc.insecure_channel(f"127.0.0.1:{self.server.port}") as channel:
            info = service_pb2_grpc.GradientStub(channel).ServerInfo(service_pb2.ServerInfoRequest(), timeout=10)
        return {c.code: c.count for c in info.request_counters if c.method == "Grad"}


def test_a_call_made_while_the_server_is_down_succeeds_once_it_is_back(refusals: Refusals, free_port: int) -> None:
    gs.set_context(target=f"127.0.0.1:{free_port}", retry_seconds=600)  # the default covers a restart; this, any machine
    late = LateServer(free_port, refusals.refused)
    try:
        np.testing.assert_allclose(tutorial_grad_x(), GRAD_X, rtol=1e-6)
        assert refusals.refused.is_set() and late.up.is_set()  # refused first, then served by the late server
        assert late.grad_calls() == {"OK": 1}
    finally:
        late.stop()


def test_a_retry_budget_shorter_than_the_outage_ends_in_unavailable(refusals: Refusals, free_port: int) -> None:
    gs.set_context(target=f"127.0.0.1:{free_port}", retry_seconds=0.5)
    with pytest.raises(RemoteError, match=r"^UNAVAILABLE: .*retry_seconds") as info:
        tutorial_grad_x()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and refusals.count >= 1
    restarted = threading.Event()
    late = LateServer(free_port, restarted)
    try:
        restarted.set()  # the outage ends only after the call gave up; the same backend then reaches the server
        assert late.up.wait(60)
        gs.set_context(retry_seconds=600)  # for as long as its channel takes to try connecting again (up to ~1 s)
        np.testing.assert_allclose(tutorial_grad_x(), GRAD_X, rtol=1e-6)
    finally:
        late.stop()


def test_a_zero_budget_tries_each_target_once(refusals: Refusals, free_port: int) -> None:
    gs.set_context(target=f"127.0.0.1:{free_port}, 127.0.0.1:{free_port}", retry_seconds=0)
    with pytest.raises(RemoteError) as info:
        tutorial_grad_x()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and refusals.count == 2


def test_the_call_timeout_ends_the_retrying(refusals: Refusals, free_port: int) -> None:
    gs.set_context(target=f"127.0.0.1:{free_port}", retry_seconds=600, timeout=0.5)
    with pytest.raises(RemoteError, match=r"^DEADLINE_EXCEEDED: ") as info:
        tutorial_grad_x()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and refusals.count >= 1


def test_the_call_timeout_bounds_a_call_the_server_has_taken(refusals: Refusals) -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        busy = stub.Grad.future(slow_request(stub, 2000), timeout=120)  # seconds of work on the only worker
        try:
            wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
            gs.set_context(target=f"127.0.0.1:{server.port}", timeout=0.5)
            with pytest.raises(RemoteError) as info:
                tutorial_grad_x()  # queued behind the busy worker until its own deadline
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and refusals.count == 0
        finally:
            busy.cancel()


@pytest.mark.parametrize(("option", "value"), [("retry_seconds", -1), ("timeout", "10"), ("retry_seconds", True),
                                               ("timeout", float("nan"))])
def test_seconds_options_must_be_numbers(clean_context: None, option: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"set_context: {option} must be None or a number of seconds >= 0"):
        gs.set_context(**{option: value})


def test_seconds_options_come_from_the_environment(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert context.retry_seconds() == context.RETRY_SECONDS and context.call_timeout() is None
    monkeypatch.setenv("GRADSERVE_RETRY_SECONDS", "2.5")
    monkeypatch.setenv("GRADSERVE_TIMEOUT", "30")
    assert context.retry_seconds() == 2.5 and context.call_timeout() == 30.0
    monkeypatch.setenv("GRADSERVE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="GRADSERVE_TIMEOUT must be a number of seconds >= 0, got 'soon'"):
        context.call_timeout()
    gs.set_context(retry_seconds=0, timeout=None)  # set values win over the variables; None is the default
    assert context.retry_seconds() == 0.0 and context.call_timeout() is None
    gs.set_context(retry_seconds=None)
    assert context.retry_seconds() == context.RETRY_SECONDS
