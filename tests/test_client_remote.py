"""The remote backend over real loopback gRPC: the SDK through servers that need a bearer token and TLS, networks
registered once per server behind one round_robin channel, changed parameter values sent with each call,
and what a call raises when no server is reachable. Each server's ServerInfo counters show what it served."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from clientkit import tutorial_grad_x
from serverkit import TOKEN, wait_until

import gradserve as gs
from gradserve.client import backends, context, remote
from gradserve.client.backend import GradFlags
from gradserve.client.remote import RemoteBackend, RemoteError, address_count, split_target
from gradserve.engine import Graph, GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.server.tutorial import GRAD_X
from gradserve.v1 import service_pb2, service_pb2_grpc

X = np.linspace(-1.0, 1.0, 5)
W = np.array([0.5, -1.0, 2.0, 0.25, 1.5])
CALLS = 12


@contextmanager
def servers(n: int) -> Iterator[list[Server]]:
    """``n`` one-worker servers on free loopback ports, always stopped afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(running(ServerConfig(host="127.0.0.1", port=0, workers=1))) for _ in range(n)]


@pytest.fixture()
def pair() -> Iterator[list[Server]]:
    """Two servers for one test."""
    with servers(2) as two:
        yield two


@pytest.fixture()
def sdk(clean_context: None) -> Iterator[None]:
    """A clean client context whose remote backends are closed afterwards."""
    yield
    for backend in backends._backends.values():
        backend.close()


def served(server: Server, token: str = "") -> dict[tuple[str, str], int]:
    """``server``'s request counters by (method, status code name), read over gRPC."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = service_pb2_grpc.GradientStub(channel).ServerInfo(service_pb2.ServerInfoRequest(), metadata=metadata, timeout=10)
    return {(c.method, c.code): c.count for c in info.request_counters}


def weighted_sin() -> Graph:
    """sin(x * w) over float64[5] with parameter w: d/dw = x cos(x w)."""
    b = GraphBuilder()
    return b.build(b.op("Sin", b.input("x", "float64", (5,)) * b.param("w", W)))


def grad_w(backend: RemoteBackend, nid: str, w: np.ndarray = W) -> None:
    """One d/dw call, checked against x cos(x w)."""
    (dw,) = backend.grad(nid, GradFlags(get_by_list=True, weights=("w",)), [X], {"w": w})
    np.testing.assert_allclose(dw, X * np.cos(X * w), rtol=1e-12)


class Declared(grpc.UnaryUnaryClientInterceptor):
    """Records, per call, the method, the size the call's metadata declares and the request's real size."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        declared = dict(details.metadata or ()).get(codec.REQUEST_BYTES_HEADER)
        size = len(request) if isinstance(request, bytes) else request.ByteSize()  # sent serialized once, as bytes
        self.calls.append((details.method.rsplit("/", 1)[-1], declared, size))
        return continuation(details, request)


