"""What a plan (server/compute.py) answers, in a worker or in the local lane.

The lane and response Templates answer as workers do: every request is sent three times to a server with
the lane (first call: a worker builds the plan; later calls: the lane and its Template) and to one with
``local_max_elements=0`` (every request in a worker, second call on: the worker's Template), and the
responses must be the same messages, equal to closed-form values. Then regressions: a request whose
answer must not change once a plan exists (Plan.take counts inputs and sensitivities apart), and results
the response Template must learn whatever the codec's default limits (``codec.Template.learn`` reads result types
from the bytes, it does not decode them), each on a server with the lane and on one without it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

from gradserve.engine import DTYPES, GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import Server, running
from gradserve.server.blobs import BLOB_MIN_BYTES, data_header, splice
from gradserve.server.config import Limits, ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

CALLS = 3


@dataclass
class Side:
    server: Server
    stub: service_pb2_grpc.GradientStub


@dataclass
class Pair:
    lane: Side
    plain: Side


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as lane, \
            running(ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_elements=0)) as plain:
        with grpc.insecure_channel(f"127.0.0.1:{lane.port}") as c1, grpc.insecure_channel(f"127.0.0.1:{plain.port}") as c2:
            yield Pair(Side(lane, service_pb2_grpc.GradientStub(c1)), Side(plain, service_pb2_grpc.GradientStub(c2)))


def register(stub: service_pb2_grpc.GradientStub, graph: Any) -> str:
    return stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(graph)), timeout=30).network_id


def outcome(call: Callable[[], Any]) -> Any:
    """The response message, or (code, details) of the error."""
    try:
        return call()
    except grpc.RpcError as e:
        return (e.code(), e.details())


def same_everywhere(pair: Pair, graph: Any, build: Callable[[str], Any], method: str = "Grad", calls: int = CALLS,
                    lane_serves: bool = True) -> Any:
    """Register ``graph`` on both servers, send ``build(network_id)`` ``calls`` times to each; every
    outcome must be the same. Returns it. Checks the lane served calls 2.. on the lane server."""
    results = []
    for side in (pair.lane, pair.plain):
        nid = register(side.stub, graph)
        served = side.server.servicer.lane.served
        for _ in range(calls):
            request = build(nid)
            results.append(outcome(lambda: getattr(side.stub, method)(request, timeout=30)))
        if side is pair.lane and lane_serves:
            assert side.server.servicer.lane.served == served + calls - 1, "the lane did not serve the repeated calls"
    first = results[0]
    for i, r in enumerate(results):
        assert r == first, f"outcome {i} differs:\n{r}\nvs\n{first}"
    return first


def leaves(tree: Any) -> list[np.ndarray]:
    return [x for t in tree for x in leaves(t)] if isinstance(tree, tuple) else [tree]


def exact(got: Any, want: Any) -> None:
    """Same tree structure, dtypes, shapes and values (allclose for floats)."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            exact(g, w)
        return
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=2e-3 if want.dtype == np.float16 else 1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def t(a: Any) -> graph_pb2.Tensor:
    return codec.encode_tensor(np.asarray(a))


# ---- dtypes ----

NUMERIC = [d for d in DTYPES if d != "bool"]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_run_every_numeric_dtype_matches_worker_and_numpy(pair: Pair, dtype: str) -> None:
    b = GraphBuilder()
    x, y = b.input("x", dtype, (2, 3)), b.input("y", dtype, (2, 3))
    g = b.build((x + y, (b.op("Mul", x, y), b.op("Equal", x, y)), b.op("Maximum", x, y), b.op("ReduceSum", x, axis=1)))
    xs = np.array([[1, 2, 3], [4, 5, 6]], dtype)
    ys = np.array([[6, 2, 4], [1, 5, 7]], dtype)
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(xs), t(ys)], request_id="r"),
                        "Run")
    assert isinstance(r, service_pb2.RunResponse), r
    assert r.request_id == "r" and r.network_id.startswith("sha256:")
    exact(codec.decode_tree(r.outputs), (xs + ys, (xs * ys, xs == ys), np.maximum(xs, ys), xs.sum(axis=1, dtype=dtype)))


