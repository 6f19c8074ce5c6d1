"""Receive-side bounds: unary requests are received in their lane's turn and held within max_queued_bytes."""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serverkit import long_run, rejected, wait_until

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import intake as intake_module
from gradserve.server.app import running
from gradserve.server.config import Limits, ServerConfig
from gradserve.server.errors import Failure
from gradserve.server.intake import DECLARED, SMALL_BYTES, Intake, Received
from gradserve.server.trim import TRIM_AFTER_BYTES, Trimmer
from gradserve.v1 import service_pb2, service_pb2_grpc

MiB = 1 << 20
GRAD = "/gradserve.v1.Gradient/Grad"
HEALTH = "/grpc.health.v1.Health/Check"
WAIT = 60.0


class Context:
    """The little of a grpc.ServicerContext that the intake reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), peer: str = "ipv4:127.0.0.1:1000") -> None:
        self.metadata = metadata
        self.active = True
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def is_active(self) -> bool:
        return self.active


class Upload:
    """A request stream whose one message arrives when ``arrive`` is set (a large upload in progress)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.asked = threading.Event()
        self.arrive = threading.Event()

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        self.asked.set()
        assert self.arrive.wait(WAIT)
        yield "message", self.size


def receiving(intake: Intake, method: str, upload: Upload, context: Context | None = None) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(intake.receive, method, iter(upload), context or Context())
    pool.shutdown(wait=False)
    return future


# ---- the intake on its own ----