def test_the_sdk_declares_the_size_of_every_request_it_uploads(sdk: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server receives a call declaring a small request without waiting behind large uploads (server/intake.py)."""
    seen = Declared()
    monkeypatch.setattr(remote, "open_channel", lambda target, options: grpc.intercept_channel(
        context.open_channel(target, options), seen))
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        gs.set_context(target=f"127.0.0.1:{server.port}")
        np.testing.assert_allclose(tutorial_grad_x(), GRAD_X, rtol=1e-6)
    uploads = [c for c in seen.calls if c[0] in ("Grad", "Run", "RegisterNetwork")]
    assert {c[0] for c in uploads} >= {"RegisterNetwork"} and len(uploads) >= 2, seen.calls
    assert all(declared == str(size) for _, declared, size in uploads), uploads


def test_the_sdk_sends_the_context_token(sdk: None) -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, auth_token=TOKEN)) as server:
        gs.set_context(target=f"127.0.0.1:{server.port}", token=TOKEN)
        np.testing.assert_allclose(tutorial_grad_x(), GRAD_X, rtol=1e-6)
        assert sum(served(server, TOKEN).get((m, "OK"), 0) for m in ("Grad", "Run")) == 1  # the server computed it
        gs.set_context(token="wrong")
        with pytest.raises(RemoteError, match=r"^UNAUTHENTICATED: .*the bearer token is not valid") as info:
            tutorial_grad_x()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        gs.set_context(token=None)
        with pytest.raises(RemoteError, match=r"^UNAUTHENTICATED: .*requires a bearer token"):
            tutorial_grad_x()


def test_the_sdk_uses_the_context_tls_settings(pki: dict[str, str], sdk: None) -> None:
    cfg = ServerConfig(host="127.0.0.1", port=0, workers=1, tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                       tls_client_ca=pki["ca.pem"], auth_token=TOKEN)
    with running(cfg) as server:
        gs.set_context(target=f"127.0.0.1:{server.port}", token=TOKEN, tls_ca=pki["ca.pem"],
                       tls_cert=pki["client.pem"], tls_key=pki["client.key"])
        np.testing.assert_allclose(tutorial_grad_x(), GRAD_X, rtol=1e-6)
        gs.set_context(tls_cert=None, tls_key=None, retry_seconds=0)  # the server wants a client certificate
        with pytest.raises(RemoteError, match=r"^UNAVAILABLE: "):
            tutorial_grad_x()


@pytest.mark.parametrize("n", [2, 3])
def test_one_round_robin_channel_registers_on_every_server_it_reaches(n: int) -> None:
    with servers(n) as group:
        backend = RemoteBackend("ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in group))
        calls = 0

        def every_server_reached() -> bool:  # round_robin uses each address once it has connected to it
            nonlocal calls
            grad_w(backend, nid)
            calls += 1
            return all(served(s).get(("Grad", "OK"), 0) > 0 for s in group)

        try:
            nid = backend.register(weighted_sin())
            wait_until(every_server_reached, "round_robin to reach every server")
            for _ in range(CALLS * n):
                grad_w(backend, nid)
        finally:
            backend.close()
        counts = [served(s) for s in group]
    assert sum(c.get(("Grad", "OK"), 0) for c in counts) == calls + CALLS * n, counts
    assert sum(c.get(("Grad", "NOT_FOUND"), 0) for c in counts) <= n, ("each server misses the network at most once", counts)


def test_changed_parameter_values_travel_with_the_call_not_a_registration(pair: list[Server]) -> None:
    backend = RemoteBackend(",".join(f"127.0.0.1:{s.port}" for s in pair))
    try:
        nid = backend.register(weighted_sin())
        for w in (W, W * 2, W * 2, W * 3):
            for _ in range(4):
                grad_w(backend, nid, w)
    finally:
        backend.close()
    for counts in map(served, pair):
        assert counts.get(("RegisterNetwork", "OK"), 0) == 1, counts  # W; W * 2 and W * 3 are overrides
        assert counts.get(("Grad", "OK"), 0) == 8 and ("Grad", "NOT_FOUND") not in counts, counts


def test_a_restarted_server_gets_the_network_again(pair: list[Server]) -> None:
    backend = RemoteBackend(",".join(f"127.0.0.1:{s.port}" for s in pair))
    try:
        nid = backend.register(weighted_sin())
        for _ in range(4):
            grad_w(backend, nid)
        pair[0].stop(1)
        with running(ServerConfig(host="127.0.0.1", port=pair[0].port, workers=1)) as restarted:
            def three_served() -> bool:  # calls go to the other server until the channel has reconnected
                grad_w(backend, nid)
                return served(restarted).get(("Grad", "OK"), 0) >= 3

            wait_until(three_served, "calls to reach the restarted server")
            counts = served(restarted)
    finally:
        backend.close()
    assert counts.get(("Grad", "NOT_FOUND"), 0) == 1 and ("RegisterNetwork", "OK") not in counts, counts


def test_no_reachable_server_is_an_unavailable_error(pair: list[Server], clean_context: None) -> None:
    gs.set_context(retry_seconds=0.5)
    backend = RemoteBackend(",".join(f"127.0.0.1:{s.port}" for s in pair))
    try:
        nid = backend.register(weighted_sin())
        grad_w(backend, nid)
        for s in pair:
            s.stop(1)
        with pytest.raises(RemoteError) as info:
            grad_w(backend, nid)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        backend.close()


def test_targets_split_into_channels_and_count_their_addresses() -> None:
    assert split_target("127.0.0.1:1, localhost:2") == ["127.0.0.1:1", "localhost:2"]
    assert split_target("ipv4:127.0.0.1:1,127.0.0.1:2") == ["ipv4:127.0.0.1:1,127.0.0.1:2"]
    assert split_target("dns:///localhost:50051") == ["dns:///localhost:50051"]
    assert address_count("ipv4:127.0.0.1:1,127.0.0.1:2") == 2
    assert address_count("127.0.0.1:1") == address_count("dns:///127.0.0.1:1") == address_count("unix:/tmp/s") == 1
    assert address_count("[::1]:1") == 1 and address_count("no-such-host.invalid:1") == 1