def test_run_bool_inputs_and_outputs(pair: Pair) -> None:
    b = GraphBuilder()
    x, y = b.input("x", "bool", (4,)), b.input("y", "bool", (4,))
    g = b.build((b.op("Equal", x, y), b.op("Select", x, y, x), x))
    xs, ys = np.array([True, False, True, False]), np.array([True, True, False, False])
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(xs), t(ys)]), "Run",
                        lane_serves=True)
    exact(codec.decode_tree(r.outputs), (xs == ys, np.where(xs, ys, xs), xs))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_grad_every_float_dtype(pair: Pair, dtype: str) -> None:
    b = GraphBuilder()
    x = b.input("x", dtype, (3,))
    w = b.param("w", np.array([0.5, -1.0, 2.0], dtype))
    g = b.build(b.op("ReduceSum", b.op("Sin", x) * w))
    xs = np.array([0.1, 0.7, -1.3], dtype)
    grad = codec.encode_grad_operation(get_all=True, get_by_list=True, weights=["w"])
    r = same_everywhere(pair, g, lambda nid: service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(xs)],
                                                                      return_forward=True))
    wv = np.array([0.5, -1.0, 2.0], dtype)
    ((dx,), (dw,)) = codec.decode_tree(r.gradients)
    exact(dx, (np.cos(xs.astype(np.float64)) * wv).astype(dtype))
    exact(dw, np.sin(xs.astype(np.float64)).astype(dtype))
    exact(codec.decode_tree(r.forward), np.array((np.sin(xs.astype(np.float64)) * wv).sum(), dtype))


# ---- shapes and trees ----

def test_zero_size_and_scalar_tensors(pair: Pair) -> None:
    b = GraphBuilder()
    x, s = b.input("x", "float32", (0, 3)), b.input("s", "float64", ())
    e = b.input("e", "int32", (2, 0))
    g = b.build((b.op("Sin", x), s * s, e + e, b.op("ReduceSum", x, axis=0)))
    xs, ss, es = np.zeros((0, 3), np.float32), np.array(1.5), np.zeros((2, 0), np.int32)
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(xs), t(ss), t(es)]), "Run")
    exact(codec.decode_tree(r.outputs), (np.sin(xs), np.array(2.25), es, np.zeros(3, np.float32)))


def test_grad_of_zero_size_input_and_scalar(pair: Pair) -> None:
    b = GraphBuilder()
    x, s = b.input("x", "float32", (0, 3)), b.input("s", "float64", ())
    g = b.build((b.op("ReduceSum", b.op("Sin", x)), s * s * s))
    xs, ss = np.zeros((0, 3), np.float32), np.array(-2.0)
    grad = codec.encode_grad_operation(get_all=True)
    r = same_everywhere(pair, g, lambda nid: service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(xs), t(ss)]))
    exact(codec.decode_tree(r.gradients), (np.zeros((0, 3), np.float32), np.array(12.0)))


def test_nested_and_empty_tuple_outputs(pair: Pair) -> None:
    b = GraphBuilder()
    x = b.input("x", "float64", (2,))
    g = b.build(((), (x, ((), (x * x,))), ()))
    xs = np.array([3.0, -1.0])
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(xs)]), "Run")
    exact(codec.decode_tree(r.outputs), ((), (xs, ((), (xs * xs,))), ()))


def test_empty_tuple_only_output(pair: Pair) -> None:
    b = GraphBuilder()
    b.input("x", "float64", (2,))
    g = b.build(())
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(np.zeros(2))]), "Run")
    assert codec.decode_tree(r.outputs) == ()


def test_output_that_is_an_input_or_a_parameter_is_not_aliased(pair: Pair) -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", (3,))
    w = b.param("w", np.array([1.0, 2.0, 3.0], np.float32))
    g = b.build((x, w, b.op("Reshape", x, shape=(3, 1)), b.op("Transpose", b.op("Reshape", w, shape=(1, 3)), perm=(1, 0))))
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(np.full(3, 7.0, np.float32))]),
                        "Run")
    exact(codec.decode_tree(r.outputs), (np.full(3, 7.0, np.float32), np.array([1, 2, 3], np.float32),
                                          np.full((3, 1), 7.0, np.float32), np.array([[1], [2], [3]], np.float32)))


# ---- GradOperation flags ----

def two_out() -> Any:
    b = GraphBuilder()
    x, y = b.input("x", "float64", (3,)), b.input("y", "float64", (3,))
    w, v = b.param("w", np.array([1.0, 2.0, 3.0])), b.param("v", np.array(0.5))
    return b.build((b.op("Sin", x) * w, x * y + v))


X, Y, W = np.array([0.3, -0.2, 1.1]), np.array([2.0, -1.0, 0.5]), np.array([1.0, 2.0, 3.0])
S1, S2 = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0, -1.0])


