"""Caller mistakes that never reach the engine, over real loopback gRPC: bytes protobuf cannot parse, a
response over the message limit, deadlines that pass in the queue or exceed the server's maximum, and a
server bug. Each gets its documented code (never INTERNAL for the caller's mistake) and a message naming
the method or limit, is counted in ServerInfo, and the server keeps serving."""
from __future__ import annotations

import re
from typing import Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverkit import rejected, request_counters, slow_request, wait_until

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

LIMITS = Limits(max_message_bytes=1 << 20, max_queue_depth=2, max_deadline_ms=60_000)
GRAD = "/gradserve.v1.Gradient/Grad"
CORRUPT = "not valid protobuf wire format"


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=1, limits=LIMITS)


def raw_unary(channel: grpc.Channel, method: str) -> Callable[..., bytes]:
    """A call of ``method`` that sends and returns bytes as they are (identity serializers)."""
    return channel.unary_unary(method)


def field(number: int, body: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    size, n = b"", len(body)
    while True:
        low, n = n & 0x7F, n >> 7
        size += bytes([low | 0x80 if n else low])
        if not n:
            return bytes([number << 3 | 2]) + size + body


def deep_grad_request(levels: int) -> bytes:
    """A GradRequest whose graph's output tree nests ``levels`` tuples (two messages per level)."""
    tree = graph_pb2.ValueTree(value="x").SerializeToString()
    for _ in range(levels):
        tree = field(2, field(1, tree))  # ValueTree.tuple = ValueTuple{items: [tree]}
    return field(2, field(4, tree))  # GradRequest.graph = Graph{outputs: tree}


def sin_request(shape: tuple[int, ...] = (3,)) -> service_pb2.GradRequest:
    b = GraphBuilder()
    graph = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", shape))))
    return service_pb2.GradRequest(graph=graph, inputs=[codec.encode_tensor(np.full(shape, 0.5, np.float32))])


def still_serving(channel: grpc.Channel) -> None:
    """Health answers SERVING and a small gradient is right."""
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    resp = service_pb2_grpc.GradientStub(channel).Grad(sin_request(), timeout=30)
    np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(np.full(3, 0.5, np.float32)))


