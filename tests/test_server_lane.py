"""The local lane: a plan a worker found tiny runs in the server process from its second request on,
with the workers' answers and errors, also for many threads at once while the only worker is busy and
in streams mixing tiny, large and bad requests; a bounded plan (milliseconds of work, large tensors in and
out) runs there while its lane is free, with the numbers of closed forms, stops at its deadline, and goes
to a worker while the lane is busy; plans over the bounds and a disabled lane use workers."""
from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from serverkit import graph_in_two, jobs_seen, lane_stops_at_deadline_and_cancel, long_run, quick_check, rejected, wait_until

from gradserve.engine import GraphBuilder
from gradserve.engine.compiler import STRAIGHT_AFTER
from gradserve.proto import codec
from gradserve.server import blobs, compute, servicer
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

YS = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)



def tutorial_request(stub: service_pb2_grpc.GradientStub, xs: np.ndarray) -> service_pb2.GradRequest:
    """The tutorial's first example, d/dx of sum((x * z) @ y) with z = 1, by network id."""
    b = GraphBuilder()
    x, y = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    z = b.param("z", np.array([1.0], np.float32))
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("MatMul", x * z, y))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(xs), codec.encode_tensor(YS)])


def sin_request(stub: service_pb2_grpc.GradientStub, x: np.ndarray) -> service_pb2.GradRequest:
    b = GraphBuilder()
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", x.shape)))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(x)])


def test_tiny_plan_runs_in_the_server_process_even_while_every_worker_is_stopped(
    server: Server, stub: service_pb2_grpc.GradientStub,
) -> None:
    request = tutorial_request(stub, np.ones((2, 3), np.float32))
    served = server.servicer.lane.served
    stub.Grad(request, timeout=30)  # a worker builds the plan and finds it tiny
    assert server.servicer.lane.served == served
    workers = server.pool.pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        request.inputs[0].CopyFrom(codec.encode_tensor(np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)))
        got = codec.decode_tree(stub.Grad(request, timeout=10).gradients)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    # The tutorial prints [[4.5099998 2.7 3.6000001] [4.5099998 2.7 3.6000001]]: each row holds y's row sums.
    np.testing.assert_allclose(got, np.array([[4.51, 2.7, 3.6]] * 2, np.float32), rtol=1e-6)
    assert server.servicer.lane.served == served + 1
    assert server.pool.pids() == workers and server.pool.replaced == 0


def test_the_lane_runs_the_plan_the_worker_built_without_compiling(
    server: Server, stub: service_pb2_grpc.GradientStub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_compiling(graph: Any) -> Any:
        raise AssertionError("compiled in the server process")

    monkeypatch.setattr(compute, "compile_graph", no_compiling)  # this process only: workers are separate processes
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    request = sin_request(stub, x)
    served = server.servicer.lane.served
    np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
    x2 = x * 3
    request.inputs[0].CopyFrom(codec.encode_tensor(x2))
    np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x2), rtol=1e-12)
    assert server.servicer.lane.served == served + 1


def test_plan_over_many_elements_runs_in_a_worker_unless_it_is_bounded(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    x = np.linspace(-3, 3, server.config.local_max_elements)  # Sin and its gradient touch 4x as many: not tiny
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_flops=0)) as tiny_only:
        with grpc.insecure_channel(f"127.0.0.1:{tiny_only.port}") as channel:
            tiny_stub = service_pb2_grpc.GradientStub(channel)
            request = sin_request(tiny_stub, x)
            for _ in range(3):
                np.testing.assert_allclose(codec.decode_tree(tiny_stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
            assert tiny_only.servicer.lane.served == 0
    request = sin_request(stub, x)  # within the default flops and peak bytes: bounded, so the lane takes it when free
    served = server.servicer.lane.served
    for _ in range(3):
        np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
    assert server.servicer.lane.served == served + 2


def test_bad_inputs_to_a_local_plan_get_the_same_errors_as_in_a_worker(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    request = tutorial_request(stub, np.zeros((2, 3), np.float32))
    stub.Grad(request, timeout=30)
    bad = {"shape": codec.encode_tensor(np.zeros((3, 2), np.float32)),
           "dtype": codec.encode_tensor(np.zeros((2, 3), np.float64))}
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_elements=0)) as plain:
        with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as channel:
            plain_stub = service_pb2_grpc.GradientStub(channel)
            plain_request = tutorial_request(plain_stub, np.zeros((2, 3), np.float32))
            for what, tensor in bad.items():
                served = server.servicer.lane.served
                request.inputs[0].CopyFrom(tensor)
                plain_request.inputs[0].CopyFrom(tensor)
                local, worker = rejected(lambda: stub.Grad(request, timeout=30)), rejected(lambda: plain_stub.Grad(plain_request, timeout=30))
                assert local.code() == worker.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert local.details() == worker.details() and "inputs[0]" in local.details(), what
                assert server.servicer.lane.served == served  # a failed request is not counted as served
            assert plain.servicer.lane.served == 0
    request.inputs[0].CopyFrom(codec.encode_tensor(np.ones((2, 3), np.float32)))
    np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), [[4.51, 2.7, 3.6]] * 2, rtol=1e-6)


