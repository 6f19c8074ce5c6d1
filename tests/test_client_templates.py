"""The remote backend's templated unary calls at their edges: each request it writes is byte for byte protobuf's
deterministic serialization of the call, built here independently, as the network id, flags, overrides (their names,
dtypes and shapes) and inputs change from call to call; and against a real server (port 0, always stopped), calls from
several threads, a server's error and changing overrides give what the embedded engine gives, read as full parsing reads."""
from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Iterator

import grpc
import numpy as np
import pytest

from gradserve.client import context, remote
from gradserve.client.backend import Call, GradFlags
from gradserve.client.embedded import EmbeddedBackend
from gradserve.client.remote import RemoteBackend
from gradserve.engine import EngineError, Graph, GraphBuilder, flatten
from gradserve.proto import codec
from gradserve.server.app import Server
from gradserve.v1 import service_pb2


def protobufs(flags: GradFlags | None, network_id: str, inputs: list[np.ndarray], params: dict[str, np.ndarray],
              n: int) -> bytes:
    """The request of a call as protobuf serializes it deterministically (``n`` of ``inputs`` the network's, the rest sens)."""
    if flags is None:
        run = service_pb2.RunRequest(network_id=network_id, inputs=[codec.encode_tensor(a) for a in inputs],
                                     parameters={k: codec.encode_tensor(a) for k, a in params.items()})
        return run.SerializeToString(deterministic=True)
    grad = service_pb2.GradRequest(
        network_id=network_id, grad=codec.encode_grad_operation(flags.get_all, flags.get_by_list, flags.sens_param, flags.weights),
        inputs=[codec.encode_tensor(a) for a in inputs[:n]], sens=[codec.encode_tensor(a) for a in inputs[n:]],
        parameters={k: codec.encode_tensor(a) for k, a in params.items()})
    return grad.SerializeToString(deterministic=True)


REGISTERED: dict[str, np.ndarray] = {"w": np.ones(3, np.float32), "b": np.zeros((), np.float64), "m": np.zeros((0, 2), np.float32)}


@pytest.fixture()
def offline() -> Iterator[RemoteBackend]:
    """A remote backend that knows a network (two inputs) without having reached a server; closed afterwards."""
    backend = RemoteBackend("127.0.0.1:1")
    backend._networks["local"] = remote._Network(2, codec.encode_graph(GraphBuilder().build(())), dict(REGISTERED))
    yield backend
    backend.close()


def steps() -> list[tuple[str, GradFlags | None, list[np.ndarray], dict[str, np.ndarray]]]:
    """Calls of near-identical layouts, each differing from the one before in one thing."""
    x, k = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 0, 1], np.bool_)
    flags = GradFlags(get_by_list=True, weights=("w", "b"))
    sens = GradFlags(get_all=True, sens_param=True)
    w2, b2 = REGISTERED["w"] + 1, np.array(2.5)
    return [
        ("n" * 64, flags, [x, k], {"w": w2}),
        ("n" * 64, flags, [x + 1, ~k], {"w": w2 * 3}),  # new data only: joined
        ("n" * 63, flags, [x, k], {"w": w2}),  # a shorter network id
        ("", flags, [x, k], {"w": w2}),  # an empty one (still written: a oneof member)
        ("n" * 64, flags, [x, k], {"w": w2, "b": b2}),  # one override more
        ("n" * 64, flags, [x, k], {"b": b2}),  # another override instead
        ("n" * 64, flags, [x, k], {"w": w2.astype(np.float64)}),  # an override of another dtype (set_data)
        ("n" * 64, flags, [x, k], {"w": np.ones(200, np.float32)}),  # of another shape, its length two bytes wide
        ("n" * 64, flags, [x, k], {"m": np.zeros((0, 2), np.float32) + 0, "w": w2}),  # a zero-size override
        ("n" * 64, flags, [x.astype(np.float16), k], {"w": w2}),  # an input of another dtype
        ("n" * 64, flags, [x[:, ::2].T.copy().T, k[:0]], {"w": w2}),  # strided and zero-size inputs
        ("n" * 64, flags, [x, k], {"w": w2.astype(">f4")}),  # a big-endian override
        ("n" * 64, sens, [x, k, np.array(0.0)], {"w": w2}),  # sens, 0-d and zero
        ("n" * 64, GradFlags(), [x, k], {}),  # default flags, no overrides: a GradOperation of no fields
        ("n" * 64, None, [x, k], {"w": w2}),  # a Run
        ("n" * 64, None, [x, k], {}),
        ("n" * 64, flags, [x, k], {"w": w2}),  # the first layout again
    ]


