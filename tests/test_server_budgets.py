"""Memory budgets in bytes, checked before allocation: the registry, each worker's cache, the bytes of
queued requests, one request's peak live tensor bytes and its FLOPs. Each reproducer is refused with
RESOURCE_EXHAUSTED naming the limit and the amount, and the server keeps SERVING with the same workers."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverkit import long_run, rejected, wait_until

from gradserve.engine import GraphBuilder, compile_graph, grad_operation
from gradserve.engine.ir import DERIVED_KEPT
from gradserve.proto import codec
from gradserve.server.app import SPARE_THREADS, Server, running
from gradserve.server.blobs import WHOLE_MAX_BYTES
from gradserve.server.cache import Cache
from gradserve.server.config import Limits, ServerConfig
from gradserve.server.servicer import DIGESTS_PER_NETWORK, Registry
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

MiB = 1 << 20
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def config(workers: int = 1, **limits: int) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, workers=workers, limits=Limits(**limits))


@pytest.fixture()
def connect() -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def stub(server: Server) -> service_pb2_grpc.GradientStub:
        channels.append(grpc.insecure_channel(f"127.0.0.1:{server.port}", options=UNLIMITED))
        return service_pb2_grpc.GradientStub(channels[-1])

    yield stub
    for ch in channels:
        ch.close()


def serving(server: Server) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="gradserve.v1.Gradient"), timeout=10).status
    return status == health_pb2.HealthCheckResponse.SERVING


def vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def param_net(n: int, seed: float) -> graph_pb2.Graph:
    """sum(x * w) with a float64 parameter w of n elements, all equal to ``seed`` (so each seed is another network)."""
    b = GraphBuilder()
    w = b.param("w", np.full(n, seed))
    return codec.encode_graph(b.build(b.op("ReduceSum", b.op("Mul", b.input("x", "float64", (n,)), w))))


def t(a: np.ndarray) -> graph_pb2.Tensor:
    return codec.encode_tensor(a)





# ---- the Cache class of the workers, the local lane and the registry ----

def test_cache_evicts_least_recently_used_by_bytes_and_keeps_the_newest() -> None:
    c = Cache(size=10, max_bytes=100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1  # a is now the most recently used
    assert c.put("c", 3, 40) == ["b"]  # 120 > 100: b goes
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and c.nbytes == 80
    assert c.put("big", 4, 500) == ["a", "c"]  # larger than the budget: kept alone, being the one in use
    assert len(c) == 1 and c.get("big") == 4 and c.nbytes == 500
    c.put("d", 5, 10)
    assert "big" not in c and c.nbytes == 10
    c.put("d", 6, 30)  # replacing an entry replaces its bytes
    assert c.get("d") == 6 and c.nbytes == 30
    counted = Cache(size=2)
    for k in "xyz":
        counted.put(k, k)
    assert "x" not in counted and len(counted) == 2


# ---- the registry ----

def test_registry_holds_networks_within_its_byte_budget(connect: object) -> None:
    n = 1 << 17  # a 1 MiB parameter per network
    budget = 3 * MiB + 4096
    with running(config(max_registry_bytes=budget)) as server:
        stub = connect(server)  # type: ignore[operator]
        pids = server.pool.pids()
        ids = [stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=param_net(n, float(k))), timeout=60).network_id
               for k in range(8)]
        registry = server.servicer.registry
        assert len(registry) == 3 and registry.nbytes <= budget
        for k in (5, 6, 7):  # the most recent three answer by id, with their own parameter
            r = stub.Run(service_pb2.RunRequest(network_id=ids[k], inputs=[t(np.ones(n))]), timeout=60)
            assert codec.decode_tree(r.outputs) == pytest.approx(n * float(k))
        err = rejected(lambda: stub.Run(service_pb2.RunRequest(network_id=ids[0], inputs=[t(np.ones(n))]), timeout=60))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert server.pool.pids() == pids and server.pool.replaced == 0 and serving(server)


def test_a_network_larger_than_the_registry_is_refused_naming_limit_and_size(connect: object) -> None:
    budget = 1 * MiB
    with running(config(max_registry_bytes=budget)) as server:
        stub = connect(server)  # type: ignore[operator]
        pids = server.pool.pids()
        graph = param_net(1 << 18, 1.0)  # 2 MiB of parameter
        size = graph.ByteSize()
        for call in (lambda: stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph), timeout=60),
                     lambda: stub.Run(service_pb2.RunRequest(graph=graph, inputs=[t(np.ones(1 << 18))]), timeout=60)):
            err = rejected(call)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"the network is {size} bytes serialized, over the max_registry_bytes limit of {budget}" in err.details()
        assert len(server.servicer.registry) == 0
        assert server.pool.pids() == pids and server.pool.replaced == 0 and serving(server)


def test_the_registry_keeps_a_few_digests_per_network_however_often_it_is_registered_in_other_bytes() -> None:
    """The same network serialized otherwise (an unknown field, another field order) has another digest: the registry
    kept every one for as long as the network stayed registered, so registering one network over and over in new bytes
    grew the server without bound. It keeps the latest DIGESTS_PER_NETWORK, and none of a network it evicts."""
    registry = Registry(capacity=2, max_bytes=0)
    for k in range(100):
        registry.put(f"digest {k}", "net a", b"a")
    assert len(registry) == 1 and len(registry._ids) == DIGESTS_PER_NETWORK
    assert [registry.lookup(f"digest {k}") for k in (95, 96, 97, 98, 99)] == [None] + ["net a"] * 4
    assert not registry.put("digest 99", "net a", b"a")  # registered again from bytes it knows: no new digest
    assert len(registry._ids) == DIGESTS_PER_NETWORK
    registry.put("digest b", "net b", b"b")
    registry.put("digest c", "net c", b"c")  # evicts net a, and its digests with it
    assert registry.lookup("digest 99") is None and set(registry._ids) == {"digest b", "digest c"}


# ---- each worker's cache ----

def test_networks_beyond_the_worker_cache_are_sent_again_and_answers_stay_right(connect: object) -> None:
    n = 1 << 17
    with running(config(max_worker_cache_bytes=2 * MiB)) as server:
        stub = connect(server)  # type: ignore[operator]
        ids = [stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=param_net(n, float(k))), timeout=60).network_id
               for k in range(4)]
        x = np.linspace(0, 1, n)
        for _ in range(2):  # round robin over 4 networks: each evicts another from the worker's cache
            for k, nid in enumerate(ids):
                r = stub.Grad(service_pb2.GradRequest(network_id=nid, inputs=[t(x)]), timeout=60)
                np.testing.assert_array_equal(codec.decode_tree(r.gradients), np.full(n, float(k)))
        assert server.pool.replaced == 0


# ---- queued request bytes ----

def test_request_bytes_over_the_queue_budget_are_refused_at_once(connect: object) -> None:
    n = 1 << 18  # 2 MiB of float64 per request
    budget = 3 * MiB
    with running(config(max_queued_bytes=budget, max_queue_depth=8, stop_grace_ms=600_000)) as server:  # stopped, never replaced
        stub = connect(server)  # type: ignore[operator]
        pids = server.pool.pids()
        nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=param_net(n, 2.0)), timeout=60).network_id
        busy = stub.Run.future(long_run(stub), timeout=600)
        wait_until(lambda: bool(server.pool.busy_pids()), "the worker to be busy")
        request = service_pb2.GradRequest(network_id=nid, inputs=[t(np.ones(n))])
        size = request.ByteSize()
        queued = stub.Grad.future(request, timeout=120)
        wait_until(lambda: server.pool.queued == 1, "the first large request to wait for the worker")
        err = rejected(lambda: stub.Grad(request, timeout=60))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        counted, held = map(int, re.match(r"this request is (\d+) bytes and the requests waiting or being computed hold (\d+), "
                                          r"together over the max_queued_bytes limit of (\d+)", err.details()).groups()[:2])
        assert size - 64 <= counted <= size  # its data and the rest of the message, as the server holds them
        assert held >= counted and counted + held > budget  # the waiting request's bytes, and the busy one's
        assert f"over the max_queued_bytes limit of {budget}" in err.details()
        busy.cancel()
        np.testing.assert_array_equal(codec.decode_tree(queued.result().gradients), np.full(n, 2.0))
        wait_until(lambda: server.servicer._held == 0, "every request's bytes to be released")
        assert server.pool.pids() == pids and server.pool.replaced == 0 and serving(server)


def test_one_request_larger_than_the_queue_budget_is_refused_even_when_idle(connect: object) -> None:
    budget = 1 * MiB
    with running(config(max_queued_bytes=budget)) as server:
        stub = connect(server)  # type: ignore[operator]
        b = GraphBuilder()
        g = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", (1 << 18,)))))
        request = service_pb2.RunRequest(graph=g, inputs=[t(np.ones(1 << 18))])
        err = rejected(lambda: stub.Run(request, timeout=60))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        counted = int(re.match(r"this request is (\d+) bytes and the requests waiting or being computed hold 0, together over "
                               rf"the max_queued_bytes limit of {budget}", err.details()).group(1))
        assert request.ByteSize() - 64 <= counted <= request.ByteSize()
        assert len(server.servicer.registry) == 0  # refused before its graph went to a worker


# ---- one request's peak bytes and FLOPs, refused after compiling and before running ----

@pytest.fixture(scope="module")
def default_server() -> Iterator[Server]:
    """A server with the default limits and one worker."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as s:
        yield s


