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
from gradserve.client import context, remote
from gradserve.client.backend import GradFlags
from gradserve.client.embedded import EmbeddedBackend
from gradserve.client.remote import RemoteBackend, RemoteError, address_count, split_target
from gradserve.engine import Graph, GraphBuilder, flatten
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


def test_the_sdk_declares_the_size_of_every_request_it_uploads(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_the_sdk_sends_the_context_token(clean_context: None) -> None:
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


def test_the_sdk_uses_the_context_tls_settings(pki: dict[str, str], clean_context: None) -> None:
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


def test_a_backend_still_reconnecting_to_a_port_does_not_turn_a_new_one_away_from_its_server(clean_context: None) -> None:
    """A backend left open on a stopped server's port is backing off from a refused connection; a new backend to a
    server started since on that port connects by itself (no channel state is shared), so its call is served."""
    gs.set_context(retry_seconds=0)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as gone:
        port = gone.port
        stale = RemoteBackend(f"127.0.0.1:{port}")
        nid = stale.register(weighted_sin())
    try:
        with pytest.raises(RemoteError) as info:
            grad_w(stale, nid)  # refused: its channel now waits before connecting again
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        with running(ServerConfig(host="127.0.0.1", port=port, workers=1)) as back:
            backend = RemoteBackend(f"127.0.0.1:{port}")
            try:
                grad_w(backend, backend.register(weighted_sin()))
            finally:
                backend.close()
            counts = served(back)
    finally:
        stale.close()
    assert counts.get(("RegisterNetwork", "OK"), 0) == 1 and counts.get(("Grad", "OK"), 0) == 1, counts


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


def layered() -> Graph:
    """sum(tanh(x @ w1 + b1) * w2) + sum(k) * 0: float32 with a first weight over 64 KiB (its gradient travels as a
    frame), a float64 weight and an int32 input."""
    b = GraphBuilder()
    rng = np.random.default_rng(0)
    h = b.op("Tanh", b.op("MatMul", b.input("x", "float32", (4, 6)), b.param("w1", rng.standard_normal((6, 3000)).astype(np.float32)))
             + b.param("b1", np.zeros(3000, np.float32)))
    y = b.op("ReduceSum", b.op("Cast", h, dtype="float64") * b.param("w2", rng.standard_normal(3000)))
    return b.build((y, b.op("ReduceSum", b.input("k", "int32", (5,)))))


class Reads(remote.codec.TreeReader):
    """A TreeReader that keeps every response it reads with its result."""

    seen: list[tuple[bytes, Any]] = []

    def __call__(self, raw: bytes) -> Any:
        result = super().__call__(raw)
        Reads.seen.append((raw, result))
        return result


class Sent(grpc.UnaryUnaryClientInterceptor):
    """Keeps the bytes of every Grad request sent."""

    def __init__(self) -> None:
        self.grads: list[bytes] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method.endswith("/Grad"):
            self.grads.append(request)
        return continuation(details, request)


def same(a: Any, b: Any) -> None:
    """Trees of equal structure whose leaves have equal dtypes, shapes and bytes."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes()


def test_calls_of_one_layout_go_by_templates_and_give_what_full_parsing_and_the_engine_give(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request on the wire holds the call's arrays; each result is bitwise what parsing its response gives, equals
    the embedded engine's, and stays intact after later calls; a changed layout (overrides, flags, Run) is learned."""
    monkeypatch.setattr(Reads, "seen", [])
    monkeypatch.setattr(remote.codec, "TreeReader", Reads)
    sent = Sent()
    monkeypatch.setattr(remote, "open_channel", lambda target, options: grpc.intercept_channel(
        context.open_channel(target, options), sent))
    graph = layered()
    rng = np.random.default_rng(1)
    embedded, backend = EmbeddedBackend(), RemoteBackend(f"127.0.0.1:{server.port}")
    requests = sent.grads
    try:
        nid, eid = backend.register(graph), embedded.register(graph)
        registered = {p.name: p.data for p in graph.params}
        kept = []
        for step in range(6):
            flags = GradFlags(get_all=step != 4, get_by_list=True, weights=("w1", "b1", "w2"))
            params = {n: (a + rng.standard_normal(a.shape).astype(a.dtype) * 0.1).astype(a.dtype) for n, a in registered.items()}
            if step == 3:
                params["w2"] = registered["w2"]  # equal to the registered value: not sent, another layout
            inputs = [rng.standard_normal((4, 6)).astype(np.float32), rng.integers(-9, 9, 5).astype(np.int32)]
            got = backend.grad(nid, flags, inputs, params)
            want = embedded.grad(eid, flags, inputs, params)
            for g, w in zip(flatten(got), flatten(want)):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
                assert g.flags.writeable is False
            kept.append((got, [a.copy() for a in flatten(got)]))
            wire = service_pb2.GradRequest.FromString(requests[-1])
            assert [codec.decode_tensor(t).tobytes() for t in wire.inputs] == [a.tobytes() for a in inputs]
            overrides = {n: codec.decode_tensor(t).tobytes() for n, t in wire.parameters.items()}
            assert overrides == {n: a.tobytes() for n, a in params.items() if a is not registered[n]}
        ran = backend.run(nid, inputs, params)
        same(ran, tuple(embedded.run(eid, inputs, params)))
        net = backend._networks[nid]
        assert len(net.templates) == 4  # steps 0-2 and 5, 3, 4 (other flags), the Run
        assert all(reader.layout is not None for reader in net.readers.values())
    finally:
        backend.close()
    for got, copies in kept:
        for a, c in zip(flatten(got), copies):
            assert a.tobytes() == c.tobytes()
    assert len(Reads.seen) == 7
    for raw, result in Reads.seen[:-1]:
        same(result, codec.decode_tree(service_pb2.GradResponse.FromString(raw).gradients))
    raw, result = Reads.seen[-1]
    same(result, codec.decode_tree(service_pb2.RunResponse.FromString(raw).outputs))