def test_disabled_lane_sends_every_request_to_a_worker() -> None:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_elements=0)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.GradientStub(channel)
            request = sin_request(stub, np.array([0.0, 1.0]))
            for _ in range(3):
                np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos([0.0, 1.0]))
            b = GraphBuilder()  # d/dx of x is folded to a constant: a program that touches no element at all
            identity = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
                graph=codec.encode_graph(b.build(b.input("x", "float64", (2,)))))).network_id
            for _ in range(3):
                got = stub.Grad(service_pb2.GradRequest(network_id=identity, inputs=[codec.encode_tensor(np.zeros(2))]), timeout=30)
                np.testing.assert_array_equal(codec.decode_tree(got.gradients), np.ones(2))
            assert server.servicer.lane.served == 0


# ---- many threads and streams: each request has its own inputs, so a mixed-up answer shows ----


def t(a: Any) -> Any:
    return codec.encode_tensor(np.asarray(a))


def nets(stub: service_pb2_grpc.GradientStub) -> list[tuple[str, str]]:
    """Three tiny networks of different dtypes and output trees: (network id, dtype)."""
    out = []
    for dtype in ("float64", "float32", "float16"):
        b = GraphBuilder()
        x = b.input("x", dtype, (4,))
        w = b.param("w", np.array([1, 2, 3, 4], dtype))
        g = b.build((b.op("ReduceSum", x * x * w), x * w))
        out.append((stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(g))).network_id, dtype))
    return out


def check(resp: service_pb2.GradResponse, xs: np.ndarray, k: int, dtype: str) -> None:
    w = np.array([1, 2, 3, 4], dtype)
    assert resp.request_id == f"r{k}", (resp.request_id, k)
    (dx,), (dw,) = codec.decode_tree(resp.gradients)
    rtol = 2e-3 if dtype == "float16" else 1e-6
    # d/dx of (sum(x*x*w), x*w) with ones: 2xw + w; d/dw: x*x + x
    np.testing.assert_allclose(dx, (2 * xs * w + w).astype(dtype), rtol=rtol)
    np.testing.assert_allclose(dw, (xs * xs + xs).astype(dtype), rtol=rtol)
    s, xw = codec.decode_tree(resp.forward)
    np.testing.assert_allclose(s, np.array((xs * xs * w).sum(), dtype), rtol=rtol)
    np.testing.assert_allclose(xw, xs * w, rtol=rtol)


def request(nid: str, dtype: str, k: int) -> tuple[service_pb2.GradRequest, np.ndarray]:
    xs = (np.arange(4) + k % 7 - 3).astype(dtype)
    grad = codec.encode_grad_operation(get_all=True, get_by_list=True, weights=["w"])
    return service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(xs)], return_forward=True,
                                   request_id=f"r{k}"), xs


def test_many_threads_on_tiny_plans_while_the_only_worker_is_busy(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    ids = nets(stub)
    for k, (nid, dtype) in enumerate(ids):  # a worker builds each plan and reports it tiny
        req, xs = request(nid, dtype, k)
        check(stub.Grad(req, timeout=30), xs, k, dtype)
    # minutes of work in short steps, cancelled below: the worker stays busy however slowly the calls go
    busy = stub.Run.future(long_run(stub, k=20000), timeout=900)
    wait_until(lambda: bool(server.pool.busy_pids()))
    served = server.servicer.lane.served
    errors: list[BaseException] = []

    def one(k: int) -> None:
        nid, dtype = ids[k % len(ids)]
        req, xs = request(nid, dtype, k)
        try:
            check(stub.Grad(req, timeout=20), xs, k, dtype)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(300)))
    assert not errors, errors[:3]
    assert server.servicer.lane.served == served + 300
    assert not busy.done()  # the lane answered all of them while the worker was still busy
    busy.cancel()
    wait_until(lambda: not server.pool.busy_pids())  # the worker stops between two steps of the cancelled run