def keep_alive_graph() -> object:
    """BroadcastTo of a float64 scalar to 2**28, then Sin, Cos and Exp of it, all alive until summed."""
    b = GraphBuilder()
    big = b.op("BroadcastTo", b.input("x", "float64", ()), shape=[1 << 28])
    s, c, e = b.op("Sin", big), b.op("Cos", big), b.op("Exp", big)
    return b.build(b.op("ReduceSum", b.op("Add", b.op("Add", s, c), e)))


def test_peak_bytes_reproducer_is_refused_before_running(default_server: Server) -> None:
    graph = keep_alive_graph()
    request = service_pb2.RunRequest(graph=codec.encode_graph(graph), inputs=[t(np.array(0.5))])
    assert request.ByteSize() < 512  # a tiny request (182 bytes in the encoding)
    wpid = default_server.pool.pids()[0]
    before = vm_hwm_kb(wpid)
    with grpc.insecure_channel(f"127.0.0.1:{default_server.port}") as ch:
        err = rejected(lambda: service_pb2_grpc.GradientStub(ch).Run(request, timeout=60))
    peak = compile_graph(graph).peak_bytes
    assert peak >= 3 * (8 << 28)  # Sin, Cos and Exp of 2**28 float64 are alive at once
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith(f"running this request would hold {peak} bytes of tensors at once, over the "
                                    f"max_request_peak_bytes limit of {Limits().max_request_peak_bytes}; nothing was computed")
    assert vm_hwm_kb(wpid) - before < 64 * 1024  # far from the gigabytes the run would take
    assert default_server.pool.pids() == [wpid] and default_server.pool.replaced == 0 and serving(default_server)


