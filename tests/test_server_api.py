"""The v1 service over real loopback gRPC: the tutorial end to end, every GradOperation flag
combination against hand-derived gradients, registration reuse, streams, ListOps, ServerInfo."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serverkit import graph_in_two, request_counters

from gradserve.client.backend import GradFlags
from gradserve.client.remote import RemoteBackend
from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import demo, transport
from gradserve.server.app import Server, running
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grad_operation_tutorial.py"
RNG = np.random.default_rng(5)
X, Y, W = RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=3)
V = np.array(0.5)


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=2, limits=Limits(max_registered_networks=2))



def two_output_net() -> graph_pb2.Graph:
    """net(x, y) = (sin(x) * w, x * y + v) over float64 vectors, with parameters w and v."""
    b = GraphBuilder()
    x, y = b.input("x", "float64", (3,)), b.input("y", "float64", (3,))
    w, v = b.param("w", W), b.param("v", V)
    return codec.encode_graph(b.build((b.op("Sin", x) * w, x * y + v)))


def expected_grads(s1: np.ndarray, s2: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-derived: d/dx = cos(x) w s1 + y s2, d/dy = x s2, d/dw = sin(x) s1, d/dv = sum(s2)."""
    return {"x": np.cos(X) * W * s1 + Y * s2, "y": X * s2, "w": np.sin(X) * s1, "v": np.array(s2.sum())}


def flatten(tree: object) -> list[np.ndarray]:
    return [leaf for t in tree for leaf in flatten(t)] if isinstance(tree, tuple) else [tree]


def health_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_tutorial_through_the_server_prints_the_embedded_numbers_and_the_tutorials(server: Server) -> None:
    embedded = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True,
                              env={k: v for k, v in os.environ.items() if k != "GRADSERVE_TARGET"}).stdout
    remote = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True,
                            env=dict(os.environ, GRADSERVE_TARGET=f"127.0.0.1:{server.port}")).stdout
    assert remote == embedded
    rows = demo.compare(remote)
    assert len(rows) == len(demo.EXPECTED) and all(ok for *_, ok in rows), [r[0] for r in rows if not r[3]]


@pytest.mark.parametrize(
    "get_all,get_by_list,sens_param,bare_weight,return_forward",
    [c for c in itertools.product([False, True], repeat=5) if not (c[3] and not c[1])],
)
def test_every_flag_combination_matches_hand_derived_gradients(
    server: Server, stub: service_pb2_grpc.GradientStub, get_all: bool, get_by_list: bool, sens_param: bool,
    bare_weight: bool, return_forward: bool,
) -> None:
    for computed_by in ("worker", "server process"):  # the first call builds the plan in a worker, which finds it tiny
        served = server.servicer.lane.served
        check_flag_combination(stub, get_all, get_by_list, sens_param, bare_weight, return_forward)
        assert server.servicer.lane.served == served + (computed_by == "server process")