class Stalled:
    """A unary call's request stream whose message never comes: it ends (as gRPC's does) once the call is cancelled."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        assert self.cancelled.wait(WAIT)
        yield from ()


class CancellableContext(Context):
    def __init__(self, stalled: Stalled) -> None:
        super().__init__(peer="ipv4:127.0.0.1:2000")
        self.stalled = stalled

    def cancel(self) -> None:
        self.active = False
        self.stalled.cancelled.set()


def test_a_call_cancelled_because_its_message_did_not_arrive_in_time_is_reported_as_deadline_exceeded() -> None:
    """The call waiting behind a call whose message is overdue cancels it; the overdue call's handler then sees no
    message, which is DEADLINE_EXCEEDED naming the deadline (logged and counted as such), not a call that ended on its
    own or carried no message (INVALID_ARGUMENT)."""
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=10 * MiB, deadline=lambda context: time.monotonic() - 1)
    stalled = Stalled()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    first = pool.submit(intake.receive, GRAD, iter(stalled), CancellableContext(stalled))
    pool.shutdown(wait=False)
    wait_until(lambda: intake.large.receiving == 1, "the first call to take the slot")
    upload = Upload(1)
    upload.arrive.set()
    second = receiving(intake, GRAD, upload)
    with pytest.raises(Failure) as info:
        first.result(WAIT)
    assert info.value.code == "DEADLINE_EXCEEDED" and "did not arrive by the call's deadline" in info.value.message
    assert second.result(WAIT) == ("message", 1)
    intake.release(1)
    assert intake.held == 0 and intake.large.receiving == 0 and not intake.large.inbound and not intake._overdue_calls

def test_large_uploads_take_turns_while_small_calls_pass_them() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=64 * MiB)  # one large upload at a time
    first, second = Upload(5 * MiB), Upload(6 * MiB)
    a = receiving(intake, GRAD, first)
    assert first.asked.wait(WAIT)
    b = receiving(intake, GRAD, second)
    wait_until(lambda: intake.large.waiting == 1, "the second upload to wait for its turn")
    assert not second.asked.is_set()  # gRPC was not asked for its message: it is not received
    # A health check, and a Grad declaring a small request, are received while the large upload goes on.
    for method, context in ((HEALTH, Context()), (GRAD, Context(((DECLARED, "300"),)))):
        tiny = Upload(300)
        tiny.arrive.set()
        assert receiving(intake, method, tiny, context).result(WAIT) == ("message", 300)
        intake.release(300)
    first.arrive.set()
    assert a.result(WAIT) == ("message", 5 * MiB)
    second.arrive.set()
    assert b.result(WAIT) == ("message", 6 * MiB)
    assert intake.held == 11 * MiB
    intake.release(5 * MiB)
    intake.release(6 * MiB)
    assert intake.held == 0 and intake.large.receiving == 0 and intake.small.receiving == 0


def test_turns_are_taken_in_arrival_order_and_a_call_that_ends_leaves_the_line() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0)
    uploads = [Upload(MiB) for _ in range(4)]
    contexts = [Context() for _ in uploads]
    futures = []
    for i, (upload, context) in enumerate(zip(uploads, contexts)):
        futures.append(receiving(intake, GRAD, upload, context))
        wait_until(lambda i=i: uploads[0].asked.is_set() and intake.large.waiting == i, f"upload {i} to line up")
    contexts[1].active = False  # its caller went away while it waited
    assert futures[1].result(WAIT) is None
    for i in (0, 2, 3):
        assert uploads[i].asked.wait(WAIT) and not any(u.asked.is_set() for u in uploads[i + 1:])
        uploads[i].arrive.set()
        assert futures[i].result(WAIT) == ("message", MiB)
    assert not uploads[1].asked.is_set() and intake.held == 3 * MiB


def test_received_bytes_over_the_held_budget_are_refused_naming_it_and_small_ones_never_are() -> None:
    intake = Intake(receiving_limit=0, largest=8 * MiB, held_limit=10 * MiB)
    intake.hold(6 * MiB)
    with pytest.raises(Failure) as info:
        intake.hold(5 * MiB)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert info.value.message.startswith(f"this request is {5 * MiB} bytes and the requests waiting or being computed "
                                         f"hold {6 * MiB}, together over the max_queued_bytes limit of {10 * MiB}")
    intake.hold(4 * MiB)
    intake.hold(SMALL_BYTES)  # full, but a small message is still taken
    assert intake.held == 10 * MiB + SMALL_BYTES


def test_a_message_larger_than_its_declared_size_is_refused() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0)
    upload = Upload(2 * MiB)
    upload.arrive.set()
    with pytest.raises(Failure) as info:
        receiving(intake, GRAD, upload, Context(((DECLARED, "100"),))).result(WAIT)
    assert info.value.code == "INVALID_ARGUMENT"
    assert f"the request is {2 * MiB} bytes, more than the 100 its {DECLARED} metadata declares" in info.value.message
    assert intake.held == 0 and intake.small.receiving == 0


def turn_order(intake: Intake, late_peer: str) -> list[object]:
    """One connection queues five uploads (the first receiving at once), then ``late_peer`` one call not
    declaring its size: the order in which their messages are asked for, one turn at a time."""
    uploads = [Upload(MiB) for _ in range(5)]
    futures = []
    for i, upload in enumerate(uploads):
        futures.append(receiving(intake, GRAD, upload, Context(peer="ipv4:127.0.0.1:1001")))
        wait_until(lambda i=i: uploads[0].asked.is_set() and intake.large.waiting == i, f"upload {i} to line up")
    late = Upload(300)
    late_future = receiving(intake, GRAD, late, Context(peer=late_peer))
    wait_until(lambda: intake.large.waiting == 5, "the late call to line up")
    order: list[object] = []
    pending = [*uploads, late]

    def asked() -> list[Upload]:
        return [u for u in pending if u.asked.is_set() and not u.arrive.is_set()]

    for _ in range(6):  # each turn: see whose message was asked for (one at a time), let it arrive
        wait_until(lambda: len(asked()) == 1, "the next turn")
        (now,) = asked()
        order.append("late" if now is late else uploads.index(now))
        now.arrive.set()
    assert late_future.result(WAIT) == ("message", 300) and [f.result(WAIT)[1] for f in futures] == [MiB] * 5
    assert intake.large.waiting == 0 and not intake.large.line and not intake.large.ahead
    return order


def test_a_caller_waits_for_one_turn_of_each_other_connection_not_behind_all_its_uploads() -> None:
    # The late call lines up behind one waiting upload of the other connection (which lined up first), not
    # behind all four: first come first served would give [0, 1, 2, 3, 4, "late"].
    assert turn_order(Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0), "ipv4:127.0.0.1:1002") == \
        [0, 1, "late", 2, 3, 4]


def test_a_caller_whose_last_message_was_small_goes_ahead_of_waiting_uploads_until_it_sends_a_large_one() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0)
    quiet = "ipv4:127.0.0.1:1003"
    before = Upload(300)
    before.arrive.set()
    assert receiving(intake, GRAD, before, Context(peer=quiet)).result(WAIT) == ("message", 300)
    assert turn_order(intake, quiet) == [0, "late", 1, 2, 3, 4]  # it waits for the upload being received only
    large = Upload(2 * MiB)
    large.arrive.set()
    assert receiving(intake, GRAD, large, Context(peer=quiet)).result(WAIT) == ("message", 2 * MiB)
    assert quiet not in intake.small_peers  # its next call waits its turn like any upload
    assert turn_order(intake, quiet) == [0, 1, "late", 2, 3, 4]


def test_calls_beyond_the_waiting_bound_are_refused_at_once_naming_it() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0, max_waiting=2)
    uploads = [Upload(MiB) for _ in range(3)]
    futures = [receiving(intake, GRAD, uploads[0])]
    assert uploads[0].asked.wait(WAIT)
    for i in (1, 2):
        futures.append(receiving(intake, GRAD, uploads[i]))
        wait_until(lambda i=i: intake.large.waiting == i, f"call {i} to wait")
    extra = Upload(MiB)
    with pytest.raises(Failure) as info:
        receiving(intake, GRAD, extra).result(WAIT)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert info.value.message == "2 calls are already waiting for their turn to be received, the max_receive_waiting limit of 2; retry later"
    assert not extra.asked.is_set() and intake.large.waiting == 2
    small = Upload(300)  # the small lane is not bounded by it: health checks always get in
    small.arrive.set()
    assert receiving(intake, HEALTH, small).result(WAIT) == ("message", 300)
    # A connection whose last message was small goes ahead, in a round of its own, with its own bound.
    intake.small_peers["ipv4:127.0.0.1:1003"] = None
    ahead = Upload(300)
    ahead_future = receiving(intake, GRAD, ahead, Context(peer="ipv4:127.0.0.1:1003"))
    wait_until(lambda: intake.large.waiting == 3, "the small caller to wait ahead")
    uploads[0].arrive.set()
    assert futures[0].result(WAIT) == ("message", MiB)
    assert ahead.asked.wait(WAIT) and not any(u.asked.is_set() for u in uploads[1:])
    ahead.arrive.set()
    assert ahead_future.result(WAIT) == ("message", 300)
    for upload, future in zip(uploads[1:], futures[1:]):
        upload.arrive.set()
        assert future.result(WAIT) == ("message", MiB)
    assert intake.large.waiting == 0



def test_calls_that_ended_while_waiting_do_not_count_against_the_waiting_bound() -> None:
    """A waiting call whose deadline passes, or whose caller cancels it, leaves the line only when its handler next wakes:
    a burst of such calls filled the bound and refused live ones ("16 calls are already waiting") with fewer waiting."""
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=0, max_waiting=2)
    first = Upload(MiB)
    futures = [receiving(intake, GRAD, first)]
    assert first.asked.wait(WAIT)
    contexts = [Context(peer=f"ipv4:127.0.0.1:{2000 + i}") for i in range(2)]
    waiting = [Upload(MiB) for _ in contexts]
    for i, (upload, context) in enumerate(zip(waiting, contexts)):
        futures.append(receiving(intake, GRAD, upload, context))
        wait_until(lambda i=i: intake.large.waiting == i + 1, f"call {i} to wait")
    for context in contexts:
        context.active = False  # both calls end while they wait
    late = Upload(MiB)
    late_future = receiving(intake, GRAD, late, Context(peer="ipv4:127.0.0.1:3000"))
    first.arrive.set()
    assert futures[0].result(WAIT) == ("message", MiB)
    assert late.asked.wait(WAIT)  # taken, not refused, and next: the ended calls are out of the line
    late.arrive.set()
    assert late_future.result(WAIT) == ("message", MiB)
    assert [f.result(WAIT) for f in futures[1:]] == [None, None] and not any(u.asked.is_set() for u in waiting)
    assert intake.large.waiting == 0 and intake.large.receiving == 0


class Stream:
    """A request stream whose messages arrive one by one, each when the test lets it (``arrive``)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.asked = threading.Semaphore(0)
        self.arrive = threading.Semaphore(0)
        self.asked_count = 0

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for i, size in enumerate(self.sizes):
            self.asked_count += 1
            self.asked.release()
            assert self.arrive.acquire(timeout=WAIT)
            yield f"message {i}", size