def test_flops_reproducer_is_refused_before_running(default_server: Server) -> None:
    b = GraphBuilder()
    m = b.op("BroadcastTo", b.input("x", "float32", ()), shape=[8192, 8192])
    graph = b.build(b.op("MatMul", m, m))
    request = service_pb2.RunRequest(graph=codec.encode_graph(graph), inputs=[t(np.array(0.5, np.float32))])
    assert request.ByteSize() < 512  # a tiny request (127 bytes in the encoding)
    wpid = default_server.pool.pids()[0]
    with grpc.insecure_channel(f"127.0.0.1:{default_server.port}") as ch:
        err = rejected(lambda: service_pb2_grpc.GradientStub(ch).Run(request, timeout=600))
    flops = compile_graph(graph).flops
    assert flops >= 2 * 8192**3  # a multiply and an add per term of each of the 8192 x 8192 dot products
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith(f"running this request would cost {flops} floating-point operations, over the "
                                    f"max_request_flops limit of {Limits().max_request_flops}; nothing was computed")
    assert default_server.pool.pids() == [wpid] and default_server.pool.replaced == 0 and serving(default_server)


def test_requests_within_the_limits_still_compute(default_server: Server) -> None:
    b = GraphBuilder()
    x = b.input("x", "float64", (64, 64))
    graph = codec.encode_graph(b.build(b.op("ReduceSum", b.op("MatMul", x, x))))
    a = np.random.default_rng(0).standard_normal((64, 64))
    with grpc.insecure_channel(f"127.0.0.1:{default_server.port}") as ch:
        r = service_pb2_grpc.GradientStub(ch).Grad(service_pb2.GradRequest(graph=graph, inputs=[t(a)]), timeout=60)
    ones = np.ones((64, 64))
    np.testing.assert_allclose(codec.decode_tree(r.gradients), ones @ a.T + a.T @ ones, rtol=1e-12)