@pytest.mark.parametrize("get_all,get_by_list,sens,forward", [
    (False, False, False, False), (True, False, False, True), (True, True, True, True), (False, True, True, False),
    (False, True, False, True),
])
def test_grad_flags_match_closed_form(pair: Pair, get_all: bool, get_by_list: bool, sens: bool, forward: bool) -> None:
    weights = ["v", "w"] if get_by_list else []
    grad = codec.encode_grad_operation(get_all=get_all, get_by_list=get_by_list, sens_param=sens, weights=weights)
    s1, s2 = (S1, S2) if sens else (np.ones(3), np.ones(3))
    r = same_everywhere(pair, two_out(), lambda nid: service_pb2.GradRequest(
        network_id=nid, grad=grad, inputs=[t(X), t(Y)], sens=[t(S1), t(S2)] if sens else [], return_forward=forward))
    assert isinstance(r, service_pb2.GradResponse), r
    dx, dy = np.cos(X) * W * s1 + Y * s2, X * s2
    dw, dv = np.sin(X) * s1, np.array(s2.sum())
    inputs = (dx, dy) if get_all else dx
    weights_grads = (dv, dw)
    want = (inputs, weights_grads) if get_by_list and get_all else weights_grads if get_by_list else inputs
    exact(codec.decode_tree(r.gradients), want)
    if forward:
        exact(codec.decode_tree(r.forward), (np.sin(X) * W, X * Y + 0.5))
    else:
        assert not r.HasField("forward")


def test_bare_weight(pair: Pair) -> None:
    grad = codec.encode_grad_operation(get_by_list=True, weights="w")
    r = same_everywhere(pair, two_out(), lambda nid: service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(X), t(Y)]))
    exact(codec.decode_tree(r.gradients), np.sin(X))


# ---- parameter overrides ----

def test_parameter_overrides_change_the_answer_and_do_not_stick(pair: Pair) -> None:
    grad = codec.encode_grad_operation(get_all=True, get_by_list=True, weights=["w"])
    w2, v2 = np.array([-1.0, 0.0, 4.0]), np.array(-3.0)
    plan = [{}, {"w": w2}, {}, {"w": w2, "v": v2}, {"w": W}, {"v": v2}, {}]

    for side in (pair.lane, pair.plain):
        nid = register(side.stub, two_out())
        for params in plan * 2:
            r = side.stub.Grad(service_pb2.GradRequest(network_id=nid, grad=grad, inputs=[t(X), t(Y)], return_forward=True,
                                                       parameters={k: t(v) for k, v in params.items()}), timeout=30)
            w, v = params.get("w", W), params.get("v", np.array(0.5))
            exact(codec.decode_tree(r.gradients), ((np.cos(X) * w + Y, X), (np.sin(X),)))
            exact(codec.decode_tree(r.forward), (np.sin(X) * w, X * Y + v))


def test_run_parameter_override_then_registered_value(pair: Pair) -> None:
    b = GraphBuilder()
    x = b.input("x", "int32", (2,))
    k = b.param("k", np.array([10, 20], np.int32), requires_grad=False)
    g = b.build(x * k)
    for side in (pair.lane, pair.plain):
        nid = register(side.stub, g)
        for params in ({}, {"k": np.array([1, 2], np.int32)}, {}, {"k": np.array([-5, 5], np.int32)}, {}) * 2:
            r = side.stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(np.array([3, 4], np.int32))],
                                                     parameters={n: t(v) for n, v in params.items()}), timeout=30)
            exact(codec.decode_tree(r.outputs), np.array([3, 4], np.int32) * params.get("k", np.array([10, 20], np.int32)))


def test_bad_parameter_overrides_after_the_plan_is_built(pair: Pair) -> None:
    bad = [{"nope": t(W)}, {"w": t(W.astype(np.float32))}, {"w": t(W[:2])}, {"v": t(np.array([0.5]))},
           {"w": graph_pb2.Tensor(dtype=graph_pb2.DATA_TYPE_FLOAT64, shape=[3], data=b"\0" * 23)}]
    for params in bad:
        counter = iter(range(CALLS * 2))

        def build(nid: str, params: dict = params, n: Any = counter) -> service_pb2.GradRequest:
            first = next(n) % CALLS == 0
            return service_pb2.GradRequest(network_id=nid, inputs=[t(X), t(Y)], parameters={} if first else params)
        results = []
        for side in (pair.lane, pair.plain):
            nid = register(side.stub, two_out())
            side.stub.Grad(build(nid), timeout=30)
            results += [outcome(lambda: side.stub.Grad(build(nid), timeout=30)) for _ in range(CALLS - 1)]
        assert all(r == results[0] for r in results), results
        assert isinstance(results[0], tuple) and results[0][0] == grpc.StatusCode.INVALID_ARGUMENT, results[0]
        assert "parameters" in results[0][1]