def test_stream_messages_take_turns_and_one_over_the_held_budget_is_refused_while_the_stream_goes_on() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=5 * MiB, stream_limit=8 * MiB)
    first, second = Stream([3 * MiB, 2 * MiB, MiB]), Stream([MiB])
    got: list[Received] = []
    a = threading.Thread(target=lambda: got.extend(intake.stream(iter(first), Context(peer="a"))))
    b = threading.Thread(target=lambda: got.extend(intake.stream(iter(second), Context(peer="b"))))
    a.start()
    assert first.asked.acquire(timeout=WAIT)  # the first stream's first message is asked for ...
    b.start()
    wait_until(lambda: intake.streams.waiting == 1, "the second stream to wait for its turn")
    assert second.asked_count == 0  # ... and the second stream's is not, until it has arrived
    first.arrive.release()
    assert second.asked.acquire(timeout=WAIT)  # round robin: the other connection's turn comes next
    assert first.asked_count == 1
    second.arrive.release()
    # The second stream needs one more turn to find its end; it may come before or after the first stream's next
    # message, which holds the turn until it arrives, so the second stream is joined only once all have arrived.
    assert first.asked.acquire(timeout=WAIT)
    first.arrive.release()  # 2 MiB: 3 + 1 + 2 are over the 5 MiB allowed
    assert first.asked.acquire(timeout=WAIT)
    first.arrive.release()  # 1 MiB: fits
    a.join(WAIT)
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive()
    by_message = {r.message: r for r in got}
    assert by_message["message 0"].refused is None and by_message["message 2"].refused is None
    refused = by_message["message 1"].refused
    assert refused is not None and refused.code == "RESOURCE_EXHAUSTED"
    assert refused.message.startswith(f"this request is {2 * MiB} bytes and the requests waiting or being computed "
                                      f"hold {4 * MiB}, together over the max_queued_bytes limit of {5 * MiB}")
    assert intake.held == 5 * MiB  # messages 0 and 2 of the first stream and the second stream's
    for r in got:
        r.release()
    assert intake.held == 0 and intake.streams.receiving == 0 and intake.streams.waiting == 0


