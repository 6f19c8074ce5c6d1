"""Cancelled and expired calls stop their worker between operations instead of killing it; only a worker
that does not stop within the grace period is replaced. Waits are on the pool's state, never on time."""
from __future__ import annotations

import os
import signal
from typing import Iterator

import grpc
import pytest
from serverkit import long_run, quick_check, rejected, wait_until

from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

CALLS = 20


@pytest.fixture()
def patient() -> Iterator[tuple[Server, service_pb2_grpc.GradientStub]]:
    """One worker given a minute to stop: any op of these tests ends far sooner, so none is replaced."""
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(stop_grace_ms=60_000))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, service_pb2_grpc.GradientStub(channel)


def test_cancelled_calls_stop_between_ops_and_keep_their_worker(patient: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = patient
    request = long_run(stub)
    pids = server.pool.pids()
    for _ in range(CALLS):
        call = stub.Run.future(request, timeout=600)
        wait_until(lambda: server.pool.busy_pids() == pids, "the worker to take the request")
        assert call.cancel()
        wait_until(lambda: not server.pool.busy_pids(), "the worker to stop and be free")
    assert server.pool.pids() == pids and server.pool.replaced == 0
    quick_check(stub)


def test_expired_calls_stop_between_ops_and_keep_their_worker(patient: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = patient
    request = long_run(stub)
    pids = server.pool.pids()
    for _ in range(CALLS // 2):
        err = rejected(lambda: stub.Run(request, timeout=0.2))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: not server.pool.busy_pids(), "the worker to stop and be free")
    assert server.pool.pids() == pids and server.pool.replaced == 0
    assert ("Run", "DEADLINE_EXCEEDED") in {(c.method, c.code) for c in stub.ServerInfo(
        service_pb2.ServerInfoRequest(), timeout=30).request_counters}
    quick_check(stub)


def test_a_worker_that_cannot_stop_is_replaced_after_the_grace_period() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(stop_grace_ms=100))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = long_run(stub)
        pids = server.pool.pids()
        call = stub.Run.future(request, timeout=600)
        wait_until(lambda: server.pool.busy_pids() == pids, "the worker to take the request")
        os.kill(pids[0], signal.SIGSTOP)  # frozen: it can never reach the next step and stop
        call.cancel()
        wait_until(lambda: server.pool.replaced == 1 and not server.pool.busy_pids(), "the frozen worker to be replaced")
        assert server.pool.pids() != pids
        quick_check(stub)
