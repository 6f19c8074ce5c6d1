"""Regressions: a request whose answer must not change once a plan exists (Plan.take counts inputs and
sensitivities apart), and results the response Template must learn whatever the codec's default
limits (Template.of reads result types, it does not decode them). Each test runs on a server with
the local lane and on one without it."""
from __future__ import annotations

from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

LANE = {"lane": {}, "workers only": {"local_max_elements": 0}}


def t(a: Any) -> Any:
    return codec.encode_tensor(np.asarray(a))


def outcome(call: Any) -> Any:
    try:
        return call()
    except grpc.RpcError as e:
        return (e.code(), e.details())


@pytest.fixture(scope="module", params=list(LANE))
def stub(request: pytest.FixtureRequest) -> Iterator[service_pb2_grpc.GradientStub]:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_tensor_rank=40), **LANE[request.param])
    with running(config) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield service_pb2_grpc.GradientStub(channel)


def register(stub: service_pb2_grpc.GradientStub, graph: Any) -> str:
    return stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(graph)), timeout=30).network_id


def test_sens_given_as_an_extra_input_is_refused_before_and_after_the_plan_exists(stub: service_pb2_grpc.GradientStub) -> None:
    """Plan.take counts inputs and sens together, so once a sens_param plan exists a request with the
    sensitivity among its inputs (or an input among its sens) is computed instead of refused."""
    b = GraphBuilder()
    nid = register(stub, b.build(b.op("Sin", b.input("x", "float64", (2,)))))
    xs, s = np.array([0.1, 0.2]), np.array([2.0, 3.0])
    grad = codec.encode_grad_operation(sens_param=True)
    good = service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(xs)], sens=[t(s)])
    bad = [service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(xs), t(s)]),
           service_pb2.GradRequest(network_id=nid, grad=grad, sens=[t(xs), t(s)])]
    before = [outcome(lambda: stub.Grad(r, timeout=30)) for r in bad]
    assert all(isinstance(o, tuple) and o[0] == grpc.StatusCode.INVALID_ARGUMENT for o in before), before
    for _ in range(2):
        np.testing.assert_allclose(codec.decode_tree(stub.Grad(good, timeout=30).gradients), np.cos(xs) * s)
    after = [outcome(lambda: stub.Grad(r, timeout=30)) for r in bad]
    assert after == before


def test_zero_size_result_with_a_dimension_over_the_codec_default_element_limit(stub: service_pb2_grpc.GradientStub) -> None:
    """The server allows 2**28 elements (counting a 0 dimension as 1); Template.of decodes the first
    response with codec.DEFAULT_LIMITS (2**26) and fails the request with RESOURCE_EXHAUSTED."""
    shape = (0, 100_000_000)
    b = GraphBuilder()
    nid = register(stub, b.build(b.op("Sin", b.input("x", "float32", shape))))
    for _ in range(2):
        r = outcome(lambda: stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(np.zeros(shape, np.float32))]), timeout=30))
        assert isinstance(r, service_pb2.RunResponse), r
        assert tuple(r.outputs.tensor.shape) == shape


def test_result_of_a_rank_the_server_allows_but_the_codec_default_does_not(stub: service_pb2_grpc.GradientStub) -> None:
    """With max_tensor_rank=40, a rank-33 input is accepted but its rank-33 result fails in Template.of."""
    shape = (1,) * 33
    b = GraphBuilder()
    x = b.input("x", "float32", shape)
    nid = register(stub, b.build(b.op("Sin", x)))
    xs = np.full(shape, 0.5, np.float32)
    for _ in range(2):
        r = outcome(lambda: stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(xs)]), timeout=30))
        assert isinstance(r, service_pb2.RunResponse), r
        np.testing.assert_allclose(codec.decode_tree(r.outputs, codec.Limits(max_tensor_rank=40)), np.sin(xs), rtol=1e-6)