# ---- inputs that differ from the plan's ----

@pytest.mark.parametrize("what", ["dtype", "shape", "short", "count", "sens", "rank", "unset"])
def test_second_call_with_other_types_errors_like_a_worker_and_a_first_call(pair: Pair, what: str) -> None:
    good = [t(X), t(Y)]
    other = {
        "dtype": [t(X.astype(np.float32)), t(Y)],
        "shape": [t(X.reshape(3, 1)), t(Y)],
        "short": [graph_pb2.Tensor(dtype=graph_pb2.DATA_TYPE_FLOAT64, shape=[3], data=b"\0" * 16), t(Y)],
        "count": [t(X)],
        "sens": good,
        "rank": [t(X[:, None, None]), t(Y)],
        "unset": [graph_pb2.Tensor(shape=[3], data=X.tobytes()), t(Y)],
    }[what]
    sens = [t(S1)] if what == "sens" else []
    outcomes = []
    for side in (pair.lane, pair.plain):
        nid = register(side.stub, two_out())
        bad = service_pb2.GradRequest(network_id=nid, inputs=other, sens=sens)
        outcomes.append(outcome(lambda: side.stub.Grad(bad, timeout=30)))  # before any plan
        for _ in range(2):
            side.stub.Grad(service_pb2.GradRequest(network_id=nid, inputs=good), timeout=30)
            outcomes.append(outcome(lambda: side.stub.Grad(bad, timeout=30)))
    assert all(o == outcomes[0] for o in outcomes), outcomes
    assert outcomes[0][0] == grpc.StatusCode.INVALID_ARGUMENT


def test_switching_dtype_between_calls_on_a_different_plan_key(pair: Pair) -> None:
    """Two networks differing only in input dtype have different ids, so different plans."""
    for dtype in ("float32", "float64", "float16", "float32"):
        b = GraphBuilder()
        x = b.input("x", dtype, (3,))
        g = b.build(b.op("Square", x))
        xs = np.array([1.0, 2.0, -3.0], dtype)
        r = same_everywhere(pair, g, lambda nid: service_pb2.GradRequest(network_id=nid, inputs=[t(xs)]),
                            lane_serves=dtype == "float64" or dtype == "float16")
        exact(codec.decode_tree(r.gradients), (2 * xs).astype(dtype))


# ---- ids, inline graphs ----

def test_inline_graph_and_network_id_share_a_plan_and_echo_ids(pair: Pair) -> None:
    side = pair.lane
    g = two_out()
    nid = register(side.stub, g)
    served = side.server.servicer.lane.served
    for i in range(4):
        if i % 2:
            req = service_pb2.GradRequest(graph=codec.encode_graph(g), inputs=[t(X), t(Y)], request_id=f"id-{i}")
        else:
            req = service_pb2.GradRequest(network_id=nid, inputs=[t(X), t(Y)], request_id=f"id-{i}")
        r = side.stub.Grad(req, timeout=30)
        assert r.network_id == nid and r.request_id == f"id-{i}"
        exact(codec.decode_tree(r.gradients), np.cos(X) * W + Y)
    assert side.server.servicer.lane.served >= served + 3
    r = side.stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(X), t(Y)], request_id="ü" * 3), timeout=30)
    r = side.stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(X), t(Y)], request_id="ü" * 3), timeout=30)
    assert r.request_id == "ü" * 3 and r.network_id == nid
    r = side.stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(X), t(Y)]), timeout=30)
    assert r.request_id == "" and r.network_id == nid


# ---- large results and 64 KiB inputs to tiny plans ----

def test_tiny_plan_with_a_large_result_is_spliced(pair: Pair) -> None:
    b = GraphBuilder()
    x = b.input("x", "float64", (1,))
    g = b.build((b.op("BroadcastTo", x, shape=(8192,)), x * x))  # 64 KiB result from an 8-byte input
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid, inputs=[t(np.array([2.5]))],
                                                                     request_id="big"), "Run")
    assert r.request_id == "big"
    exact(codec.decode_tree(r.outputs), (np.full(8192, 2.5), np.array([6.25])))