def test_stream_mixing_tiny_large_and_bad_requests(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    ids = nets(stub)
    b = GraphBuilder()
    big = b.input("x", "float64", (20000,))
    big_id = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("ReduceSum", b.op("Sin", big)))))).network_id
    xb = np.linspace(-1, 1, 20000)
    wanted: dict[str, Any] = {}
    requests = []
    for k in range(60):
        if k % 10 == 3:
            requests.append(service_pb2.GradRequest(network_id=big_id, inputs=[t(xb)], request_id=f"r{k}"))
            wanted[f"r{k}"] = ("big",)
        elif k % 10 == 7:
            nid, dtype = ids[0]
            requests.append(service_pb2.GradRequest(network_id=nid, inputs=[t(np.zeros(4, np.float32))], request_id=f"r{k}"))
            wanted[f"r{k}"] = ("bad",)
        elif k % 10 == 9:
            requests.append(service_pb2.GradRequest(network_id="sha256:nope", inputs=[], request_id=f"r{k}"))
            wanted[f"r{k}"] = ("missing",)
        else:
            nid, dtype = ids[k % 3]
            req, xs = request(nid, dtype, k)
            requests.append(req)
            wanted[f"r{k}"] = ("ok", xs, k, dtype)
    got = {}
    for resp in stub.GradStream(iter(requests), timeout=60):
        got[resp.request_id] = resp
    assert sorted(got) == sorted(wanted)
    for rid, want in wanted.items():
        resp = got[rid]
        if want[0] == "ok":
            assert not resp.HasField("error"), resp.error
            check(resp, *want[1:])
        elif want[0] == "big":
            assert not resp.HasField("error"), resp.error
            np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(xb), rtol=1e-12)
        elif want[0] == "bad":
            assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "inputs[0]" in resp.error.message
        else:
            assert resp.error.code == grpc.StatusCode.NOT_FOUND.value[0]


# ---- bounded plans: larger work in the server process, one at a time, stopped at the call's deadline ----

def layer_request(stub: service_pb2_grpc.GradientStub, x: np.ndarray, w: np.ndarray) -> service_pb2.GradRequest:
    """d/d(x, w) of sum(tanh(x @ w)) with w a parameter sent with the call (both 64 KiB or more: shared memory
    between processes, views of the received bytes in the lane), and the forward value."""
    b = GraphBuilder()
    xi = b.input("x", "float64", x.shape)
    wp = b.param("w", np.zeros(w.shape))
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("ReduceSum", b.op("Tanh", b.op("MatMul", xi, wp))))))).network_id
    grad = codec.encode_grad_operation(get_all=True, get_by_list=True, weights=["w"])
    return service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(x)], parameters={"w": t(w)}, return_forward=True)


def check_layer(resp: service_pb2.GradResponse, x: np.ndarray, w: np.ndarray) -> None:
    """The closed form: with h = tanh(x @ w), d/dx = (1 - h^2) @ w.T, d/dw = x.T @ (1 - h^2)."""
    h = np.tanh(x @ w)
    (dx,), (dw,) = codec.decode_tree(resp.gradients)
    np.testing.assert_allclose(dx, (1 - h * h) @ w.T, rtol=1e-10)
    np.testing.assert_allclose(dw, x.T @ (1 - h * h), rtol=1e-10)
    np.testing.assert_allclose(codec.decode_tree(resp.forward), h.sum(), rtol=1e-12)


