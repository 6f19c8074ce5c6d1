"""The worker pool under failure: a killed worker, a full queue, an expired deadline, a cancelled call,
draining on stop and on SIGTERM. Waits poll the server's state; nothing asserts on elapsed time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Iterator

import grpc
import numpy as np
import pytest
from serverkit import quick_check, slow_request, wait_until

from gradserve.proto import codec
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2_grpc


def composed_sin_grad(n: int, k: int) -> np.ndarray:
    """d/dx sum(sin^k(x y)) at x = y = 0.5: the chain rule, one cos factor per Sin, times y."""
    x = np.full((n, 1), 0.5)
    h, d = x @ x.T, np.ones((n, n))
    for _ in range(k):
        d, h = d * np.cos(h), np.sin(h)
    return (d * x.T).sum(axis=1, keepdims=True)


@pytest.fixture()
def one_worker() -> Iterator[tuple[Server, service_pb2_grpc.GradientStub]]:
    # A minute to stop between operations: far more than any one op here takes, so no stop ends in a kill.
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_queue_depth=1, stop_grace_ms=60_000))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, service_pb2_grpc.GradientStub(channel)


def test_killed_worker_fails_only_its_request_retryably_and_is_replaced(one_worker: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = one_worker
    request = slow_request(stub, n=2000)
    before = server.pool.pids()
    call = stub.Grad.future(request, timeout=60)
    wait_until(lambda: server.pool.busy_pids() == before, "the worker to take the request")
    os.kill(before[0], signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as info:
        call.result()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"worker process {before[0]} died while computing this request (killed by SIGKILL)" in info.value.details()
    assert server.pool.pids() != before and server.pool.replaced == 1
    quick_check(stub)


def test_full_queue_is_resource_exhausted_and_cancelled_calls_free_their_worker(
    one_worker: tuple[Server, service_pb2_grpc.GradientStub],
) -> None:
    server, stub = one_worker
    request = slow_request(stub, n=2000)
    running_call = stub.Grad.future(request, timeout=60)
    wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
    queued_call = stub.Grad.future(request, timeout=60)
    wait_until(lambda: server.pool.queued == 1, "the second call to queue")
    with pytest.raises(grpc.RpcError) as info:
        stub.Grad(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in info.value.details()
    queued_call.cancel()
    running_call.cancel()
    wait_until(lambda: not server.pool.busy_pids() and server.pool.queued == 0, "the cancelled work to stop")
    assert server.pool.replaced == 0  # told to stop between operations, the worker stayed
    quick_check(stub)


def test_expired_deadline_stops_the_work_and_frees_the_worker(one_worker: tuple[Server, service_pb2_grpc.GradientStub]) -> None:
    server, stub = one_worker
    request = slow_request(stub, n=2000)
    with pytest.raises(grpc.RpcError) as info:
        stub.Grad(request, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: not server.pool.busy_pids(), "the worker to stop")
    assert server.pool.replaced == 0
    quick_check(stub)


def test_stop_drains_in_flight_calls_and_refuses_new_ones() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1)
    server = Server(config)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.GradientStub(channel)
            request = slow_request(stub, n=1000, k=8)
            call = stub.Grad.future(request, timeout=60)
            wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
            stopper = threading.Thread(target=server.stop, args=(30,))
            stopper.start()
            wait_until(lambda: server.servicer.draining, "draining to begin")
            with pytest.raises(grpc.RpcError) as info:
                stub.Grad(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            np.testing.assert_allclose(codec.decode_tree(call.result().gradients), composed_sin_grad(1000, 8), rtol=1e-10)
            stopper.join()
    finally:
        server.stop(1)


def test_sigterm_drains_and_exits_cleanly_with_json_logs() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gradserve.server", "--host", "127.0.0.1", "--port", "0", "--workers", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        start = json.loads(proc.stderr.readline())  # type: ignore[union-attr]
        assert start["event"] == "server_start" and start["workers"] == 1
        with grpc.insecure_channel(f"127.0.0.1:{start['port']}") as channel:
            quick_check(service_pb2_grpc.GradientStub(channel))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        events = [json.loads(line)["event"] for line in proc.stderr if line.startswith("{")]  # type: ignore[union-attr]
        assert events[-2:] == ["server_draining", "server_stop"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


WORKER_LOGS = """
import multiprocessing, sys
from gradserve.server import jsonlog, worker
from gradserve.server.config import Limits
ours, parents = multiprocessing.Pipe()
parents.close()  # the parent is gone at once: main sets itself up, then returns
worker.main(ours, multiprocessing.Value("q", 0), multiprocessing.Value("q", 0), Limits(), 1, 0, 0, 0, sys.argv[1])
for level in jsonlog.LEVELS:
    jsonlog.log("probe_" + level, level=level)
"""


@pytest.mark.parametrize("level", ["warning", "error"])
def test_a_worker_logs_at_the_level_the_server_was_given(level: str) -> None:
    """A worker starts from the fork server, which never saw the server's ``--log-level``: it is handed over."""
    done = subprocess.run([sys.executable, "-c", WORKER_LOGS, level], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert events == [f"probe_{name}" for name in ("warning", "error")[("warning", "error").index(level):]]