def test_64_KiB_input_to_a_tiny_plan_runs_in_the_lane_from_the_received_bytes(pair: Pair) -> None:
    b = GraphBuilder()
    x = b.input("x", "float64", (8192,))
    g = b.build(b.op("ReduceSum", x))
    xs = np.arange(8192, dtype=np.float64)
    results = []
    for side in (pair.lane, pair.plain):
        nid = register(side.stub, g)
        served = side.server.servicer.lane.served
        for _ in range(CALLS):
            r = side.stub.Grad(service_pb2.GradRequest(network_id=nid, inputs=[t(xs)], return_forward=True), timeout=30)
            results.append(r)
            exact(codec.decode_tree(r.gradients), np.ones(8192))
            exact(codec.decode_tree(r.forward), np.array(xs.sum()))
        # the input is a blob: a worker reads it from shared memory, the lane as a view of the received bytes
        assert side.server.servicer.lane.served == served + (CALLS - 1 if side is pair.lane else 0)
    assert all(r == results[0] for r in results)


def test_network_without_inputs(pair: Pair) -> None:
    b = GraphBuilder()
    w = b.param("w", np.array([1.0, -2.0]))
    g = b.build(b.op("ReduceSum", w * w))
    r = same_everywhere(pair, g, lambda nid: service_pb2.RunRequest(network_id=nid), "Run")
    exact(codec.decode_tree(r.outputs), np.array(5.0))
    grad = codec.encode_grad_operation(get_by_list=True, weights=["w"])
    r = same_everywhere(pair, g, lambda nid: service_pb2.GradRequest(network_id=nid, grad=grad, return_forward=True))
    exact(codec.decode_tree(r.gradients), (np.array([2.0, -4.0]),))
    exact(codec.decode_tree(r.forward), np.array(5.0))


# ---- Template in process ----