def layer_inputs(k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    return rng.normal(size=(128, 96)), rng.normal(size=(96, 128)) / 10


def test_bounded_plan_runs_in_the_server_process_with_the_closed_form_numbers(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    x, w = layer_inputs(0)
    request = layer_request(stub, x, w)
    served = server.servicer.lane.served
    check_layer(stub.Grad(request, timeout=30), x, w)  # a worker builds the plan and finds it bounded
    assert server.servicer.lane.served == served
    workers = server.pool.pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        for k in range(1, 4):  # new inputs and weights each time, as a training loop sends them
            x, w = layer_inputs(k)
            request.inputs[0].CopyFrom(t(x))
            request.parameters["w"].CopyFrom(t(w))
            check_layer(stub.Grad(request, timeout=10), x, w)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert server.servicer.lane.served == served + 3
    request.inputs[0].CopyFrom(t(np.zeros((96, 128))))  # bad input: the codec's error, as a worker gives it
    failed = rejected(lambda: stub.Grad(request, timeout=30))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs[0]" in failed.details()
    assert server.pool.pids() == workers and server.pool.replaced == 0


def test_busy_bounded_lane_hands_the_request_to_a_worker(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    x, w = layer_inputs(5)
    request = layer_request(stub, x, w)
    check_layer(stub.Grad(request, timeout=30), x, w)
    lane, metrics = server.servicer.lane, server.servicer.metrics.registry
    served, passed = lane.served, metrics.get_sample_value("gradserve_local_passed_total")
    assert lane._bounded.acquire(blocking=False)  # as a run of another request holds it
    try:
        for k in range(6, 8):
            x, w = layer_inputs(k)
            request.inputs[0].CopyFrom(t(x))
            request.parameters["w"].CopyFrom(t(w))
            check_layer(stub.Grad(request, timeout=30), x, w)
    finally:
        lane._bounded.release()
    assert lane.served == served and metrics.get_sample_value("gradserve_local_passed_total") == passed + 2
    check_layer(stub.Grad(request, timeout=30), x, w)
    assert lane.served == served + 1
    assert metrics.get_sample_value("gradserve_local_requests_total") == lane.served


def test_bounded_run_in_the_server_process_stops_at_its_deadline_or_cancellation_and_the_server_keeps_serving() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_flops=10**13, local_max_peak_bytes=1 << 30)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = long_run(stub, n=400, k=400)  # hundreds of Sins over 160,000 elements: bounded under these limits
        assert len(stub.Run(request, timeout=120).outputs.tensor.data)  # a worker runs it first and sends the plan
        lane_stops_at_deadline_and_cancel(server, stub, request)
        quick_check(stub)


def test_bounded_request_waits_for_a_worker_while_every_worker_is_busy(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    x, w = layer_inputs(8)
    request = layer_request(stub, x, w)
    check_layer(stub.Grad(request, timeout=30), x, w)
    lane = server.servicer.lane
    busy = stub.Run.future(long_run(stub, k=20000), timeout=900)  # the only worker, for minutes unless cancelled
    wait_until(lambda: bool(server.pool.busy_pids()))
    served, passed = lane.served, lane.passed
    x, w = layer_inputs(9)
    request.inputs[0].CopyFrom(t(x))
    request.parameters["w"].CopyFrom(t(w))
    waiting = stub.Grad.future(request, timeout=60)  # the lane computes only in an idle worker's turn
    wait_until(lambda: lane.passed == passed + 1, "the lane to pass the request on")
    busy.cancel()
    check_layer(waiting.result(), x, w)
    assert lane.served == served


def test_bounded_plan_stays_bounded_when_the_lane_cache_cannot_hold_it_and_its_network() -> None:
    x, w = layer_inputs(10)
    # The layer's network and plan hold about 98 KB each: either fits, not both, so decoding the network drops the plan.
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_worker_cache_bytes=150_000))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = layer_request(stub, x, w)
        lane = server.servicer.lane
        check_layer(stub.Grad(request, timeout=30), x, w)  # a worker builds the plan and sends it
        check_layer(stub.Grad(request, timeout=30), x, w)
        assert lane.served == 1
        check_layer(stub.Grad(request, timeout=30), x, w)  # the lane dropped the plan: a worker sends it again
        served = lane.served
        (streamed,) = stub.GradStream(iter([request]), timeout=30)  # a stream's bounded requests go to the workers
        assert not streamed.HasField("error")
        check_layer(streamed, x, w)
        assert lane.served == served
        request.inputs[0].CopyFrom(t(np.zeros((96, 128))))
        failed = rejected(lambda: stub.Grad(request, timeout=30))
        assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs[0]" in failed.details()


def test_a_plan_the_worker_ran_past_its_straight_line_switch_still_reaches_the_lane() -> None:
    """Caches of two entries and bounded plans: a worker's second build of plan A, run ``STRAIGHT_AFTER`` times for a
    stream while the lane held the first build, holds its generated straight-line function; once the lane has dropped
    A, the worker sends that build with its answer (without the generated function), and the lane serves A again."""
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, worker_cache_size=2, local_max_elements=1)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        lane = server.servicer.lane
        xa, xb = np.array([0.5, -1.0]), np.array([0.25, 2.0, 3.0])
        a, b = sin_request(stub, xa), sin_request(stub, xb)
        key = compute.plan_key("grad", a, a.network_id)
        for request, x in ((a, xa), (b, xb)):  # built by the worker and sent: the lane holds A and B
            np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
        assert lane.plan(key) is not None and lane.served == 0
        # The worker's cache took B's network and plan, so A is built again there; the stream's runs leave it straight.
        for streamed in stub.GradStream(iter([a] * (STRAIGHT_AFTER + 1)), timeout=60):
            np.testing.assert_allclose(codec.decode_tree(streamed.gradients), np.cos(xa), rtol=1e-12)
        np.testing.assert_allclose(codec.decode_tree(stub.Grad(b, timeout=30).gradients), np.cos(xb), rtol=1e-12)
        assert lane.served == 1 and lane.plan(key) is None  # the lane ran B and decoded its network: A was dropped
        for _ in range(2):  # the worker, which sends its straight build of A; then the lane
            np.testing.assert_allclose(codec.decode_tree(stub.Grad(a, timeout=30).gradients), np.cos(xa), rtol=1e-12)
        assert lane.served == 2 and lane.plan(key) is not None