def test_each_request_is_protobufs_deterministic_serialization_as_the_layout_changes_call_by_call(
        offline: RemoteBackend) -> None:
    net = offline._networks["local"]
    for network_id, flags, inputs, params in steps() * 2:
        method = "Run" if flags is None else "Grad"
        call = Call("local", flags, inputs, params)
        overrides = net.overrides(params)
        for again in range(2):
            templates = dict(net.templates)
            raw = offline._request(net, method, call, overrides, network_id=network_id)
            assert raw == protobufs(flags, network_id, inputs, overrides, 2), (network_id, flags, params)
            assert type(raw) is bytes
            if again and not any(a.dtype.byteorder == ">" for a in overrides.values()):
                assert all(net.templates[key] is t for key, t in templates.items()), "the same layout again is joined"


def test_a_joined_request_does_not_change_with_the_arrays_it_was_joined_from(offline: RemoteBackend) -> None:
    net = offline._networks["local"]
    flags = GradFlags(get_by_list=True, weights=("w",))
    x, k, w = np.ones((2, 3), np.float32), np.ones(3, np.bool_), np.full(3, 2, np.float32)
    for _ in range(2):
        raw = offline._request(net, "Grad", Call("local", flags, [x, k], {"w": w}), net.overrides({"w": w}), network_id="n")
    want = protobufs(flags, "n", [x, k], {"w": w}, 2)
    x += 1
    w += 1
    assert raw == want


def test_threads_writing_requests_of_several_layouts_each_get_their_own(offline: RemoteBackend) -> None:
    net = offline._networks["local"]
    cases = steps()
    bad: list[Any] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            network_id, flags, inputs, params = cases[int(rng.integers(len(cases)))]
            with offline._lock:
                overrides = net.overrides(params)
            raw = offline._request(net, "Run" if flags is None else "Grad", Call("local", flags, inputs, params), overrides,
                                   network_id=network_id)
            if raw != protobufs(flags, network_id, inputs, overrides, 2):
                bad.append((network_id, flags, params))

    with futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert not bad


def affine() -> Graph:
    """sum(x @ w + b) * s over float32 x[2, 3], w[3, 4], b[4] and float64 s (a scalar parameter)."""
    b = GraphBuilder()
    y = b.op("MatMul", b.input("x", "float32", (2, 3)), b.param("w", np.arange(12, dtype=np.float32).reshape(3, 4) / 10))
    y = b.op("Cast", b.op("ReduceSum", y + b.param("b", np.zeros(4, np.float32))), dtype="float64") * b.param("s", np.array(1.5))
    return b.build((y, b.op("ReduceSum", b.input("k", "int32", (0,)))))