TREES = [
    lambda: np.float32(1.5),
    lambda: (np.zeros((0, 3), np.float16), (np.arange(5, dtype=np.int8), ()), np.array([True, False])),
    lambda: ((), ((),)),
    lambda: (np.arange(6, dtype=np.uint8).reshape(2, 3).T, np.array(-0.0), np.array([np.nan, np.inf], np.float32)),
    # large leaves (their data travels as frames): first, between small ones, last, and two in a row
    lambda: (np.arange(BLOB_MIN_BYTES // 4, dtype=np.float32), np.float32(2.5), (np.full((130, 130), 0.5).T, np.arange(3))),
    lambda: (np.arange(4, dtype=np.int16), (np.ones(BLOB_MIN_BYTES, np.uint8), np.zeros(BLOB_MIN_BYTES // 8 + 1))),
    lambda: (np.ones(BLOB_MIN_BYTES, bool), np.zeros((0, 2), np.int64), np.arange(BLOB_MIN_BYTES // 8, dtype=np.int64)[::-1]),
    # one byte under, at and over the size that makes a frame; NaN and infinities
    lambda: (np.full(BLOB_MIN_BYTES - 1, -3, np.int8), (np.full(BLOB_MIN_BYTES, 5, np.int8),), np.arange(BLOB_MIN_BYTES + 1, dtype=np.uint8)),
    lambda: (np.array([np.nan, np.inf, -np.inf], np.float16), np.full(BLOB_MIN_BYTES // 2, np.nan, np.float16)),
]


LARGE = np.arange(BLOB_MIN_BYTES // 4, dtype=np.float32)
RESPONSES = [lambda make=make: [make(), make()] for make in TREES] + [
    # gradients with a frame and forward without (blobs.around writes forward first), and the other way round
    lambda: [(LARGE, np.int8(3)), (np.float32(1.5), np.zeros(2))],
    lambda: [np.ones(3, np.float32), (LARGE, np.arange(2))],
]


@pytest.mark.parametrize("make", RESPONSES)
def test_template_joins_the_first_responses_bytes_cut_around_large_leaves_and_refuses_other_types(
    make: Callable[[], list[Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan's second response, joined by the Template its first one taught it, is byte for byte the first one's
    (protobuf's, cut around its large leaves by blobs.around, and parsed as protobuf's deterministic serialization), cut
    at the same places, its large leaves not copied; a result of other types is serialized by protobuf."""
    from gradserve.server import compute

    names = ("gradients", "forward")
    trees = make()
    found = compute.Plan(None, [], 0, {})  # type: ignore[arg-type]  # encode reads only the layout
    first = compute.encode(found, "grad", trees)
    assert found.layout is not None
    protobuf = compute._encode
    with monkeypatch.context() as m:
        m.setattr(compute, "_encode", None)  # the second response is joined by the template alone
        second = compute.encode(found, "grad", trees)
    flat = [np.asarray(a) for tree in trees for a in _leaves(tree)]
    large = [a for a in flat if a.nbytes >= BLOB_MIN_BYTES]
    assert [a.shape for a in second.arrays] == [a.shape for a in first.arrays] == [a.shape for a in large]
    assert all(np.shares_memory(got, a) for got, a in zip(second.arrays, large) if a.flags.c_contiguous)
    assert second.parts == first.parts and len(second.parts) == len(large) + 1
    want = serialized(trees, names)
    assert service_pb2.GradResponse.FromString(framed(second)) == service_pb2.GradResponse.FromString(want)
    if found.layout.order is None:
        assert framed(second) == want
    other = [tuple(np.asarray(a).astype(np.float64 if np.asarray(a).dtype != np.float64 else np.float32)
                   for a in _leaves(tree)) for tree in trees]
    if flat:
        template = found.layout.template
        assert template.chunks([a for tree in other for a in tree]) is None
        assert template.chunks([a.reshape(a.shape + (1,)) for a in flat]) is None
        assert template.chunks(flat[:-1]) is None
        assert compute._encode is protobuf
        assert framed(compute.encode(found, "grad", other)) == framed(protobuf(other, names, service_pb2.GradResponse()))


def framed(encoded: Any) -> bytes:
    """The response ``encoded`` cuts, joined with its large leaves' frames (as the servicer joins them)."""
    return splice(encoded.parts, [data_header(a.nbytes) + np.ascontiguousarray(a).tobytes() for a in encoded.arrays])


def serialized(trees: list[Any], names: tuple[str, ...]) -> bytes:
    """Protobuf's deterministic serialization of the response holding ``trees`` in its fields ``names``."""
    response = service_pb2.GradResponse()
    for tree, name in zip(trees, names):
        codec.encode_tree(tree, getattr(response, name))
    return response.SerializeToString(deterministic=True)


def _leaves(tree: Any) -> list[Any]:
    return [x for t in tree for x in _leaves(t)] if isinstance(tree, tuple) else [tree]


# ---- regressions of Plan.take and the response Template, with the lane and without it ----

LANE = {"lane": {}, "workers only": {"local_max_elements": 0}}


@pytest.fixture(scope="module", params=list(LANE))
def stub(request: pytest.FixtureRequest) -> Iterator[service_pb2_grpc.GradientStub]:
    """A server allowing rank 40 (the codec's default allows 32), with the lane and without it."""
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, limits=Limits(max_tensor_rank=40), **LANE[request.param])
    with running(config) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield service_pb2_grpc.GradientStub(channel)


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
    """The server allows 2**28 elements (counting a 0 dimension as 1); a response Template that decoded the first
    response with codec.DEFAULT_LIMITS (2**26) would fail the request with RESOURCE_EXHAUSTED."""
    shape = (0, 100_000_000)
    b = GraphBuilder()
    nid = register(stub, b.build(b.op("Sin", b.input("x", "float32", shape))))
    for _ in range(2):
        r = outcome(lambda: stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(np.zeros(shape, np.float32))]), timeout=30))
        assert isinstance(r, service_pb2.RunResponse), r
        assert tuple(r.outputs.tensor.shape) == shape


def test_result_of_a_rank_the_server_allows_but_the_codec_default_does_not(stub: service_pb2_grpc.GradientStub) -> None:
    """With max_tensor_rank=40, a rank-33 input is accepted, and so is its rank-33 result, which a response Template
    that decoded it with the codec's default limits would refuse."""
    shape = (1,) * 33
    b = GraphBuilder()
    x = b.input("x", "float32", shape)
    nid = register(stub, b.build(b.op("Sin", x)))
    xs = np.full(shape, 0.5, np.float32)
    for _ in range(2):
        r = outcome(lambda: stub.Run(service_pb2.RunRequest(network_id=nid, inputs=[t(xs)]), timeout=30))
        assert isinstance(r, service_pb2.RunResponse), r
        np.testing.assert_allclose(codec.decode_tree(r.outputs, codec.Limits(max_tensor_rank=40)), np.sin(xs), rtol=1e-6)