@pytest.mark.parametrize("payload,problem", [
    (b"\xff\xff\xff\xff", CORRUPT),
    (field(2, b"\x0a\x09too short"), CORRUPT),
    (deep_grad_request(60), "more than 100 levels deep"),
    (field(2, field(6, b"\xc3\x28")), "not valid UTF-8"),
    (field(2, field(3, bytes(100 << 10))) + b"\xff\xff", CORRUPT),  # parsed whole (blobs.parse), as the lane's requests are
], ids=["garbage", "truncated", "too deep", "bad utf8", "large and truncated"])
def test_unparsable_request_is_invalid_argument_naming_method_and_problem(
    channel: grpc.Channel, payload: bytes, problem: str,
) -> None:
    stub = service_pb2_grpc.GradientStub(channel)
    before = request_counters(stub).get(("Grad", "INVALID_ARGUMENT"), 0)
    err = rejected(lambda: raw_unary(channel, GRAD)(payload, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{GRAD}: the request is not a valid gradserve.v1.GradRequest message: ")
    assert problem in err.details(), err.details()
    assert request_counters(stub)[("Grad", "INVALID_ARGUMENT")] == before + 1
    still_serving(channel)


def test_nesting_within_protobufs_limit_reaches_the_servers_own_nesting_limit(channel: grpc.Channel) -> None:
    err = rejected(lambda: raw_unary(channel, GRAD)(deep_grad_request(40), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deeper than the limit of 32" in err.details()


@pytest.mark.parametrize("method", ["RegisterNetwork", "Run", "ListOps", "ServerInfo"])
def test_every_method_rejects_garbage_with_invalid_argument(channel: grpc.Channel, method: str) -> None:
    err = rejected(lambda: raw_unary(channel, f"/gradserve.v1.Gradient/{method}")(b"\xff\xff", timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"/gradserve.v1.Gradient/{method}: the request is not a valid gradserve.v1.{method}Request")


def test_health_check_rejects_garbage_with_invalid_argument(channel: grpc.Channel) -> None:
    err = rejected(lambda: raw_unary(channel, "/grpc.health.v1.Health/Check")(b"\xff", timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in err.details()
    still_serving(channel)


def test_unparsable_stream_message_ends_the_stream_after_answering_the_ones_before(channel: grpc.Channel) -> None:
    good = [sin_request() for _ in range(2)]
    for i, r in enumerate(good):
        r.request_id = str(i)
    stream = channel.stream_stream("/gradserve.v1.Gradient/GradStream")
    answers = []
    err = rejected(lambda: answers.extend(stream(iter([r.SerializeToString() for r in good] + [b"\xff\xff"]), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 2 of the request stream is not a valid gradserve.v1.GradRequest" in err.details()
    got = {r.request_id: r for r in map(service_pb2.GradResponse.FromString, answers)}
    assert set(got) == {"0", "1"}
    for r in got.values():
        np.testing.assert_allclose(codec.decode_tree(r.gradients), np.cos(np.full(3, 0.5, np.float32)))
    still_serving(channel)


def test_response_over_the_message_limit_is_resource_exhausted_naming_the_limit(channel: grpc.Channel) -> None:
    n = 400  # a [400, 400] float64 result is 1.28 MB, from 6.4 kB of inputs
    b = GraphBuilder()
    graph = codec.encode_graph(b.build(b.op("MatMul", b.input("a", "float64", (n, 1)), b.input("b", "float64", (1, n)))))
    request = service_pb2.RunRequest(graph=graph, inputs=[codec.encode_tensor(np.ones((n, 1))), codec.encode_tensor(np.ones((1, n)))])
    stub = service_pb2_grpc.GradientStub(channel)
    before = request_counters(stub).get(("Run", "RESOURCE_EXHAUSTED"), 0)
    err = rejected(lambda: stub.Run(request, timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    match = re.fullmatch(r"the RunResponse would be (\d+) bytes, over the max_message_bytes limit of (\d+); .*", err.details())
    assert match and n * n * 8 < int(match[1]) < n * n * 8 + 200 and int(match[2]) == 1 << 20, err.details()
    assert request_counters(stub)[("Run", "RESOURCE_EXHAUSTED")] == before + 1
    still_serving(channel)


def test_deadline_passing_in_the_queue_is_deadline_exceeded_and_takes_no_worker(server: Server, channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GradientStub(channel)
    request = slow_request(stub, n=1500)
    busy = stub.Grad.future(request, timeout=60)
    wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
    workers, replaced = server.pool.pids(), server.pool.replaced
    before = request_counters(stub).get(("Grad", "DEADLINE_EXCEEDED"), 0)
    err = rejected(lambda: stub.Grad(request, timeout=0.2))  # queued behind the first (a tiny one would run in the server process)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert busy.result().gradients.HasField("tensor"), "the computation holding the worker was not disturbed"
    assert server.pool.pids() == workers and server.pool.replaced == replaced
    # The server answers after the client gave up.
    wait_until(lambda: request_counters(stub).get(("Grad", "DEADLINE_EXCEEDED"), 0) != before, "the expiry to be counted")
    still_serving(channel)


def test_a_deadline_beyond_the_servers_maximum_is_cut_to_it() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_deadline_ms=1000, max_request_peak_bytes=2 << 30))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = slow_request(stub, n=3000)  # several seconds of work, about 900 MiB at its peak
        err = rejected(lambda: stub.Grad(request, timeout=60))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "the deadline passed while computing; the work was stopped" in err.details()
        assert server.pool.replaced == 0, "the worker stops between operations and stays"
        still_serving(channel)


def test_a_server_bug_is_internal_and_counted(server: Server, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> tuple[bytes, list[int]]:
        raise KeyError("op catalog")

    monkeypatch.setattr(server.servicer, "_op_catalog", broken)
    stub = service_pb2_grpc.GradientStub(channel)
    err = rejected(lambda: stub.ListOps(service_pb2.ListOpsRequest(), timeout=10))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "ListOps: server bug: KeyError: 'op catalog'"
    monkeypatch.undo()
    assert request_counters(stub)[("ListOps", "INTERNAL")] == 1
    still_serving(channel)


def test_a_server_bug_in_a_stream_is_answered_in_the_stream_internal_and_counted(
        server: Server, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    """GradStream keeps the same bookkeeping as unary calls: the bug's message, its code counted."""
    def broken(*_: object, **__: object) -> bytes:
        raise KeyError("stream")

    stub = service_pb2_grpc.GradientStub(channel)
    before = request_counters(stub).get(("GradStream", "INTERNAL"), 0)
    monkeypatch.setattr(server.servicer, "_compute", broken)
    (resp,) = stub.GradStream(iter([service_pb2.GradRequest(network_id="n", request_id="r7")]), timeout=10)
    monkeypatch.undo()
    assert resp.request_id == "r7" and resp.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert resp.error.message == "GradStream: server bug: KeyError: 'stream'"
    assert request_counters(stub)[("GradStream", "INTERNAL")] == before + 1
    still_serving(channel)