def test_a_plan_the_lane_cannot_load_leaves_the_answer_and_the_plan_to_the_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(data: bytes) -> compute.Plan:
        raise ValueError("cannot load for the test")

    monkeypatch.setattr(compute, "import_plan", broken)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        x = np.array([0.5, -1.0, 2.0])
        request = sin_request(stub, x)
        capsys.readouterr()
        for _ in range(2):  # each answered by the worker, which sends the plan each time
            np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
        assert server.servicer.lane.served == 0
        assert server.servicer.lane.plan(compute.plan_key("grad", request, request.network_id)) is None
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"plan_not_admitted"' in line]
    assert [(e["level"], e["error"]) for e in logged] == [("warning", "ValueError: cannot load for the test")] * 2


def weighted_sin_request(stub: service_pb2_grpc.GradientStub, x: np.ndarray, w: np.ndarray) -> service_pb2.GradRequest:
    """d/dx of sum(sin(x) * w), with w sent as a parameter override (cos(x) * w), by network id."""
    b = GraphBuilder()
    y = b.op("ReduceSum", b.op("Mul", b.op("Sin", b.input("x", "float64", x.shape)), b.param("w", np.zeros(w.shape))))
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(b.build(y)))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(x)], parameters={"w": codec.encode_tensor(w)})


def test_a_request_parsed_whole_gets_the_workers_numbers_in_the_lane_and_its_errors(
    server: Server, stub: service_pb2_grpc.GradientStub,
) -> None:
    n = 1 << 13  # 64 KiB of float64 each for x and w: parsed whole (blobs.parse), and a bounded plan
    x, w = np.linspace(-3, 3, n), np.linspace(0.5, 2, n)
    request = weighted_sin_request(stub, x, w)
    assert blobs.BLOB_MIN_BYTES < request.ByteSize() <= blobs.WHOLE_MAX_BYTES
    wrong = {"inputs[0]": ("inputs", codec.encode_tensor(x.astype(np.float32))),
             "w": ("parameters", codec.encode_tensor(np.ones(n + 1)))}
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_elements=0)) as plain:
        with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as channel:
            plain_stub = service_pb2_grpc.GradientStub(channel)
            plain_request = weighted_sin_request(plain_stub, x, w)
            by_worker = codec.decode_tree(plain_stub.Grad(plain_request, timeout=30).gradients)
            served = server.servicer.lane.served
            for _ in range(3):  # a worker first (the request lifted on its way), then the lane
                got = codec.decode_tree(stub.Grad(request, timeout=30).gradients)
                np.testing.assert_array_equal(got, by_worker)
                np.testing.assert_allclose(got, np.cos(x) * w, rtol=1e-12)
            assert server.servicer.lane.served == served + 2
            for name, (field, tensor) in wrong.items():
                bad, plain_bad = service_pb2.GradRequest(), service_pb2.GradRequest()
                bad.CopyFrom(request)
                plain_bad.CopyFrom(plain_request)
                for r in (bad, plain_bad):
                    if field == "inputs":
                        r.inputs[0].CopyFrom(tensor)
                    else:
                        r.parameters["w"].CopyFrom(tensor)
                local, worker = rejected(lambda: stub.Grad(bad, timeout=30)), rejected(lambda: plain_stub.Grad(plain_bad, timeout=30))
                assert local.code() == worker.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert local.details() == worker.details() and name in local.details(), local.details()
            assert server.servicer.lane.served == served + 2 and plain.servicer.lane.served == 0


