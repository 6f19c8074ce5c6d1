"""Server limits that guard resources: response size known before computing, open GradStreams, shared
memory held by workers, the default deadline, no worker started after stop, the parse guard's cache."""
from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverkit import parse, rejected, slow_request, wait_until

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import transport
from gradserve.server.app import ParseGuard, Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

MiB = 1 << 20
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def config(workers: int = 1, **limits: int) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=workers, limits=Limits(**limits))


def connect(server: Server) -> tuple[grpc.Channel, service_pb2_grpc.GradientStub]:
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=UNLIMITED)
    return ch, service_pb2_grpc.GradientStub(ch)


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def shm_used() -> int:
    st = os.statvfs(transport.SHM_DIR)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def broadcast_graph(n: int, dtype: str = "float64") -> object:
    b = GraphBuilder()
    x = b.input("x", dtype, (1,))
    return codec.encode_graph(b.build(b.op("BroadcastTo", x, shape=[n])))


# ---- 1. results over max_message_bytes are refused before anything is computed ----

def test_huge_run_result_is_refused_before_computing() -> None:
    with running(config()) as server:
        ch, stub = connect(server)
        with ch:
            wpid = server.pool.pids()[0]
            before = status_kb(wpid, "VmHWM")
            err = rejected(lambda: stub.Run(service_pb2.RunRequest(
                graph=broadcast_graph(1 << 28), inputs=[codec.encode_tensor(np.ones(1))]), timeout=60))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            limit = Limits().max_message_bytes
            assert err.details().startswith(f"the RunResponse would be {(1 << 31) + 6} bytes, over the "
                                            f"max_message_bytes limit of {limit}; ")
            assert "largest: outputs leaf 0, f64[268435456], 2147483648 bytes" in err.details()
            assert "nothing was computed" in err.details()
            assert server.pool.pids() == [wpid]  # the worker did not die trying
            assert status_kb(wpid, "VmHWM") - before < 64 * 1024  # far from the 2 GiB the result needs


