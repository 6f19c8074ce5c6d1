"""GradStream memory, bounded in bytes: messages are received in turns of their own lane and held within
max_queued_bytes (a message that does not fit is answered RESOURCE_EXHAUSTED and the stream goes on); unary
calls waiting for their turn to be received are bounded in number (max_receive_waiting)."""
from __future__ import annotations

import re
import threading
from typing import Iterator

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverkit import rejected, request_counters, wait_until

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

MiB = 1 << 20
WAIT = 60.0
GRAD = "/gradserve.v1.Gradient/Grad"


def sin_network(stub: service_pb2_grpc.GradientStub, n: int) -> str:
    b = GraphBuilder()
    graph = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", (n,)))))
    return stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph), timeout=WAIT).network_id


def small_grad(stub: service_pb2_grpc.GradientStub, rid: str = "") -> tuple[service_pb2.GradRequest, np.ndarray]:
    """A Grad of sin over three float32 values, and its answer cos(x)."""
    x = np.float32([0, 1, 2])
    return service_pb2.GradRequest(network_id=sin_network(stub, 3), inputs=[codec.encode_tensor(x)], request_id=rid), np.cos(x)


def serving(channel: grpc.Channel) -> bool:
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="gradserve.v1.Gradient"), timeout=WAIT)
    return check.status == health_pb2.HealthCheckResponse.SERVING


def test_a_stream_message_over_the_queued_budget_is_refused_in_its_response_and_the_stream_goes_on() -> None:
    n = 1 << 18  # 1 MiB of float32: with the rest of its message, over the 1 MiB budget on its own
    limits = Limits(max_queued_bytes=MiB)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        big = service_pb2.GradRequest(network_id=sin_network(stub, n), request_id="big",
                                      inputs=[codec.encode_tensor(np.zeros(n, np.float32))])
        small, cos = small_grad(stub, "small")
        again = service_pb2.GradRequest()
        again.CopyFrom(big)
        again.request_id = "again"
        answers = {r.request_id: r for r in stub.GradStream(iter([big, small, again]), timeout=WAIT)}
        assert set(answers) == {"big", "small", "again"}
        assert answers["again"].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        refused = answers["big"]
        assert refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert refused.error.message == (f"this request is {big.ByteSize()} bytes and the requests waiting or being computed "
                                         f"hold 0, together over the max_queued_bytes limit of {MiB}; retry later, or "
                                         "send smaller requests")
        np.testing.assert_allclose(codec.decode_tree(answers["small"].gradients), cos, rtol=1e-6)
        counts = request_counters(stub)
        assert counts[("GradStream", "RESOURCE_EXHAUSTED")] == 2 and counts[("GradStream", "OK")] == 1
        wait_until(lambda: server.intake.held == 0, "every message's bytes to be released")
        assert server.pool.replaced == 0 and serving(ch)


def test_an_idle_stream_keeps_the_stream_turn_and_unary_calls_never_wait_behind_it() -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        request, cos = small_grad(stub, "r")
        go = threading.Event()

        def idle() -> Iterator[service_pb2.GradRequest]:
            go.wait(WAIT)
            return
            yield

        intake = server.intake
        first = stub.GradStream(idle(), timeout=WAIT)
        wait_until(lambda: intake.streams.receiving == 1, "the idle stream to ask for its first message")
        second = stub.GradStream(iter([request]), timeout=WAIT)
        wait_until(lambda: intake.streams.waiting == 1, "the second stream to wait for its turn")
        # A unary Grad that declares nothing (a raw stub sends no metadata) is received in the large lane meanwhile.
        raw = ch.unary_unary(GRAD)(request.SerializeToString(), timeout=WAIT)
        np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(raw).gradients), cos, rtol=1e-6)
        assert intake.streams.waiting == 1 and serving(ch)
        go.set()  # the idle stream ends; the second one gets its turn
        assert list(first) == []
        (answer,) = list(second)
        np.testing.assert_allclose(codec.decode_tree(answer.gradients), cos, rtol=1e-6)
        info = stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT).limits
        assert info.max_stream_receive_bytes == Limits().max_stream_receive_bytes == Limits().max_message_bytes
        assert info.max_receive_waiting == Limits().max_receive_waiting == 16