def check_flag_combination(stub: service_pb2_grpc.GradientStub, get_all: bool, get_by_list: bool, sens_param: bool,
                           bare_weight: bool, return_forward: bool) -> None:
    """One Grad call with these flags against hand-derived gradients (and forward outputs)."""
    weights = ["v"] if bare_weight else (["v", "w"] if get_by_list else [])
    s1, s2 = (RNG.normal(size=3), RNG.normal(size=3)) if sens_param else (np.ones(3), np.ones(3))
    req = service_pb2.GradRequest(
        graph=two_output_net(),
        grad=graph_pb2.GradOperation(get_all=get_all, get_by_list=get_by_list, sens_param=sens_param,
                                     weights=weights, bare_weight=bare_weight),
        inputs=[codec.encode_tensor(X), codec.encode_tensor(Y)],
        sens=[codec.encode_tensor(s1), codec.encode_tensor(s2)] if sens_param else [],
        return_forward=return_forward,
        request_id="r1",
    )
    resp = stub.Grad(req, timeout=30)
    got = codec.decode_tree(resp.gradients)
    e = expected_grads(s1, s2)
    wpart = e["v"] if bare_weight else tuple(e[w] for w in weights)
    want = ((e["x"], e["y"]), wpart) if get_all and get_by_list else (
        (e["x"], e["y"]) if get_all else (wpart if get_by_list else e["x"]))
    assert isinstance(got, tuple) == isinstance(want, tuple)
    for g, w in zip(flatten(got), flatten(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)
    assert resp.request_id == "r1" and resp.network_id.startswith("sha256:")
    if return_forward:
        f1, f2 = codec.decode_tree(resp.forward)
        np.testing.assert_allclose(f1, np.sin(X) * W, rtol=1e-12)
        np.testing.assert_allclose(f2, X * Y + V, rtol=1e-12)
    else:
        assert not resp.HasField("forward")


def test_large_tensors_cross_through_shared_memory_unchanged(stub: service_pb2_grpc.GradientStub) -> None:
    a = RNG.normal(size=(256, 512)).astype(np.float32)
    b = GraphBuilder()
    x = b.input("x", "float32", a.shape)
    req = service_pb2.GradRequest(graph=codec.encode_graph(b.build(b.op("Sin", x))), inputs=[codec.encode_tensor(a)],
                                  return_forward=True)
    resp = stub.Grad(req, timeout=30)
    np.testing.assert_array_equal(codec.decode_tree(resp.gradients), np.cos(a))
    np.testing.assert_array_equal(codec.decode_tree(resp.forward), np.sin(a))


def test_large_tensors_cross_through_the_pipe_when_shared_memory_has_no_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_shm_has_room", lambda size: False)
    a = RNG.normal(size=(256, 512)).astype(np.float32)
    b = GraphBuilder()
    x = b.input("x", "float32", a.shape)
    req = service_pb2.GradRequest(graph=codec.encode_graph(b.build(b.op("Sin", x))), inputs=[codec.encode_tensor(a)],
                                  return_forward=True)
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            resp = service_pb2_grpc.GradientStub(channel).Grad(req, timeout=30)
        assert server.pool._slots[0].inbox.shm is None and server.pool._slots[0].outbox.shm is None
    np.testing.assert_array_equal(codec.decode_tree(resp.gradients), np.cos(a))
    np.testing.assert_array_equal(codec.decode_tree(resp.forward), np.sin(a))


def test_run_returns_forward_outputs(stub: service_pb2_grpc.GradientStub) -> None:
    resp = stub.Run(service_pb2.RunRequest(graph=two_output_net(), inputs=[codec.encode_tensor(X), codec.encode_tensor(Y)]))
    f1, f2 = codec.decode_tree(resp.outputs)
    np.testing.assert_allclose(f1, np.sin(X) * W, rtol=1e-12)
    np.testing.assert_allclose(f2, X * Y + V, rtol=1e-12)


def test_registration_is_idempotent_and_reused_by_the_remote_backend(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    g = two_output_net()
    g.name = "registration_test"  # a network no other test has sent
    first = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=g))
    again = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=g))
    assert first.created and not again.created and first.network_id == again.network_id

    backend = RemoteBackend(f"127.0.0.1:{server.port}")
    b = GraphBuilder()
    x = b.input("x", "float64", (3,))
    w = b.param("w", W)
    graph = b.build(b.op("Sin", x * w))
    before = request_counters(stub)
    nid = backend.register(graph)
    params = {"w": graph.param("w").data}
    flags = GradFlags(get_by_list=True, weights=("w",))
    for _ in range(3):
        (dw,) = backend.grad(nid, flags, [X], params)
        np.testing.assert_allclose(dw, X * np.cos(X * W), rtol=1e-12)
    after = request_counters(stub)
    registered = after.get(("RegisterNetwork", "OK"), 0) - before.get(("RegisterNetwork", "OK"), 0)
    assert registered == 1, "the network is registered once; later calls send only inputs"
    assert after[("Grad", "OK")] - before.get(("Grad", "OK"), 0) == 3

    new_w = W * 2  # a changed parameter value travels with each call, not as a registration
    for _ in range(2):
        (dw,) = backend.grad(nid, flags, [X], {"w": new_w})
        np.testing.assert_allclose(dw, X * np.cos(X * new_w), rtol=1e-12)
    assert request_counters(stub)[("RegisterNetwork", "OK")] - after[("RegisterNetwork", "OK")] == 0
    backend.close()