def test_grad_counts_gradients_and_forward_against_the_limit() -> None:
    n = 1 << 17  # 1 MiB of float64
    b = GraphBuilder()
    x = b.input("x", "float64", (n,))
    graph = codec.encode_graph(b.build(b.op("Neg", x)))
    with running(config(max_message_bytes=MiB + MiB // 2)) as server:
        ch, stub = connect(server)
        with ch:
            xs = codec.encode_tensor(np.ones(n))
            ok = stub.Grad(service_pb2.GradRequest(graph=graph, inputs=[xs]), timeout=30)
            assert len(ok.gradients.tensor.data) == n * 8
            err = rejected(lambda: stub.Grad(service_pb2.GradRequest(graph=graph, inputs=[xs], return_forward=True),
                                             timeout=30))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.details().startswith(f"the GradResponse would be {2 * (n * 8 + 4)} bytes, over the "
                                            f"max_message_bytes limit of {MiB + MiB // 2}; ")
            assert "largest: gradients leaf 0, f64[131072], 1048576 bytes" in err.details()


def test_max_message_bytes_must_be_below_2_gib() -> None:
    with pytest.raises(SystemExit, match="max-message-bytes must be below 2 GiB"):
        parse(["--max-message-bytes", str(1 << 31)], {})
    with pytest.raises(SystemExit, match="2 GiB"):
        parse([], {"GRADSERVE_MAX_MESSAGE_BYTES": str(3 << 30)})
    assert parse(["--max-message-bytes", str((1 << 31) - 1)], {}).limits.max_message_bytes == (1 << 31) - 1


# ---- 2. open GradStreams are capped; health and ServerInfo keep their threads ----

def test_open_streams_are_capped_and_health_still_answers() -> None:
    assert parse(["--max-open-streams", "3"], {}).limits.max_open_streams == 3
    assert parse([], {"GRADSERVE_MAX_OPEN_STREAMS": "5"}).limits.max_open_streams == 5
    with running(config(max_queue_depth=2, max_open_streams=3)) as server:
        ch, stub = connect(server)
        with ch:
            stop = threading.Event()

            def idle() -> Iterator[service_pb2.GradRequest]:
                stop.wait()
                return
                yield

            streams = [stub.GradStream(idle()) for _ in range(3)]
            try:
                wait_until(lambda: server.servicer._streams == 3, "three streams open")
                err = rejected(lambda: list(stub.GradStream(idle(), timeout=10)))
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_open_streams=3" in err.details()
                # 1 worker + 2 queued + 3 streams + spare: threads are left for these.
                health = health_pb2_grpc.HealthStub(ch)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
                    health_pb2.HealthCheckResponse.SERVING
                assert stub.ServerInfo(service_pb2.ServerInfoRequest(), timeout=30).worker_count == 1
            finally:
                stop.set()
                for s in streams:
                    assert list(s) == []
            wait_until(lambda: server.servicer._streams == 0, "streams closed")
            assert list(stub.GradStream(iter(()), timeout=10)) == []


# ---- 3. workers unmap arenas the server released ----

def test_worker_drops_released_big_arena() -> None:
    n = 260 * MiB // 4  # a float32 result above KEEP_ARENA_BYTES, below max_message_bytes
    assert n * 4 > transport.KEEP_ARENA_BYTES
    with running(config()) as server:
        ch, stub = connect(server)
        with ch:
            baseline = shm_used()
            r = stub.Run(service_pb2.RunRequest(graph=broadcast_graph(n, "float32"),
                                                inputs=[codec.encode_tensor(np.ones(1, np.float32))]), timeout=60)
            assert len(r.outputs.tensor.data) == n * 4
            del r
            wpid = server.pool.pids()[0]
            with open(f"/proc/{wpid}/maps") as f:
                held = [line.strip() for line in f if "/dev/shm/gs" in line]
            assert held == []  # neither the released out-arena nor a '(deleted)' mapping of it
            assert shm_used() - baseline < 32 * MiB


# ---- 4. default_deadline_ms applies to calls without a deadline ----

def test_default_deadline_applies_without_client_deadline() -> None:
    with running(config(default_deadline_ms=500, max_deadline_ms=1500)) as server:
        ch, stub = connect(server)
        with ch:
            req = slow_request(stub, 2000, 24)  # several seconds of work
            assert rejected(lambda: stub.Grad(req)).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert rejected(lambda: stub.Grad(req, timeout=30)).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Which deadline the server applies, bracketed by clock readings rather than measured from outside.
    for client_seconds, applied in ((None, 0.5), (1e12, 0.5), (30.0, 1.5), (0.25, 0.25)):
        before = time.monotonic()
        deadline = server.servicer.deadline(SimpleNamespace(time_remaining=lambda: client_seconds))
        after = time.monotonic()
        assert deadline is not None and before + applied <= deadline <= after + applied, (client_seconds, applied)


# ---- 5. no worker is started once the pool is closed ----

def test_stop_during_compute_starts_no_worker() -> None:
    server = Server(config())
    server.start()
    ch, stub = connect(server)
    try:
        req = slow_request(stub, 2000, 24)
        pids = server.pool.pids()
        codes: list[grpc.StatusCode] = []

        def call() -> None:
            try:
                stub.Grad(req, timeout=60)
            except grpc.RpcError as e:
                codes.append(e.code())

        t = threading.Thread(target=call)
        t.start()
        wait_until(lambda: server.pool.busy_pids() == pids, "the worker computing")
        server.stop(grace=0.2)
        t.join(30)
        assert server.servicer.wait_idle(30)  # the cancelled handler has returned
        assert codes and codes[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert server.pool.pids() == pids
        assert server.pool.replaced == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        ch.close()
        server.stop(0)


# ---- 6. unknown methods are not cached by the parse guard ----

def test_parse_guard_does_not_cache_unknown_methods() -> None:
    guard = ParseGuard(lambda *a: None)
    for i in range(50):
        assert guard.intercept_service(lambda d: None, SimpleNamespace(method=f"/no.Such/M{i}")) is None
    assert guard._guarded == {}
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: r, request_deserializer=service_pb2.RunRequest.FromString)
    calls = []

    def known(d: object) -> grpc.RpcMethodHandler:
        calls.append(d)
        return handler

    first = guard.intercept_service(known, SimpleNamespace(method="/gradserve.v1.Gradient/Run"))
    assert guard.intercept_service(known, SimpleNamespace(method="/gradserve.v1.Gradient/Run")) is first
    assert len(calls) == 1 and list(guard._guarded) == ["/gradserve.v1.Gradient/Run"]


def test_unknown_methods_answer_unimplemented() -> None:
    with running(config()) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            for i in range(5):
                err = rejected(lambda: ch.unary_unary(f"/no.Such/M{i}")(b"", timeout=5))
                assert err.code() == grpc.StatusCode.UNIMPLEMENTED