def hold_the_large_lane(server: Server, held: bool) -> None:
    """Take (or give back) every slot of the large lane, as uploads in progress would."""
    intake = server.intake
    with intake._room:
        intake.large.receiving = intake.large.slots if held else 0
        intake._room.notify_all()


def test_unary_calls_beyond_the_waiting_bound_are_refused_at_once_and_the_waiting_ones_are_served() -> None:
    limits = Limits(max_receive_waiting=2)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        request, cos = small_grad(stub)
        raw = ch.unary_unary(GRAD)
        hold_the_large_lane(server, True)
        try:
            waiting = [raw.future(request.SerializeToString(), timeout=WAIT) for _ in range(2)]
            wait_until(lambda: server.intake.large.waiting == 2, "two calls to wait for their turn")
            err = rejected(lambda: raw(request.SerializeToString(), timeout=WAIT))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.details() == ("2 calls are already waiting for their turn to be received, the max_receive_waiting "
                                     "limit of 2; retry later")
            assert serving(ch)  # the small lane is not bounded by it
            declared = stub.Grad(request, timeout=WAIT, metadata=(("gradserve-request-bytes", str(request.ByteSize())),))
            np.testing.assert_allclose(codec.decode_tree(declared.gradients), cos, rtol=1e-6)
            assert not any(f.done() for f in waiting)
        finally:
            hold_the_large_lane(server, False)
        for f in waiting:
            np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(f.result()).gradients), cos, rtol=1e-6)
        assert request_counters(stub)[("Grad", "RESOURCE_EXHAUSTED")] == 1
        assert server.intake.large.waiting == 0 and server.intake.large.receiving == 0


def test_a_stream_answer_over_the_queued_budget_is_refused_and_a_cancelled_stream_releases_its_bytes() -> None:
    n = 1 << 18  # a forward output of 2 MiB of float64 from a scalar input
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_queued_bytes=MiB))) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        b = GraphBuilder()
        graph = codec.encode_graph(b.build(b.op("BroadcastTo", b.input("x", "float64", ()), shape=[n])))
        nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph), timeout=WAIT).network_id
        x = codec.encode_tensor(np.array(0.5))
        wide = service_pb2.GradRequest(network_id=nid, inputs=[x], return_forward=True, request_id="wide")
        narrow = service_pb2.GradRequest(network_id=nid, inputs=[x], request_id="narrow")
        answers = {r.request_id: r for r in stub.GradStream(iter([wide, narrow]), timeout=WAIT)}
        refused = answers["wide"].error
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        found = re.fullmatch(r"the GradResponse is (\d+) bytes and the requests waiting or being computed hold (\d+), "
                             rf"together over the max_queued_bytes limit of {MiB}; read the stream's answers sooner, "
                             "or ask for smaller results", refused.message)
        assert found is not None, refused.message
        size, held = map(int, found.groups())
        assert 8 * n < size < 8 * n + 1024  # the forward output's data, and the rest of the response
        assert held <= narrow.ByteSize()  # the other message of the stream, if it was in by then
        assert codec.decode_tree(answers["narrow"].gradients) == float(n)  # d/dx sum(broadcast x) with ones as sens
        # A stream cancelled after its first answer: what it read or computed is released all the same.
        small, cos = small_grad(stub)
        stream = stub.GradStream(iter([small] * 8), timeout=WAIT)
        np.testing.assert_allclose(codec.decode_tree(next(stream).gradients), cos, rtol=1e-6)
        stream.cancel()
        wait_until(lambda: server.intake.held == 0 and server.servicer._streams == 0, "the cancelled stream's bytes released")
        assert serving(ch)