def test_server_info_reports_every_budget(default_server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{default_server.port}") as ch:
        limits = service_pb2_grpc.GradientStub(ch).ServerInfo(service_pb2.ServerInfoRequest(), timeout=30).limits
    want = Limits()
    for name in ("max_queued_bytes", "max_registry_bytes", "max_worker_cache_bytes", "max_request_peak_bytes",
                 "max_request_flops", "stop_grace_ms"):
        assert getattr(limits, name) == getattr(want, name) > 0, name


# ---- the stated total ----

def test_the_documented_memory_total_follows_from_the_default_budgets() -> None:
    root = Path(__file__).resolve().parent.parent
    d = Limits()
    slots = max(1, d.max_receive_bytes // d.max_message_bytes)
    threads = 2 + d.max_queue_depth + d.max_open_streams + SPARE_THREADS  # gRPC's threads with 2 workers
    stream_slots = max(1, d.max_stream_receive_bytes // d.max_message_bytes)
    windows = 4 * MiB * (2 * d.max_receive_waiting + d.max_open_streams)  # calls waiting in either round, open streams
    receiving = (2 * d.max_message_bytes * (slots + 1) + 2 * d.max_message_bytes * stream_slots + windows
                 + d.max_queued_bytes + WHOLE_MAX_BYTES * threads)  # protobuf's copy of a request parsed whole
    fixed = -(-(256 * MiB + d.max_registry_bytes + receiving + d.max_worker_cache_bytes + 16 * MiB) // MiB) * MiB
    per_worker = d.max_worker_cache_bytes + d.max_request_peak_bytes + 2 * d.max_message_bytes + 2 * d.max_message_bytes
    readme = (root / "deploy" / "kubernetes" / "README.md").read_text()
    assert f"**{fixed // MiB} MiB + W × {per_worker // MiB} MiB**" in readme
    deployment = yaml.safe_load((root / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    memory = container["resources"]["limits"]["memory"]
    assert memory.endswith("Gi") and int(memory[:-2]) * 1024 * MiB >= fixed + 2 * per_worker  # its 2 workers


def test_gradients_for_ever_new_lists_of_weights_keep_a_bounded_number_of_graphs_on_the_network() -> None:
    """Each list of weights a Grad names (any order, repeats allowed) makes another gradient graph of the network, which the
    engine kept on the network (``Graph.derived``) for as long as a worker held it: a caller naming new lists grew the worker
    without bound. The network keeps the latest DERIVED_KEPT, and the answers stay those of the closed form."""
    b = GraphBuilder()
    x = b.input("x", "float64", (3,))
    names = [f"w{i}" for i in range(4)]
    out = b.op("ReduceSum", x * b.param(names[0], np.full(3, 1.0)) * b.param(names[1], np.full(3, 2.0))
               + x * b.param(names[2], np.full(3, 3.0)) * b.param(names[3], np.full(3, 4.0)))
    network = b.build(out)
    for k in range(3 * DERIVED_KEPT):
        weights = [names[int(d)] for d in np.base_repr(k + 4, 4)]  # a new list each time
        got = grad_operation(network, get_by_list=True, weights=weights)
        assert len(network.derived) <= DERIVED_KEPT
        values = {"w0": 2.0 * np.arange(3), "w1": 1.0 * np.arange(3), "w2": 4.0 * np.arange(3), "w3": 3.0 * np.arange(3)}
        result = compile_graph(got)(np.arange(3.0))
        for w, g in zip(weights, result):
            np.testing.assert_allclose(g, values[w])
    assert len(network.derived) == DERIVED_KEPT
    assert grad_operation(network, get_by_list=True, weights=names[:1]) is grad_operation(network, get_by_list=True, weights=names[:1])