class Responses(grpc.UnaryUnaryClientInterceptor):
    """Keeps the response bytes of every Grad and Run call, by method."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        method = details.method.rpartition("/")[2]
        if method in ("Grad", "Run") and outcome.exception() is None:
            with self.lock:
                self.seen.append((method, outcome.result()))
        return outcome


def test_threads_calling_a_server_get_the_engines_results_read_as_parsed_through_errors_and_changing_overrides(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    responses = Responses()
    monkeypatch.setattr(remote, "open_channel", lambda target, options: grpc.intercept_channel(
        context.open_channel(target, options), responses))
    graph = affine()
    embedded, backend = EmbeddedBackend(), RemoteBackend(f"127.0.0.1:{server.port}")
    registered = {p.name: p.data for p in graph.params}
    bad: list[Any] = []
    try:
        nid, eid = backend.register(graph), embedded.register(graph)
        k = np.zeros(0, np.int32)

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for step in range(12):
                params = dict(registered)
                for name in rng.permutation(sorted(registered))[: int(rng.integers(0, 4))]:
                    params[name] = np.asarray(registered[name] + rng.standard_normal(registered[name].shape), registered[name].dtype)
                x = rng.standard_normal((2, 3)).astype(np.float32)
                flags = [GradFlags(get_all=True, get_by_list=True, weights=("w", "b", "s")), GradFlags(), None][step % 3]
                got = backend.run(nid, [x, k], params) if flags is None else backend.grad(nid, flags, [x, k], params)
                want = embedded.run(eid, [x, k], params) if flags is None else embedded.grad(eid, flags, [x, k], params)
                for g, w in zip(flatten(got), flatten(want), strict=True):
                    if g.dtype != w.dtype or g.shape != w.shape or not np.allclose(g, w, rtol=1e-5) or g.flags.writeable:
                        bad.append((seed, step))
                if step == 5:
                    with pytest.raises(EngineError, match="inputs"):
                        backend.grad(nid, flags or GradFlags(), [x[:1], k], params)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad
        net = backend._networks[nid]
        assert net.readers and all(r.layout is not None for r in net.readers.values())
    finally:
        backend.close()
    assert len(responses.seen) == 3 * 12
    for method, raw in responses.seen:  # every response's template (when learned) reads it as full parsing does
        response, tree = remote.RESULTS[method]
        template = codec.Template.learn(raw, response.DESCRIPTOR)
        assert template is not None
        assert codec.TreeReader(response, tree)(raw) is not None


class Garbled(grpc.GenericRpcHandler):
    """A server that registers any network and answers every Grad and Run with bytes that do not parse."""

    def service(self, details: Any) -> Any:
        def answer(request: bytes, context: Any) -> bytes:
            if details.method.endswith("/RegisterNetwork"):
                return service_pb2.RegisterNetworkResponse(network_id="x").SerializeToString()
            return b"\xff\xff"

        return grpc.unary_unary_rpc_method_handler(answer, request_deserializer=None, response_serializer=None)


def test_a_response_that_does_not_parse_is_a_remote_error_internal_as_when_grpc_parsed_responses() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((Garbled(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backend = RemoteBackend(f"127.0.0.1:{port}")
    try:
        b = GraphBuilder()
        nid = backend.register(b.build(b.op("Sin", b.input("x", "float64", (2,)))))
        with pytest.raises(remote.RemoteError, match="Grad") as grad:
            backend.grad(nid, GradFlags(), [np.ones(2)], {})
        with pytest.raises(remote.RemoteError, match="Run") as run:
            backend.run(nid, [np.ones(2)], {})
        assert grad.value.code == run.value.code == grpc.StatusCode.INTERNAL
    finally:
        backend.close()
        server.stop(0)


def test_inputs_given_as_lists_or_numpy_scalars_are_serialized_as_before_templates(offline: RemoteBackend) -> None:
    net = offline._networks["local"]
    flags = GradFlags(get_by_list=True, weights=("w",))
    params = {"w": np.full(3, 2, np.float32)}
    for inputs in ([[1.0, 2.0], 3], [np.ones(2), np.float32(3)]):
        for _ in range(2):
            raw = offline._request(net, "Grad", Call("local", flags, inputs, params), net.overrides(params), network_id="n")  # type: ignore[arg-type]
            assert raw == protobufs(flags, "n", [np.asarray(a) for a in inputs], params, 2)