def test_an_inline_graph_request_parsed_whole_reaches_a_worker_lifted_and_without_its_graph_then_runs_in_the_lane(
    server: Server, stub: service_pb2_grpc.GradientStub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = jobs_seen(server, monkeypatch)
    bodies: list[bytes] = []
    made = servicer._body

    def body(incoming: Any) -> bytes:
        bodies.append(made(incoming))
        return bodies[-1]

    monkeypatch.setattr(servicer, "_body", body)
    x = np.linspace(-2, 2, 1 << 13)  # 64 KiB of float64: parsed whole
    b = GraphBuilder()
    request = service_pb2.RunRequest(graph=codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", x.shape)))),
                                     inputs=[codec.encode_tensor(x)])
    assert blobs.BLOB_MIN_BYTES < request.ByteSize() <= blobs.WHOLE_MAX_BYTES
    served, networks = server.servicer.lane.served, len(server.servicer.registry)
    for _ in range(3):
        np.testing.assert_allclose(codec.decode_tree(stub.Run(request, timeout=30).outputs), np.sin(x), rtol=1e-12)
    assert server.servicer.lane.served == served + 2 and len(server.servicer.registry) == networks + 1
    run = [job for job in jobs if job.kind == "run"]
    assert len(run) == 1 and run[0].payload.places == [("inputs", 0)] and bytes(run[0].blobs[0]) == x.tobytes()
    sent = service_pb2.RunRequest.FromString(run[0].payload.body)
    assert not sent.HasField("graph") and sent.inputs[0].data == b""
    assert bodies == [run[0].payload.body]  # the requests the lane answered were not taken apart for a worker


def test_an_inline_graph_given_twice_is_served_small_whole_lifted_and_streamed_with_its_parameter_override(
    server: Server, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Grad request whose graph field is given twice (protobuf merges the two) with a parameter override, sent as
    bytes: small, parsed whole and lifted, on unary calls and on a stream, a worker gets it without the graph and every
    answer, the worker's and the lane's, is d/dx sum(sin(x) * w) = cos(x) * w with the override's w."""
    jobs = jobs_seen(server, monkeypatch)
    number = service_pb2.GradRequest.DESCRIPTOR.fields_by_name["graph"].number
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        grad = channel.unary_unary("/gradserve.v1.Gradient/Grad", request_serializer=None, response_deserializer=None)
        stream = channel.stream_stream("/gradserve.v1.Gradient/GradStream", request_serializer=None, response_deserializer=None)
        for n in (3, 1 << 12, 1 << 15):  # 48 B, 64 KiB (parsed whole) and 512 KiB (lifted) of float64 tensors
            x, w = np.linspace(-2, 2, n), np.linspace(0.5, 1.5, n)
            b = GraphBuilder(f"twice_{n}")
            product = b.op("Sin", b.input("x", "float64", x.shape)) * b.param("w", np.ones(n))
            full = codec.encode_graph(b.build(b.op("ReduceSum", product)))
            first, second = graph_in_two(full)
            rest = service_pb2.GradRequest(inputs=[codec.encode_tensor(x)], parameters={"w": codec.encode_tensor(w)})
            raw = b"".join(bytes([number << 3 | 2]) + blobs._varint(g.ByteSize()) + g.SerializeToString()
                           for g in (first, second)) + rest.SerializeToString()
            assert service_pb2.GradRequest.FromString(raw).graph == full
            jobs.clear()
            answers = [grad(raw, timeout=60) for _ in range(3)] + list(stream(iter([raw] * 3), timeout=60))
            for answer in map(service_pb2.GradResponse.FromString, answers):
                assert not answer.HasField("error"), answer.error
                np.testing.assert_allclose(codec.decode_tree(answer.gradients), np.cos(x) * w, rtol=1e-12)
            grads = [job for job in jobs if job.kind == "grad"]
            assert grads and all(not service_pb2.GradRequest.FromString(job.payload.body).HasField("graph") for job in grads)


def test_a_request_laid_out_as_one_the_lane_ran_is_answered_unparsed_with_its_ids_and_the_same_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the lane has run a request (its plan's Reading learned), a request whose bytes differ from it only in its
    tensors' data is recognized by its bytes and answered without protobuf parsing it: the same gradients and ids; one
    with another request id is parsed; and when its network is no longer registered it fails NOT_FOUND as a parsed one does."""
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_registered_networks=1))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        parsed: list[int] = []
        parse = blobs.parse

        def counted(raw: bytes, cls: Any) -> blobs.Lifted:
            parsed.append(len(raw))
            return parse(raw, cls)

        monkeypatch.setattr(blobs, "parse", counted)
        request = sin_request(stub, np.zeros((2, 3)))
        request.request_id = "first"
        for _ in range(2):  # a worker builds the plan, then the lane runs it and learns the request's layout
            stub.Grad(request, timeout=30)
        assert parsed and server.servicer.lane.served == 1
        parsed.clear()
        for k in range(3):
            x = np.linspace(-k, k + 1, 6).reshape(2, 3)
            request.inputs[0].CopyFrom(codec.encode_tensor(x))
            got = stub.Grad(request, timeout=30)
            np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x), rtol=1e-12)
            assert (got.request_id, got.network_id) == ("first", request.network_id)
        assert parsed == [] and server.servicer.lane.served == 4
        request.request_id = "second"
        assert stub.Grad(request, timeout=30).request_id == "second" and len(parsed) == 1
        other = GraphBuilder()
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(
            other.build(other.op("Cos", other.input("x", "float64", (2, 3)))))))  # evicts the first network
        failures = []
        for rid in ("first", "third"):
            request.request_id = rid
            failures.append(rejected(lambda: stub.Grad(request, timeout=30)))
        assert len(parsed) == 2  # "first" recognized, "third" parsed
        assert [f.code() for f in failures] == [grpc.StatusCode.NOT_FOUND] * 2
        assert failures[0].details() == failures[1].details() and "network_id" in failures[0].details()


def test_a_plan_back_in_the_lane_recognizes_only_the_layout_of_the_request_that_taught_it_again() -> None:
    """A plan dropped from the lane's cache and sent again learns its Reading anew, here from a request carrying its graph
    inline, as long as the request by id whose layout the lane remembers: requests laid out as the inline one are answered
    with their own request id, and their graph registered again once the registry dropped it, as parsed ones are."""
    x = np.linspace(-1.0, 1.5, 6).reshape(2, 3)
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, worker_cache_size=2, limits=Limits(max_registered_networks=1))
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        by_id = sin_request(stub, x)
        graph = server.servicer.registry.get(by_id.network_id)
        assert graph is not None
        inline = service_pb2.GradRequest(graph=graph_pb2.Graph.FromString(graph), inputs=[codec.encode_tensor(x)])
        by_id.request_id = "a"
        inline.request_id = "b" * (by_id.ByteSize() - inline.ByteSize() - 2)  # the two requests of one size (a key and a length byte)
        assert by_id.ByteSize() == inline.ByteSize()
        rid = inline.request_id
        for _ in range(2):  # a worker builds the plan, the lane runs it and remembers the request's layout
            stub.Grad(by_id, timeout=30)
        lane, key = server.servicer.lane, compute.plan_key("grad", by_id, by_id.network_id)
        assert lane.served == 1 and lane.plan(key) is not None
        for n in (1, 2, 3):  # other plans through the lane (a cache of two entries) drop this one
            other = sin_request(stub, np.ones(n))
            for _ in range(2):
                stub.Grad(other, timeout=30)
        assert lane.plan(key) is None
        for _ in range(3):  # to a worker, which sends the plan again; then the lane, which learns the inline layout
            got = stub.Grad(inline, timeout=30)
            assert (got.request_id, got.network_id) == (rid, by_id.network_id)
            np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x), rtol=1e-12)
        sin_request(stub, np.ones(4))  # evicts the network from the registry
        got = stub.Grad(inline, timeout=30)
        assert got.request_id == rid
        np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x), rtol=1e-12)


def test_long_request_ids_are_echoed_and_not_kept_after_their_calls() -> None:
    """The ids a response ends with are kept for the next request only when its request id is short: a caller's id may
    be as long as a message, and the last 256 of those would stay in memory after their calls."""
    x = np.linspace(-1.0, 1.5, 6).reshape(2, 3)
    config = ServerConfig(host="127.0.0.1", port=0, workers=1)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = sin_request(stub, x)
        kept = servicer._kept_ids.cache_info().currsize
        for k in range(3):  # a worker, then the lane learning the layout, then the layout recognized
            request.request_id = f"{k}" + "i" * (1 << 20)
            got = stub.Grad(request, timeout=30)
            assert got.request_id == request.request_id
            np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x), rtol=1e-12)
        request.request_id = "i" * (1 << 20)
        for _ in range(2):
            assert stub.Grad(request, timeout=30).request_id == request.request_id
        assert server.servicer.lane.served == 4
        assert servicer._kept_ids.cache_info().currsize == kept
        request.request_id = "short"
        assert stub.Grad(request, timeout=30).request_id == "short"
        assert servicer._kept_ids.cache_info().currsize in (kept + 1, servicer.TAILS_KEPT)


def test_a_failure_to_recognize_a_request_is_logged_and_the_request_parsed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Recognizing a request's bytes is only a shortcut, run in gRPC's request deserializer: should it fail (a bug), the
    request is parsed and answered, and the failure logged as an error, instead of gRPC's unlogged INTERNAL."""
    x = np.linspace(-1.0, 1.5, 6).reshape(2, 3)
    config = ServerConfig(host="127.0.0.1", port=0, workers=1)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        request = sin_request(stub, x)

        def broken(kind: str, raw: bytes) -> Any:
            raise ValueError("a bug")

        monkeypatch.setattr(server.servicer.lane, "recognize", broken)
        capsys.readouterr()
        for _ in range(3):
            got = stub.Grad(request, timeout=30)
            np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x), rtol=1e-12)
        logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"recognize_error"' in line]
        assert len(logged) == 3 and logged[0]["level"] == "error" and logged[0]["error"] == "ValueError: a bug"
        assert logged[0]["kind"] == "grad" and logged[0]["size"] == request.ByteSize()


def test_requests_of_a_remembered_size_that_differ_outside_their_data_are_answered_as_parsed(
    server: Server, stub: service_pb2_grpc.GradientStub,
) -> None:
    """The lane remembers a request layout by its size: a request of that size for another network (float32 where the
    layout's is float64), or with its dtype and shape changed, or its dtype written as a padded varint and its request id
    one byte shorter, is not taken for it: each gets its own network's answer in its own dtype and its own id, or its
    error, as when parsed; the layout still answers."""
    x64, x32 = np.linspace(-1.0, 1.0, 6).reshape(2, 3), np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(4, 3)
    first = sin_request(stub, x64)
    first.request_id = "ab"
    b = GraphBuilder()
    other = service_pb2.GradRequest(network_id=stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(
        b.build(b.op("Sin", b.input("x", "float32", (4, 3))))))).network_id, inputs=[codec.encode_tensor(x32)], request_id="ab")
    assert first.ByteSize() == other.ByteSize()
    for _ in range(2):  # a worker builds the plan, then the lane runs it and remembers the request's layout
        stub.Grad(first, timeout=30)
    lane = server.servicer.lane
    assert lane.recognize("grad", first.SerializeToString()) is not None
    for _ in range(2):  # a worker, then the lane
        got = codec.decode_tree(stub.Grad(other, timeout=30).gradients)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, np.cos(x32), rtol=1e-6)
    retyped = service_pb2.GradRequest(network_id=first.network_id, inputs=[graph_pb2.Tensor(
        dtype=graph_pb2.DATA_TYPE_FLOAT32, shape=[4, 3], data=x32.tobytes())], request_id="ab")
    assert retyped.ByteSize() == first.ByteSize()
    failed = rejected(lambda: stub.Grad(retyped, timeout=30))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.details() == "inputs[0]: 'x' is declared float64[2,3], got float32[4,3]"
    raw = first.SerializeToString()
    tensor = first.inputs[0].SerializeToString()  # one input, its length in one byte
    padded = raw.replace(b"\x22" + bytes([len(tensor)]) + tensor, b"\x22" + bytes([len(tensor) + 1]) + b"\x08\x84\x00" + tensor[2:])
    padded = padded.replace(b"\x42\x02ab", b"\x42\x01a")
    assert len(padded) == len(raw) and service_pb2.GradRequest.FromString(padded).request_id == "a"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        answer = service_pb2.GradResponse.FromString(channel.unary_unary("/gradserve.v1.Gradient/Grad")(padded, timeout=30))
    assert answer.request_id == "a"
    np.testing.assert_allclose(codec.decode_tree(answer.gradients), np.cos(x64), rtol=1e-12)
    served = lane.served
    got = stub.Grad(first, timeout=30)
    assert got.request_id == "ab" and lane.served == served + 1
    np.testing.assert_allclose(codec.decode_tree(got.gradients), np.cos(x64), rtol=1e-12)
