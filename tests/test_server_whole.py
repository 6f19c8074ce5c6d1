"""Unary Grad and Run requests of 64 KiB to 256 KiB, parsed whole (``blobs.parse``), over real loopback gRPC:
at and around both bounds, written in ways protobuf reads specially (a tensor's data given twice, unknown fields,
a graph given twice, the network oneof set twice) and with the lane's plan dropped while a call holds it: each gets
the closed-form numbers, from a worker first and then from the lane; one the lane runs stops at its deadline or cancellation."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from serverkit import lane_stops_at_deadline_and_cancel, overlong, rejected

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server import blobs
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

RUN = "/gradserve.v1.Gradient/Run"
DATA = graph_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number
RUN_FIELDS = service_pb2.RunRequest.DESCRIPTOR.fields_by_name


def field(name: str, body: bytes) -> bytes:
    """The RunRequest field ``name`` (length-delimited) holding ``body``."""
    return bytes(blobs._key(RUN_FIELDS[name])) + blobs._varint(len(body)) + body


def sin_graph(n: int) -> graph_pb2.Graph:
    """sin(x) of a float64[n] input."""
    b = GraphBuilder()
    return codec.encode_graph(b.build(b.op("Sin", b.input("x", "float64", (n,)))))


def run(channel: grpc.Channel, raw: bytes) -> np.ndarray:
    """The outputs of a Run request sent as the bytes ``raw``."""
    return codec.decode_tree(service_pb2.RunResponse.FromString(channel.unary_unary(RUN)(raw, timeout=30)).outputs)


def sized(request: service_pb2.RunRequest, size: int) -> service_pb2.RunRequest:
    """``request`` with its request_id padded so that it is ``size`` bytes serialized."""
    request.request_id = ""
    request.request_id = "r" * (size - request.ByteSize() - 3)
    while request.ByteSize() < size:
        request.request_id += "r"
    assert request.ByteSize() == size
    return request


@pytest.mark.parametrize("size", [blobs.BLOB_MIN_BYTES - 1, blobs.BLOB_MIN_BYTES, blobs.BLOB_MIN_BYTES + 1,
                                  blobs.WHOLE_MAX_BYTES - 1, blobs.WHOLE_MAX_BYTES, blobs.WHOLE_MAX_BYTES + 1])
def test_requests_at_and_around_the_bounds_get_sin_from_a_worker_then_from_the_lane(
    server: Server, stub: service_pb2_grpc.GradientStub, size: int,
) -> None:
    n = (size - 300) // 8 - size % 8  # a network of its own for each size
    x = np.linspace(-3, 3, n)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=sin_graph(n))).network_id
    request = sized(service_pb2.RunRequest(network_id=nid, inputs=[codec.encode_tensor(x)]), size)
    assert blobs.parse(request.SerializeToString(), service_pb2.RunRequest).whole == (
        blobs.BLOB_MIN_BYTES <= size <= blobs.WHOLE_MAX_BYTES)
    served = server.servicer.lane.served
    for _ in range(3):
        response = stub.Run(request, timeout=30)
        np.testing.assert_allclose(codec.decode_tree(response.outputs), np.sin(x), rtol=1e-12)
        assert response.request_id == request.request_id
    assert server.servicer.lane.served == served + 2


def test_bytes_protobuf_reads_specially_get_what_protobuf_reads(
    server: Server, stub: service_pb2_grpc.GradientStub, channel: grpc.Channel,
) -> None:
    n = 10000  # 80 KB of float64: parsed whole
    x = np.linspace(-3, 3, n)
    graph = sin_graph(n).SerializeToString()
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph_pb2.Graph.FromString(graph))).network_id
    tensor = codec.encode_tensor(x).SerializeToString()
    head = graph_pb2.Tensor(dtype=graph_pb2.DATA_TYPE_FLOAT64, shape=[n]).SerializeToString()
    data = bytes(blobs._key(graph_pb2.Tensor.DESCRIPTOR.fields_by_name["data"]))
    twice = head + data + blobs._varint(8 * n) + np.ones(n).tobytes() + data + blobs._varint(8 * n) + x.tobytes()
    unknown = blobs._varint(99 << 3 | 2) + b"\x02zz"  # field 99, unknown to both messages
    cut = list(codec.read_fields(graph, 0, len(graph)))[2][0]  # two graph fields, merged into the graph
    registered = len(server.servicer.registry)
    requests = {
        "data twice (the last kept)": field("network_id", nid.encode()) + field("inputs", twice),
        "unknown fields": field("network_id", nid.encode()) + field("inputs", tensor + unknown) + unknown,
        "graph twice": field("graph", graph[:cut]) + field("inputs", tensor) + field("graph", graph[cut:]),
        "network_id then graph": field("network_id", b"not registered") + field("inputs", tensor) + field("graph", graph),
        "graph then network_id": field("graph", sin_graph(3).SerializeToString()) + field("inputs", tensor)
        + field("network_id", nid.encode()),
    }
    for what, raw in requests.items():
        assert blobs.parse(raw, service_pb2.RunRequest).whole, what
        for _ in range(3):
            np.testing.assert_allclose(run(channel, raw), np.sin(x), rtol=1e-12, err_msg=what)
    assert len(server.servicer.registry) == registered  # the graph of n is registered already; sin_graph(3) is overridden


def test_a_plan_the_lane_drops_while_a_call_holds_it_still_answers_and_is_sent_again(
    server: Server, stub: service_pb2_grpc.GradientStub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lane = server.servicer.lane
    plan = lane.plan
    dropped: list[tuple] = []

    def plan_then_drop(key: tuple) -> Any:
        found = plan(key)
        if found is not None:  # other calls' plans push it (and its network) out just after
            cache = lane._state.cache
            for i in range(cache.size):
                cache.put(("pushed out by", i), None)
            assert cache.get(key) is None
            dropped.append(key)
        return found

    monkeypatch.setattr(lane, "plan", plan_then_drop)
    x = np.linspace(-3, 3, 12000)
    request = service_pb2.RunRequest(graph=sin_graph(len(x)), inputs=[codec.encode_tensor(x)])
    served = lane.served
    for _ in range(4):  # a worker, the lane (the plan dropped), a worker (sending the plan again), the lane
        np.testing.assert_allclose(codec.decode_tree(stub.Run(request, timeout=30).outputs), np.sin(x), rtol=1e-12)
    assert lane.served == served + 2 and len(dropped) == 2


def test_a_request_parsed_whole_stops_in_the_lane_at_its_deadline_or_cancellation() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, local_max_flops=10**13, local_max_peak_bytes=1 << 30)
    with running(config) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = service_pb2_grpc.GradientStub(channel)
        n, m, k = 20000, 24, 500  # k Sins over an n x m outer product: a bounded plan of seconds, from 160 KB of input
        b = GraphBuilder()
        h = b.op("MatMul", b.input("x", "float64", (n, 1)), b.input("y", "float64", (1, m)))
        for _ in range(k):
            h = b.op("Sin", h)
        graph = codec.encode_graph(b.build(b.op("ReduceSum", h)))
        x, y = np.linspace(-1, 1, n).reshape(n, 1), np.ones((1, m))
        request = service_pb2.RunRequest(graph=graph, inputs=[codec.encode_tensor(x), codec.encode_tensor(y)])
        assert blobs.parse(request.SerializeToString(), service_pb2.RunRequest).whole
        want = m * np.sum(functools.reduce(lambda a, _: np.sin(a), range(k), x))
        got = codec.decode_tree(stub.Run(request, timeout=120).outputs)  # a worker runs it first and sends the plan
        np.testing.assert_allclose(got, want, rtol=1e-9)
        lane_stops_at_deadline_and_cancel(server, stub, request)
        assert server.servicer._held == 0
        np.testing.assert_allclose(codec.decode_tree(stub.Run(request, timeout=120).outputs), want, rtol=1e-9)
        assert server.servicer.lane.served == 1


def test_many_threads_mixing_small_whole_and_lifted_requests_each_get_their_own_numbers(
    server: Server, stub: service_pb2_grpc.GradientStub,
) -> None:
    networks = []
    for n in (500, 12000, 40000):  # 4 KB (small), 96 KB (parsed whole) and 320 KB (lifted) of float64 each for x and w
        b = GraphBuilder()
        y = b.op("ReduceSum", b.op("Mul", b.op("Sin", b.input("x", "float64", (n,))), b.param("w", np.zeros(n))))
        graph = codec.encode_graph(b.build(y))
        networks.append((n, graph, stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph)).network_id))
    served = server.servicer.lane.served

    def one(k: int) -> None:
        n, graph, nid = networks[k % 3]
        rng = np.random.default_rng(k)
        x, w = rng.normal(size=n), rng.normal(size=n)
        network = {"graph": graph} if k % 2 else {"network_id": nid}
        request = service_pb2.GradRequest(inputs=[codec.encode_tensor(x)], parameters={"w": codec.encode_tensor(w)},
                                          request_id=f"r{k}", **network)
        response = stub.Grad(request, timeout=60)
        assert response.request_id == f"r{k}"
        np.testing.assert_allclose(codec.decode_tree(response.gradients), np.cos(x) * w, rtol=1e-12)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(120)))
    assert server.servicer.lane.served > served and server.servicer._held == 0  # the small ones' tiny plan ran in the lane


GRAD = "/gradserve.v1.Gradient/Grad"
GRAD_FIELDS = service_pb2.GradRequest.DESCRIPTOR.fields_by_name
PARSED = {3000: (0, blobs.BLOB_MIN_BYTES - 1), 10000: (blobs.BLOB_MIN_BYTES, blobs.WHOLE_MAX_BYTES),
          40000: (blobs.WHOLE_MAX_BYTES + 1, 1 << 20)}
"""Request sizes for ``n`` float64 inputs: parsed at once (``lift`` of a small request), whole, and lifted."""


@pytest.mark.parametrize("n", [3000, 10000, 40000], ids=["small", "parsed whole", "lifted"])
@pytest.mark.parametrize("where", ["input", "data"])
def test_lengths_padded_past_5_bytes_which_protobuf_refuses_are_invalid_argument_however_the_request_is_parsed(
    stub: service_pb2_grpc.GradientStub, channel: grpc.Channel, n: int, where: str,
) -> None:
    """Protobuf reads a length padded to 5 bytes and refuses one of 6; the server reads as protobuf does, whether it
    parses the request at once (24 KB), whole (80 KB) or lifts it (320 KB, above ``blobs.WHOLE_MAX_BYTES``)."""
    x = np.linspace(-3, 3, n)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=sin_graph(n))).network_id
    head = graph_pb2.Tensor(dtype=graph_pb2.DATA_TYPE_FLOAT64, shape=[n]).SerializeToString()
    data_key = bytes(blobs._key(graph_pb2.Tensor.DESCRIPTOR.fields_by_name["data"]))
    input_key = bytes(blobs._key(GRAD_FIELDS["inputs"]))
    grad = codec.encode_grad_operation().SerializeToString()
    for width in (5, 6):
        if where == "data":
            tensor = head + data_key + overlong(8 * n, width) + x.tobytes()
            inputs = input_key + blobs._varint(len(tensor)) + tensor
        else:
            tensor = head + data_key + blobs._varint(8 * n) + x.tobytes()
            inputs = input_key + overlong(len(tensor), width) + tensor
        raw = (bytes(blobs._key(GRAD_FIELDS["network_id"])) + blobs._varint(len(nid)) + nid.encode()
               + bytes(blobs._key(GRAD_FIELDS["grad"])) + blobs._varint(len(grad)) + grad + inputs)
        answered_as_protobuf_reads(channel, raw, n, x, width == 5)


def answered_as_protobuf_reads(channel: grpc.Channel, raw: bytes, n: int, x: np.ndarray, read: bool) -> None:
    """``raw``, a Grad request for Sin over ``x`` of the size ``PARSED[n]`` gives, gets cos(x) when protobuf reads it
    (``read``), else INVALID_ARGUMENT with the message for bytes that are not protobuf, however the server parses it."""
    low, high = PARSED[n]
    assert low <= len(raw) <= high
    if read:
        service_pb2.GradRequest.FromString(raw)
        response = service_pb2.GradResponse.FromString(channel.unary_unary(GRAD)(raw, timeout=30))
        np.testing.assert_allclose(codec.decode_tree(response.gradients), np.cos(x), rtol=1e-12)
        return
    with pytest.raises(DecodeError):
        service_pb2.GradRequest.FromString(raw)
    failed = rejected(lambda: channel.unary_unary(GRAD)(raw, timeout=30))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, failed
    assert failed.details() == ("/gradserve.v1.Gradient/Grad: the request is not a valid gradserve.v1.GradRequest "
                                "message: the bytes are not valid protobuf wire format (garbage or truncated)")


UNKNOWN = 99
"""A field number neither GradRequest nor Tensor has."""
ODD_FIELDS = {
    # framing after a field, as (bytes, whether protobuf reads them)
    "field number 0": (b"\x00\x01", False),
    "a group, ended": (blobs._varint(UNKNOWN << 3 | 3) + blobs._varint(98 << 3) + b"\x01" + blobs._varint(UNKNOWN << 3 | 4), True),
    "a group end alone": (blobs._varint(UNKNOWN << 3 | 4), False),
    "a group ended by another number": (blobs._varint(UNKNOWN << 3 | 3) + blobs._varint(98 << 3 | 4), False),
    "wire type 6": (blobs._varint(UNKNOWN << 3 | 6) + b"\x00" * 8, False),
    "wire type 7": (blobs._varint(UNKNOWN << 3 | 7) + b"\x00" * 8, False),
    "the largest field number": (blobs._varint(((1 << 29) - 1) << 3) + b"\x01", True),
    "a key over 32 bits": (blobs._varint(1 << 32) + b"\x01", False),
    "a key padded to 5 bytes": (overlong(UNKNOWN << 3, 5) + b"\x01", True),
    "a varint of 11 bytes": (blobs._varint(UNKNOWN << 3) + b"\x80" * 10 + b"\x00", False),
    "a truncated field": (blobs._varint(UNKNOWN << 3 | 2) + b"\x05ab", False),
}


@pytest.mark.parametrize("n", [3000, 10000, 40000], ids=["small", "parsed whole", "lifted"])
@pytest.mark.parametrize("inside", [False, True], ids=["in the request", "in its tensor"])
@pytest.mark.parametrize("odd, read", ODD_FIELDS.values(), ids=ODD_FIELDS.keys())
def test_odd_framing_is_read_as_protobuf_reads_it_however_the_request_is_parsed(
    stub: service_pb2_grpc.GradientStub, channel: grpc.Channel, n: int, inside: bool, odd: bytes, read: bool,
) -> None:
    """Field number 0, groups, wire types 6 and 7, big or padded keys, long varints and truncation, after the request's
    large tensor or inside it: the answer when protobuf reads the bytes, else INVALID_ARGUMENT, whichever way it is parsed."""
    x = np.linspace(-3, 3, n)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=sin_graph(n))).network_id
    tensor = codec.encode_tensor(x).SerializeToString() + (odd if inside else b"")
    grad = codec.encode_grad_operation().SerializeToString()
    raw = (bytes(blobs._key(GRAD_FIELDS["network_id"])) + blobs._varint(len(nid)) + nid.encode()
           + bytes(blobs._key(GRAD_FIELDS["grad"])) + blobs._varint(len(grad)) + grad
           + bytes(blobs._key(GRAD_FIELDS["inputs"])) + blobs._varint(len(tensor)) + tensor + (b"" if inside else odd))
    answered_as_protobuf_reads(channel, raw, n, x, read)