# ---- a live server ----

def sin_network(stub: service_pb2_grpc.GradientStub, n: int) -> str:
    b = GraphBuilder()
    graph = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", (n,)))))
    return stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph), timeout=WAIT).network_id


def test_many_large_requests_are_refused_over_budget_while_small_ones_are_served() -> None:
    n = 2 * MiB  # 8 MiB of float32 per request
    x = np.linspace(0, 1, n, dtype=np.float32)
    # A generous stop grace: the cancelled run must stop, not be replaced, however loaded the machine is.
    limits = Limits(max_message_bytes=9 * MiB, max_receive_bytes=9 * MiB, max_queued_bytes=17 * MiB, max_queue_depth=16,
                    stop_grace_ms=600_000)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", -1)]) as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        large = service_pb2.GradRequest(network_id=sin_network(stub, n), inputs=[codec.encode_tensor(x)]).SerializeToString()
        small_net = sin_network(stub, 3)
        tiny = service_pb2.GradRequest(network_id=small_net, inputs=[codec.encode_tensor(np.float32([0, 1, 2]))])
        for _ in range(2):  # the second call onwards runs in the server's local lane, not the (soon busy) worker
            stub.Grad(tiny, timeout=WAIT)
        stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT)  # its op catalog comes from a worker, once
        busy = stub.Run.future(long_run(stub, k=20000), timeout=900)  # minutes of steps, cancelled below
        wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
        call = ch.unary_unary(GRAD)
        calls = [call.future(large, timeout=600) for _ in range(8)]
        # Two fit in max_queued_bytes and wait for the worker; the other six are refused once received.
        wait_until(lambda: sum(c.done() for c in calls) == 6, "six large requests to be refused")
        for c in (c for c in calls if c.done()):
            err = c.exception()
            assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert err.details().startswith(f"this request is {len(large)} bytes and the requests waiting or being computed hold ")
            assert err.details().endswith(f"together over the max_queued_bytes limit of {17 * MiB}; retry later, or send smaller requests")
        assert server.intake.held >= 2 * len(large)
        # Small calls are served meanwhile: health, ServerInfo (reporting the budget), a tiny gradient.
        check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="gradserve.v1.Gradient"), timeout=WAIT)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        info = stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT)
        assert info.limits.max_receive_bytes == 9 * MiB and info.limits.max_queued_bytes == 17 * MiB
        for metadata in ((), ((DECLARED, str(tiny.ByteSize())),)):
            got = codec.decode_tree(stub.Grad(tiny, timeout=WAIT, metadata=metadata).gradients)
            np.testing.assert_allclose(got, np.cos(np.float32([0, 1, 2])), rtol=1e-6)
        busy.cancel()
        for c in (c for c in calls if c.exception() is None):
            np.testing.assert_allclose(codec.decode_tree(service_pb2.GradResponse.FromString(c.result()).gradients),
                                       np.cos(x), rtol=1e-6, atol=1e-6)
        wait_until(lambda: server.intake.held == 0, "every request's bytes to be released")
        assert server.pool.replaced == 0


