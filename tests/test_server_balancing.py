"""Client-side balancing and retries over real loopback gRPC: one RemoteBackend aimed at two servers spreads
its calls over both (registering the network once on each), and keeps working when one of them stops. Each
server's ServerInfo counters show what it served; nothing asserts on timing."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from serverkit import wait_until

from gradserve.client.backend import GradFlags
from gradserve.client.remote import RemoteBackend
from gradserve.engine import Graph, GraphBuilder
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grad_operation_tutorial.py"
X = np.linspace(-1.0, 1.0, 5)
W = np.array([0.5, -1.0, 2.0, 0.25, 1.5])
CALLS = 12

@pytest.fixture()
def pair() -> Iterator[list[Server]]:
    """Two one-worker servers on free loopback ports, always stopped afterwards."""
    with ExitStack() as stack:
        yield [stack.enter_context(running(ServerConfig(host="127.0.0.1", port=0, workers=1))) for _ in range(2)]


def target(servers: list[Server]) -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in servers)


def served(server: Server, method: str) -> dict[str, int]:
    """``method``'s request counters on ``server`` by status code name, read over gRPC."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = service_pb2_grpc.GradientStub(channel).ServerInfo(service_pb2.ServerInfoRequest(), timeout=10)
    return {c.code: c.count for c in info.request_counters if c.method == method}


def weighted_sin() -> Graph:
    """sin(x * w) over float64[5] with parameter w: d/dw = x cos(x w)."""
    b = GraphBuilder()
    return b.build(b.op("Sin", b.input("x", "float64", (5,)) * b.param("w", W)))


def grad_w(backend: RemoteBackend, nid: str) -> np.ndarray:
    (dw,) = backend.grad(nid, GradFlags(get_by_list=True, weights=("w",)), [X], {"w": W})
    return dw


def test_calls_are_spread_over_both_servers(pair: list[Server]) -> None:
    backend = RemoteBackend(target(pair))
    try:
        nid = backend.register(weighted_sin())
        for _ in range(CALLS):
            np.testing.assert_allclose(grad_w(backend, nid), X * np.cos(X * W), rtol=1e-12)
    finally:
        backend.close()
    grads = [served(s, "Grad") for s in pair]
    ok = [g.get("OK", 0) for g in grads]
    assert all(n > 0 for n in ok) and sum(ok) == CALLS, grads
    assert sum(g.get("NOT_FOUND", 0) for g in grads) <= len(pair), ("registered once per server, then only inputs", grads)
    assert all(set(g) <= {"OK", "NOT_FOUND"} for g in grads), grads


def test_calls_keep_succeeding_when_one_server_stops(pair: list[Server]) -> None:
    backend = RemoteBackend(target(pair))
    try:
        nid = backend.register(weighted_sin())
        for _ in range(4):
            np.testing.assert_allclose(grad_w(backend, nid), X * np.cos(X * W), rtol=1e-12)
        survivor, stopped = pair
        stopped.stop(1)
        before = served(survivor, "Grad").get("OK", 0)
        for _ in range(CALLS):
            np.testing.assert_allclose(grad_w(backend, nid), X * np.cos(X * W), rtol=1e-12)
    finally:
        backend.close()
    assert served(survivor, "Grad").get("OK", 0) - before == CALLS


def test_the_tutorial_prints_the_same_numbers_through_two_servers(pair: list[Server]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRADSERVE_TARGET"}
    embedded = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, env=env).stdout
    remote = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True,
                            env=dict(env, GRADSERVE_TARGET=target(pair))).stdout
    assert remote == embedded
    assert all(sum(served(s, m).get("OK", 0) for m in ("Grad", "Run")) > 0 for s in pair)


def test_connections_older_than_max_connection_age_are_closed_and_calls_carry_on() -> None:
    """A server with max_connection_age sends GOAWAY, so that clients of a DNS name reconnect (and re-resolve):
    the channel drops to IDLE by itself, and the next call opens a new connection. gRPC delivers connectivity
    states to subscribers late and coalesced (a short-lived READY may never be seen), so the test watches only
    for the one state that lasts: IDLE, subscribed after a call proved a connection was open. An IDLE channel
    has no connection, so the second call's success proves it made a new one."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, max_connection_age_seconds=0.3)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.GradientStub(channel)
            assert stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=10).worker_count == 1
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append)
            try:
                wait_until(lambda: states[-1:] == [grpc.ChannelConnectivity.IDLE], "the server to close the connection")
            finally:
                channel.unsubscribe(states.append)
            assert stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=10).worker_count == 1
