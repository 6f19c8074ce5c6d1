"""The local lane: a plan a worker found tiny runs in the server process from its second request on,
with the workers' answers and errors; large plans, large requests and a disabled lane use workers."""
from __future__ import annotations

import os
import signal
from typing import Iterator

import grpc
import numpy as np
import pytest

from gradserve import codec
from gradserve.engine import GraphBuilder
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

from serverkit import rejected

YS = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=1)


@pytest.fixture()
def stub(server: Server) -> Iterator[service_pb2_grpc.GradientStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield service_pb2_grpc.GradientStub(channel)


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


def test_plan_over_many_elements_always_runs_in_a_worker(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    x = np.linspace(-3, 3, server.config.local_max_elements)  # Sin and its gradient touch 4x as many
    request = sin_request(stub, x)
    served = server.servicer.lane.served
    for _ in range(3):
        np.testing.assert_allclose(codec.decode_tree(stub.Grad(request, timeout=30).gradients), np.cos(x), rtol=1e-12)
    assert server.servicer.lane.served == served


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
            assert server.servicer.lane.served == 0