def test_a_request_larger_than_declared_is_invalid_argument() -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        request = service_pb2.GradRequest(network_id=sin_network(stub, 1000),
                                          inputs=[codec.encode_tensor(np.zeros(1000, np.float32))])
        err = rejected(lambda: stub.Grad(request, timeout=WAIT, metadata=((DECLARED, "10"),)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"/gradserve.v1.Gradient/Grad: the request is {request.ByteSize()} bytes, more than the 10" in err.details()
        assert server.intake.held == 0


def test_memory_is_trimmed_once_large_requests_were_freed() -> None:
    freed = [0]
    trimmer = Trimmer(lambda: freed[0])
    try:
        freed[0] = TRIM_AFTER_BYTES
        wait_until(lambda: trimmer.trims == 1, "a trim after 64 MiB were freed")
    finally:
        trimmer.stop()
    assert trimmer.trims == 1


def test_large_responses_count_towards_trimming_and_small_ones_do_not() -> None:
    """The server process keeps freed heap pages for its next large response (``heap.keep_heap``), so the
    Trimmer's running total counts the bytes of large responses as well as of large requests."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        answered = []
        for n in (10, 100_000):  # 40 bytes of gradient, then 400,000
            x = np.linspace(0, 1, n, dtype=np.float32)
            request = service_pb2.GradRequest(network_id=sin_network(stub, n), inputs=[codec.encode_tensor(x)])
            before = server.servicer.answered
            response = stub.Grad(request, timeout=WAIT)
            np.testing.assert_allclose(codec.decode_tensor(response.gradients.tensor), np.cos(x), rtol=1e-6)
            answered.append((server.servicer.answered - before, response.ByteSize()))
    assert answered[0][0] == 0
    assert answered[1][0] == answered[1][1] > 4 * 100_000


def test_other_request_streams_take_turns_in_their_own_lane_and_hold_each_message_while_it_is_served() -> None:
    intake = Intake(receiving_limit=8 * MiB, largest=8 * MiB, held_limit=10 * MiB)
    stream = intake.each(iter([("a", 6 * MiB), ("b", 2 * MiB), ("c", 11 * MiB)]), Context())
    assert next(stream) == ("a", 6 * MiB)
    assert intake.held == 6 * MiB and intake.others.receiving == 0
    assert next(stream) == ("b", 2 * MiB)  # the first one was served: only the second is held
    assert intake.held == 2 * MiB
    with pytest.raises(Failure) as info:
        next(stream)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert f"is {11 * MiB} bytes" in info.value.message and f"max_queued_bytes limit of {10 * MiB}" in info.value.message
    assert intake.held == 0 and intake.others.receiving == 0 and intake.others.waiting == 0
    assert intake.small.receiving == intake.small.waiting == intake.streams.receiving == intake.streams.waiting == 0


def test_an_open_reflection_stream_waiting_for_its_client_stalls_no_health_check_small_call_or_gradstream() -> None:
    """A reflection client (grpcurl, an IDE) that keeps its stream open between questions holds its turn while the server
    waits for its next message: in the small lane that stopped every health check, ServerInfo and declared-small Grad;
    in the stream lane every GradStream."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, grpc.insecure_channel(f"127.0.0.1:{server.port}") as other:
        done = threading.Event()

        def questions() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            done.wait()  # the client thinks, its stream open (until the test ends)

        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(questions())  # cancelled at the end
        try:
            assert "gradserve.v1.Gradient" in {s.name for s in next(replies).list_services_response.service}
            assert health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status == \
                health_pb2.HealthCheckResponse.SERVING
            stub = service_pb2_grpc.GradientStub(other)
            assert stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT).worker_count == 1
            request = service_pb2.GradRequest(network_id=sin_network(stub, 3), inputs=[codec.encode_tensor(np.float32([0, 1, 2]))])
            got = stub.Grad(request, timeout=WAIT, metadata=codec.request_bytes_metadata(request))
            np.testing.assert_allclose(codec.decode_tensor(got.gradients.tensor), np.cos(np.float32([0, 1, 2])), rtol=1e-6)
            (streamed,) = stub.GradStream(iter([request]), timeout=WAIT)
            np.testing.assert_allclose(codec.decode_tensor(streamed.gradients.tensor), np.cos(np.float32([0, 1, 2])), rtol=1e-6)
        finally:
            done.set()
            replies.cancel()


@contextlib.contextmanager
def stalled(channel: grpc.Channel, method: str, timeout: float) -> Iterator[grpc.Future]:
    """A call of ``method`` whose request message never comes (a unary method called as a client stream that sends
    nothing), until the block ends."""
    done = threading.Event()

    def never() -> Iterator[bytes]:
        done.wait()
        yield from ()

    call = channel.stream_unary(method, request_serializer=None, response_deserializer=None).future(never(), timeout=timeout)
    try:
        yield call
    finally:
        done.set()
        call.cancel()


@pytest.mark.parametrize("method", ["/gradserve.v1.Gradient/ServerInfo", HEALTH])
def test_a_small_call_whose_message_never_comes_holds_its_lane_for_a_few_seconds_whatever_its_deadline(
        monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A ServerInfo or health check whose message never comes, sent with a long deadline, held its lane until that
    deadline (up to max_deadline_ms, 10 minutes by default): every call of the lane (every health check, and a kubelet's
    probe times out after 2 s) waited meanwhile. Its message is a few bytes, so it must arrive within
    SMALL_RECEIVE_SECONDS (shortened here) or HEALTH_RECEIVE_SECONDS of its turn; the call of the same lane waiting
    behind it cancels it then and is answered, long before the stalled call's own deadline."""
    monkeypatch.setattr(intake_module, "SMALL_RECEIVE_SECONDS", 0.5)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as other:
        lane = server.intake.health if method == HEALTH else server.intake.small
        with stalled(ch, method, timeout=10 * WAIT) as call:
            wait_until(lambda: lane.receiving == 1, "the call to stall")
            if method == HEALTH:
                assert health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status == \
                    health_pb2.HealthCheckResponse.SERVING
            else:
                assert service_pb2_grpc.GradientStub(other).ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT).worker_count == 1
            assert rejected(lambda: call.result(WAIT)).code() == grpc.StatusCode.CANCELLED
        assert lane.receiving == 0 and not lane.inbound


def test_health_checks_never_wait_behind_another_methods_call_whose_message_never_comes() -> None:
    """A ServerInfo (in the small lane) that never sends its message holds no health check: they take turns in a lane
    of their own."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as other:
        with stalled(ch, "/gradserve.v1.Gradient/ServerInfo", timeout=10 * WAIT):
            wait_until(lambda: server.intake.small.receiving == 1, "the call to stall")
            assert health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert server.intake.small.receiving == 1  # still stalled: the health check did not wait for it


def test_a_call_whose_message_never_comes_is_cancelled_at_its_deadline_and_frees_its_lane() -> None:
    """A caller that opens a Grad or ServerInfo call and never sends its message (a unary method called as a client
    stream, or an upload stalled half way) held its lane's turn for as long as its connection lived: every other
    undeclared Grad, and every ServerInfo, waited behind it. The next call waiting in the lane cancels it once its
    deadline (here the server's default, as it set none) has passed."""
    limits = Limits(default_deadline_ms=2_000)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, grpc.insecure_channel(f"127.0.0.1:{server.port}") as other:
        done = threading.Event()

        def never() -> Iterator[bytes]:
            done.wait()  # until the test ends
            yield from ()

        stalled = [ch.stream_unary(f"/gradserve.v1.Gradient/{name}", request_serializer=None, response_deserializer=None)
                   .future(never()) for name in ("Grad", "ServerInfo")]
        try:
            wait_until(lambda: server.intake.large.receiving == 1 and server.intake.small.receiving == 1, "the calls to stall")
            stub = service_pb2_grpc.GradientStub(other)
            assert stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT).worker_count == 1  # waits in the small lane
            network = sin_network(stub, 3)  # undeclared: received in the large lane
            got = stub.Grad(service_pb2.GradRequest(network_id=network, inputs=[codec.encode_tensor(np.float32([0, 1, 2]))]),
                            timeout=WAIT)
            np.testing.assert_allclose(codec.decode_tensor(got.gradients.tensor), np.cos(np.float32([0, 1, 2])), rtol=1e-6)
            for call in stalled:
                assert rejected(lambda call=call: call.result(WAIT)).code() == grpc.StatusCode.CANCELLED
        finally:
            done.set()
        assert server.intake.large.receiving == server.intake.small.receiving == 0 and not server.intake.large.inbound


def test_a_reflection_message_over_the_held_budget_is_refused_naming_it_and_reflection_still_answers() -> None:
    limits = Limits(max_message_bytes=9 * MiB, max_receive_bytes=9 * MiB, max_queued_bytes=1 * MiB)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        huge = reflection_pb2.ServerReflectionRequest(host="h" * (2 * MiB), list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([huge]), timeout=WAIT))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_queued_bytes limit of {1 * MiB}" in info.value.details()
        # The whole stream is read, so its handler has returned (and released what it held) before this asserts.
        [reply] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT))
        assert "gradserve.v1.Gradient" in {s.name for s in reply.list_services_response.service}
        assert server.intake.held == 0 and server.intake.small.receiving == 0


def test_huge_requests_to_the_small_methods_are_refused_over_the_held_budget_naming_it() -> None:
    limits = Limits(max_message_bytes=9 * MiB, max_receive_bytes=9 * MiB, max_queued_bytes=1 * MiB)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, limits=limits)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        # Unknown field 1000 (length-delimited), 2 MiB: still a valid message of each of these types.
        padding = b"\xc2\x3e" + codec_varint(2 * MiB) + b"x" * (2 * MiB)
        for method in ("/gradserve.v1.Gradient/ServerInfo", "/gradserve.v1.Gradient/ListOps", HEALTH):
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(method)(padding, timeout=WAIT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method
            assert info.value.details().startswith(f"this request is {len(padding)} bytes"), method
            assert f"max_queued_bytes limit of {1 * MiB}" in info.value.details()
        assert service_pb2_grpc.GradientStub(ch).ServerInfo(service_pb2.ServerInfoRequest(), timeout=WAIT).limits.max_queued_bytes == MiB
        assert server.intake.held == 0 and server.intake.small.receiving == 0


def codec_varint(n: int) -> bytes:
    """``n`` as a protobuf varint."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))