def test_remote_backend_registers_again_when_the_server_forgot_the_network(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    backend = RemoteBackend(f"127.0.0.1:{server.port}")
    b = GraphBuilder()
    x = b.input("x", "float64", (3,))
    graph = b.build(b.op("Exp", x))
    nid = backend.register(graph)
    for k in range(3):  # the server keeps 2 networks: these evict ours
        other = GraphBuilder()
        g = other.build(other.op("Neg", other.input("z", "float64", (k + 1,))))
        stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(g)))
    np.testing.assert_allclose(backend.grad(nid, GradFlags(), [X], {}), np.exp(X), rtol=1e-12)
    np.testing.assert_allclose(backend.run(nid, [X], {}), np.exp(X), rtol=1e-12)
    backend.close()


def test_grad_stream_answers_each_request_by_id_and_keeps_going_after_an_error(stub: service_pb2_grpc.GradientStub) -> None:
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=two_output_net())).network_id
    xs = [RNG.normal(size=3) for _ in range(6)]
    reqs = [service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(x), codec.encode_tensor(Y)], request_id=str(i))
            for i, x in enumerate(xs)]
    reqs.insert(3, service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(X)], request_id="bad"))
    answers = {r.request_id: r for r in stub.GradStream(iter(reqs), timeout=30)}
    assert set(answers) == {str(i) for i in range(6)} | {"bad"}
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "inputs" in answers["bad"].error.message
    for i, x in enumerate(xs):
        np.testing.assert_allclose(codec.decode_tree(answers[str(i)].gradients), np.cos(x) * W + Y, rtol=1e-12)


def test_list_ops_describes_the_op_table(stub: service_pb2_grpc.GradientStub) -> None:
    ops = {o.name: o for o in stub.ListOps(service_pb2.ListOpsRequest()).ops}
    assert ops["Sin"].differentiable and list(ops["Sin"].inputs) == ["x"]
    mm = {a.name: a for a in ops["MatMul"].attrs}
    assert mm["transpose_a"].kind == service_pb2.ATTR_KIND_BOOL and not mm["transpose_a"].required
    assert list(ops) == sorted(ops)


def test_server_info_reports_versions_limits_workers_and_counters(server: Server, stub: service_pb2_grpc.GradientStub) -> None:
    info = stub.ServerInfo(service_pb2.ServerInfoRequest())
    assert info.api_version == "gradserve.v1" and info.worker_count == 2
    assert info.component_versions["numpy"] == np.__version__ and info.component_versions["grpcio"] == grpc.__version__
    assert info.limits.max_message_bytes >= 256 * 2**20 and info.limits.max_registered_networks == 2
    assert info.limits.max_open_streams == Limits().max_open_streams == 16
    assert graph_pb2.DATA_TYPE_FLOAT32 in info.supported_dtypes
    assert request_counters(stub)[("ServerInfo", "OK")] >= 1


def test_health_and_reflection_answer(server: Server) -> None:
    assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"gradserve.v1.Gradient", "grpc.health.v1.Health"} <= names


def test_a_network_registers_from_its_received_bytes_also_when_protobuf_merges_them(server: Server) -> None:
    """The servicer hands on the graph's bytes as received; a graph field given twice (which protobuf merges)
    is serialized again, so both register the network protobuf parsed, under the codec's id."""
    full = two_output_net()
    expected = codec.network_id(codec.decode_graph(full))
    first, second = graph_in_two(full)
    merged = (service_pb2.RegisterNetworkRequest(graph=first).SerializeToString()
              + service_pb2.RegisterNetworkRequest(graph=second).SerializeToString())
    assert service_pb2.RegisterNetworkRequest.FromString(merged).graph == full
    method = "/gradserve.v1.Gradient/RegisterNetwork"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        send = channel.unary_unary(method, request_serializer=lambda raw: raw,
                                   response_deserializer=service_pb2.RegisterNetworkResponse.FromString)
        assert send(merged, timeout=30).network_id == expected
        assert send(service_pb2.RegisterNetworkRequest(graph=full).SerializeToString(), timeout=30).network_id == expected
        stub = service_pb2_grpc.GradientStub(channel)
        resp = stub.Run(service_pb2.RunRequest(network_id=expected, inputs=[codec.encode_tensor(X), codec.encode_tensor(Y)]),
                        timeout=30)
    out = [np.asarray(a) for a in flatten(codec.decode_tree(resp.outputs))]
    np.testing.assert_allclose(out[0], np.sin(X) * W, rtol=1e-12)
    np.testing.assert_allclose(out[1], X * Y + V, rtol=1e-12)
