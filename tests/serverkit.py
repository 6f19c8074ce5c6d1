"""Helpers shared by the server tests: slow work to keep a worker busy, polling, rejected calls, ServerInfo
counters, config parsing and padded varints. Importable as ``serverkit`` because pyproject.toml puts tests/ on pythonpath."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import config
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

TOKEN = "s3cret-token_0123456789"
"""The bearer token of the auth tests' servers."""

Metadata = tuple[tuple[str, str], ...]


def slow_net(n: int, k: int) -> service_pb2.RegisterNetworkRequest:
    """sum(sin^k(x @ y)) over an n x n outer product: seconds of work for a small request."""
    b = GraphBuilder()
    h = b.op("MatMul", b.input("x", "float64", (n, 1)), b.input("y", "float64", (1, n)))
    for _ in range(k):
        h = b.op("Sin", h)
    return service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(b.build(b.op("ReduceSum", h))))


def slow_request(stub: service_pb2_grpc.GradientStub, n: int, k: int = 12) -> service_pb2.GradRequest:
    """Registers ``slow_net(n, k)`` and returns a gradient request for it at x = y = 0.5."""
    nid = stub.RegisterNetwork(slow_net(n, k)).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(np.full((n, 1), 0.5)),
                                                           codec.encode_tensor(np.full((1, n), 0.5))])


def long_run(stub: service_pb2_grpc.GradientStub, n: int = 1000, k: int = 2000) -> service_pb2.RunRequest:
    """A Run of k Sins over n x n elements: thousands of short steps, many seconds of work in all, little memory."""
    b = GraphBuilder()
    h = b.op("BroadcastTo", b.input("x", "float64", ()), shape=[n, n])  # a tiny request
    for _ in range(k):
        h = b.op("Sin", h)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(b.build(b.op("ReduceSum", h)))),
                               timeout=60).network_id
    return service_pb2.RunRequest(network_id=nid, inputs=[codec.encode_tensor(np.array(0.5))])


def quick_check(stub: service_pb2_grpc.GradientStub) -> None:
    """A small gradient, checked against cos: the server still answers right."""
    b = GraphBuilder()
    g = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", (4,)))))
    x = np.linspace(0, 1, 4)
    resp = stub.Grad(service_pb2.GradRequest(graph=g, inputs=[codec.encode_tensor(x)]), timeout=60)
    np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(x), rtol=1e-12)


def wait_until(cond: Callable[[], bool], what: str = "", timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` if it still does not after a generous ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what or 'a condition'}")
        time.sleep(0.01)


def rejected(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError that ``call`` raises (failing the test if it raises none)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def request_counters(stub: service_pb2_grpc.GradientStub, metadata: Metadata = ()) -> dict[tuple[str, str], int]:
    """ServerInfo's request counters as {(method, code): count}."""
    info = stub.ServerInfo(service_pb2.ServerInfoRequest(), metadata=metadata, timeout=10)
    return {(c.method, c.code): c.count for c in info.request_counters}


def parse(argv: list[str], environ: dict[str, str]) -> config.ServerConfig:
    """The ServerConfig that the server's flags ``argv`` and variables ``environ`` make."""
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_arguments(parser.parse_args(argv), environ)


@contextlib.contextmanager
def one_worker_servers(n: int) -> Iterator[list[Server]]:
    """``n`` one-worker servers on free loopback ports, all shut down on exit."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")))
               for _ in range(n)]


def targets(servers: list[Server]) -> str:
    """The comma-separated loopback targets of ``servers``, for ``set_context(target=...)``."""
    return ",".join(f"127.0.0.1:{s.port}" for s in servers)


def overlong(value: int, width: int) -> bytes:
    """``value`` as a varint padded with zeros to ``width`` bytes."""
    return bytes((value >> 7 * i & 0x7F) | (0x80 if i < width - 1 else 0) for i in range(width))


def lane_stops_at_deadline_and_cancel(server: Server, stub: service_pb2_grpc.GradientStub, request: service_pb2.RunRequest) -> None:
    """With every worker stopped (a worker given the request would not stop in time and be replaced), the bounded lane
    runs ``request``, whose plan it holds, and ends it at a short deadline and then at a cancellation; nothing is served
    or replaced meanwhile."""
    codes = lambda: {(m, c): n for m, c, n in server.servicer.metrics.snapshot()}  # noqa: E731
    expired, cancelled = codes().get(("Run", "DEADLINE_EXCEEDED"), 0), codes().get(("Run", "CANCELLED"), 0)
    workers = server.pool.pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        failed = rejected(lambda: stub.Run(request, timeout=0.2))
        assert failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: codes().get(("Run", "DEADLINE_EXCEEDED"), 0) == expired + 1, "the lane to stop the run")
        call = stub.Run.future(request, timeout=120)
        wait_until(lambda: server.servicer.lane._bounded.locked(), "the lane to start the run")
        call.cancel()
        wait_until(lambda: codes().get(("Run", "CANCELLED"), 0) == cancelled + 1, "the lane to stop the cancelled run")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert server.servicer.lane.served == 0 and server.pool.replaced == 0 and server.pool.pids() == workers


def graph_in_two(full: graph_pb2.Graph) -> tuple[graph_pb2.Graph, graph_pb2.Graph]:
    """``full`` as two Graph messages that protobuf merges back into it: its inputs and parameters, then the rest (a graph
    field given twice on the wire)."""
    first, second = graph_pb2.Graph(), graph_pb2.Graph()
    first.inputs.extend(full.inputs)
    first.parameters.extend(full.parameters)
    second.CopyFrom(full)
    second.ClearField("inputs")
    second.ClearField("parameters")
    return first, second


def jobs_seen(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The jobs ``server`` submits to its workers from now on (for the test's duration), in order."""
    jobs: list[Any] = []
    submit = server.pool.submit

    def seen(job: Any, *args: Any) -> Any:
        jobs.append(job)
        return submit(job, *args)

    monkeypatch.setattr(server.pool, "submit", seen)
    return jobs
