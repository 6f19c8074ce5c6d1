"""Large tensor data taken out of raw requests (``lift``) and spliced into serialized responses
(``around``, ``splice``), checked against protobuf itself: a lifted request with its data put back,
and a spliced response parsed again, must equal what protobuf makes of the same bytes or message."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from serverkit import overlong

from gradserve.server import blobs
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

SMALL = 16
"""BLOB_MIN_BYTES for this module, so that generated tensors are large with a few bytes of data."""


@pytest.fixture(autouse=True, scope="module")
def small_blobs() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blobs, "BLOB_MIN_BYTES", SMALL)
        yield


# ---- a wire encoder of the test's own, to write what protobuf would never serialize ----

def varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def field(number: int, wire: int, payload: Any) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload  # fixed 64 (8 bytes) or fixed 32 (4 bytes)


def number(cls: Any, name: str) -> int:
    return cls.DESCRIPTOR.fields_by_name[name].number


small_or_big = st.binary(min_size=SMALL, max_size=2 * SMALL) | st.binary(max_size=SMALL - 1)
tensor_parts = st.one_of(
    st.integers(0, 11).map(lambda d: field(1, 0, d)),
    st.lists(st.integers(0, 5), max_size=3).map(lambda s: b"".join(field(2, 0, d) for d in s)),
    st.lists(st.integers(0, 5), min_size=1, max_size=3).map(lambda s: field(2, 2, b"".join(map(varint, s)))),
    st.sampled_from([field(9, 0, 1), field(10, 2, b"?" * SMALL), field(11, 5, b"abcd"), field(12, 1, b"12345678")]),
)
BIG = field(3, 2, b"D" * SMALL)  # a Tensor holding only large data
odd_data = st.sampled_from([field(3, 0, 7), field(3, 5, b"abcd")])  # Tensor.data with a wrong wire type


@st.composite
def tensor_wire(draw: st.DrawFn) -> bytes:
    """A serialized Tensor, usually with one data field, sometimes with none, two or a stray one."""
    before = draw(st.lists(tensor_parts, max_size=2))
    datas = draw(st.lists(small_or_big.map(lambda d: field(3, 2, d)), min_size=1, max_size=1)
                 | st.lists(small_or_big.map(lambda d: field(3, 2, d)), max_size=2))
    after = draw(st.lists(tensor_parts | odd_data, max_size=2) if draw(st.integers(0, 9)) == 0 else st.just([]))
    return b"".join(before + datas + after)


keys = st.sampled_from([b"", b"a", b"b", b"w", "\u00e9".encode(), b"\xff"])


@st.composite
def entry_wire(draw: st.DrawFn) -> bytes:
    """A serialized parameters map entry: a key and a value in either order, sometimes with a field that
    makes protobuf put the entry aside, a second value or key, or without one of them."""
    parts = [field(1, 2, draw(keys)), field(2, 2, draw(tensor_wire()))]
    odd = draw(st.sampled_from(["", "aside", "value", "key", "missing"]))
    if odd == "aside":
        parts.append(draw(st.sampled_from([field(3, 0, 1), field(3, 2, b""), field(2, 0, 4), field(1, 0, 4)])))
    elif odd == "value":
        parts.append(field(2, 2, draw(tensor_wire())))
    elif odd == "key":
        parts.append(field(1, 2, draw(keys)))
    elif odd == "missing":
        parts = [draw(st.sampled_from(parts))]
    return b"".join(draw(st.permutations(parts)))


def graph_with_constant(data: bytes) -> bytes:
    g = pb.Graph(name="g")
    g.parameters.add(name="w", value=pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[len(data)], data=data))
    return g.SerializeToString()


@st.composite
def request_wire(draw: st.DrawFn, cls: Any) -> bytes:
    """Top-level fields of a Grad/RunRequest in any order: tensors (inputs, sens, parameters) as above,
    other fields serialized by protobuf, unknown fields, known numbers with wrong wire types."""
    tensors = [number(cls, "inputs")] + ([number(cls, "sens")] if "sens" in cls.DESCRIPTOR.fields_by_name else [])
    params, graph, rid = number(cls, "parameters"), number(cls, "graph"), number(cls, "request_id")
    tensor = st.sampled_from(tensors).flatmap(lambda n: tensor_wire().map(lambda t: field(n, 2, t)))
    entry = entry_wire().map(lambda e: field(params, 2, e))
    one = st.one_of(
        tensor, entry, tensor, entry,
        st.text(max_size=3).map(lambda s: field(rid, 2, s.encode())),
        small_or_big.map(lambda d: field(graph, 2, graph_with_constant(d))),
        st.sampled_from(tensors + [params]).map(lambda n: field(n, 0, 3)),
        st.sampled_from([field(99, 0, 1), field(98, 2, b"x" * SMALL), field(97, 5, b"1234"), field(96, 1, b"8" * 8),
                     field(95, 3, field(tensors[0], 2, BIG) + field(95, 4, b""))]),  # a group holding a tensor
    )
    return b"".join(draw(st.lists(one, min_size=1, max_size=8)))


# ---- the oracle for lift ----

def tensor_at(message: Any, place: blobs.Where) -> pb.Tensor:
    name, key = place
    if name == "parameters":
        assert key in message.parameters
        return message.parameters[key]
    return getattr(message, name)[key]


def check_lift(raw: bytes, cls: Any) -> blobs.Lifted | None:
    """``lift(raw)`` with its data put back equals ``cls.FromString(raw)``, or both raise DecodeError."""
    try:
        want = cls.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            blobs.lift(raw, cls)
        return None
    got = blobs.lift(raw, cls)
    assert len(got.places) == len(got.data) == len(set(got.places))
    assert got.places == [w for w, _ in blobs.request_tensors(got.message) if w in set(got.places)]
    rebuilt = cls()
    rebuilt.CopyFrom(got.message)
    for place, view in zip(got.places, got.data):
        assert isinstance(view, memoryview) and view.obj is raw and len(view) >= SMALL
        t = tensor_at(rebuilt, place)
        assert t.data == b""
        t.data = bytes(view)
    assert rebuilt == want
    return got


requests = st.sampled_from([spb.GradRequest, spb.RunRequest])


@settings(max_examples=220, deadline=None)
@given(st.data())
def test_lift_agrees_with_protobuf_on_any_request_bytes(data: st.DataObject) -> None:
    # repeated data fields and map values, repeated and missing keys, stray wire types, unknown fields,
    # large constants inside an inline graph, bad UTF-8 keys (protobuf raises), then perhaps truncated
    cls = data.draw(requests)
    raw = data.draw(request_wire(cls))
    check_lift(raw, cls)
    cut = data.draw(st.integers(0, len(raw)))
    check_lift(raw[:cut], cls)
    check_lift(raw + raw[:cut], cls)


def tensor_msg() -> st.SearchStrategy[pb.Tensor]:
    return st.builds(pb.Tensor, dtype=st.integers(0, 10), shape=st.lists(st.integers(0, 4), max_size=2), data=small_or_big)


def request_msg(cls: Any) -> st.SearchStrategy[Any]:
    kwargs: dict[str, Any] = {
        "inputs": st.lists(tensor_msg(), max_size=3),
        "parameters": st.dictionaries(st.sampled_from(["", "a", "b", "w", "\u00e9"]), tensor_msg(), max_size=3),
        "request_id": st.text(max_size=3),
        "network_id": st.text(max_size=3),
    }
    if cls is spb.GradRequest:
        kwargs |= {"sens": st.lists(tensor_msg(), max_size=2), "return_forward": st.booleans(),
                   "grad": st.builds(pb.GradOperation, get_all=st.booleans(), weights=st.lists(st.just("w"), max_size=1))}
    return st.builds(cls, **kwargs)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_lift_takes_the_data_of_every_large_tensor_of_a_serialized_request(data: st.DataObject) -> None:
    cls = data.draw(requests)
    request = data.draw(request_msg(cls))
    raw = request.SerializeToString()
    got = check_lift(raw, cls)
    assert got is not None
    if len(raw) >= SMALL:
        large = [(w, t.data) for w, t in blobs.request_tensors(request) if len(t.data) >= SMALL]
        assert got.places == [w for w, _ in large]
        assert [bytes(v) for v in got.data] == [d for _, d in large]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lift_of_two_requests_in_a_row_follows_protobuf_merging(data: st.DataObject) -> None:
    # repeated tensors append, a parameter name given twice keeps the later tensor, scalars the later value
    cls = data.draw(requests)
    first, second = data.draw(request_msg(cls)), data.draw(request_msg(cls))
    check_lift(first.SerializeToString() + second.SerializeToString(), cls)


INPUT, PARAMS = number(spb.GradRequest, "inputs"), number(spb.GradRequest, "parameters")


def entry(key: bytes, tensor: bytes) -> bytes:
    return field(PARAMS, 2, field(1, 2, key) + field(2, 2, tensor))


EDGES = {
    # name: (raw GradRequest, places lift must take)
    "input and parameter": (field(INPUT, 2, field(1, 0, 3) + BIG) + entry(b"w", BIG), [("inputs", 0), ("parameters", "w")]),
    "index counts small inputs": (field(INPUT, 2, b"") + field(INPUT, 2, BIG), [("inputs", 1)]),
    "two data fields": (field(INPUT, 2, BIG + field(3, 2, b"d" * SMALL)), []),
    "data with a stray wire type": (field(INPUT, 2, BIG + field(3, 0, 1)), []),
    "input with a stray wire type": (field(INPUT, 0, 1) + field(INPUT, 2, BIG), [("inputs", 0)]),
    "later small value replaces": (entry(b"w", BIG) + entry(b"w", b""), []),
    "later large value replaces": (entry(b"w", b"") + entry(b"w", BIG), [("parameters", "w")]),
    "value given twice": (field(PARAMS, 2, field(1, 2, b"w") + field(2, 2, BIG) + field(2, 2, field(1, 0, 1))), []),
    "value given twice with data": (field(PARAMS, 2, field(1, 2, b"w") + field(2, 2, BIG) + field(2, 2, BIG)), []),
    "key given twice": (field(PARAMS, 2, field(1, 2, b"v") + field(2, 2, BIG) + field(1, 2, b"w")), [("parameters", "w")]),
    "missing key": (field(PARAMS, 2, field(2, 2, BIG)), [("parameters", "")]),
    "missing value": (entry(b"w", BIG) + field(PARAMS, 2, field(1, 2, b"w")), []),
    "unknown field in an entry": (field(INPUT, 2, BIG) + entry(b"w", BIG) + field(PARAMS, 2, field(1, 2, b"w") + field(3, 0, 1)), []),
    "unknown field in a large entry": (field(INPUT, 2, BIG) + field(PARAMS, 2, field(3, 2, b"") + field(1, 2, b"w") + field(2, 2, BIG)), []),
    "group": (field(INPUT, 2, BIG) + field(20, 3, b"") + field(20, 4, b""), []),
    "inline graph": (field(number(spb.GradRequest, "graph"), 2, graph_with_constant(b"c" * SMALL)), []),
    "unknown top-level field": (field(INPUT, 2, BIG) + field(50, 2, b"u" * SMALL), [("inputs", 0)]),
}


@pytest.mark.parametrize("raw, places", EDGES.values(), ids=EDGES.keys())
def test_lift_edge_cases(raw: bytes, places: list[blobs.Where]) -> None:
    got = check_lift(raw, spb.GradRequest)
    assert got is not None and got.places == places


def padded(number: int, payload: bytes, width: int, what: str) -> bytes:
    """The length-delimited field ``number`` holding ``payload``, its key or its length padded to ``width`` bytes."""
    key = number << 3 | 2
    if what == "key":
        return overlong(key, width) + varint(len(payload)) + payload
    return varint(key) + overlong(len(payload), width) + payload


PADDED = {
    # where a key or length is padded: (raw GradRequest of that width, places lift takes when protobuf reads it)
    "input length": (lambda w: padded(INPUT, BIG, w, "length"), [("inputs", 0)]),
    "input key": (lambda w: padded(INPUT, BIG, w, "key"), [("inputs", 0)]),
    "data length": (lambda w: field(INPUT, 2, padded(3, b"D" * SMALL, w, "length")), [("inputs", 0)]),
    "entry length": (lambda w: padded(PARAMS, field(1, 2, b"w") + field(2, 2, BIG), w, "length"), [("parameters", "w")]),
    "value length": (lambda w: field(PARAMS, 2, field(1, 2, b"w") + padded(2, BIG, w, "length")), [("parameters", "w")]),
    "value data length": (lambda w: entry(b"w", padded(3, b"D" * SMALL, w, "length")), [("parameters", "w")]),
}


@pytest.mark.parametrize("width", range(1, 8))
@pytest.mark.parametrize("make, places", PADDED.values(), ids=PADDED.keys())
def test_keys_and_lengths_padded_past_5_bytes_are_refused_as_protobuf_refuses_them(make: Any, places: list[blobs.Where],
                                                                                   width: int) -> None:
    """Protobuf reads a key or length padded to at most 5 bytes and refuses a longer one: so does ``lift``."""
    got = check_lift(make(width) + field(INPUT, 2, b""), spb.GradRequest)
    if width <= 5:
        assert got is not None and got.places == places
    else:
        assert got is None, "protobuf refuses it, and so does lift"


def test_lift_leaves_bad_utf8_keys_to_protobuf() -> None:
    with pytest.raises(DecodeError):
        blobs.lift(entry(b"\xff\xfe", BIG), spb.GradRequest)


def test_lift_reads_the_threshold_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = field(INPUT, 2, field(3, 2, b"d" * 2 * SMALL))
    assert blobs.lift(raw, spb.GradRequest).places == [("inputs", 0)]
    monkeypatch.setattr(blobs, "BLOB_MIN_BYTES", len(raw) + 1)  # smaller requests are parsed whole
    got = blobs.lift(raw, spb.GradRequest)
    assert got.places == [] and got.data == [] and got.message == spb.GradRequest.FromString(raw)


def test_lifted_data_are_views_of_the_raw_request_not_copies() -> None:
    x = np.arange(1 << 18, dtype=np.float32)
    request = spb.RunRequest(network_id="n", inputs=[pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[x.size], data=x.tobytes())])
    raw = request.SerializeToString()
    got = blobs.lift(raw, spb.RunRequest)
    assert got.places == [("inputs", 0)] and got.message.ByteSize() < 64
    lifted = np.frombuffer(got.data[0], np.float32)
    assert np.shares_memory(lifted, np.frombuffer(raw, np.uint8)) and np.array_equal(lifted, x)


# ---- splice ----

@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 1 << 21])
def test_data_header_frames_a_tensor_holding_only_data(n: int) -> None:
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    assert pb.Tensor.FromString(blobs.data_header(n) + data) == pb.Tensor(data=data)


Tree = Any  # ("tensor", Tensor) | ("tuple", [Tree]) | ("unset",)

trees: st.SearchStrategy[Tree] = st.recursive(
    tensor_msg().map(lambda t: ("tensor", t)) | st.just(("unset",)),
    lambda items: st.lists(items, max_size=3).map(lambda xs: ("tuple", xs)),
    max_leaves=10,
)


def build(tree: Tree, out: pb.TensorTree) -> None:
    if tree[0] == "tensor":
        out.tensor.CopyFrom(tree[1])
    elif tree[0] == "tuple":
        out.tuple.SetInParent()
        for item in tree[1]:
            build(item, out.tuple.items.add())


def take_data(message: Any, fields: tuple[str, ...], leaves: list[int], as_views: bool) -> list[Any]:
    """Empty the data of the numbered leaves and return it framed as a worker does; as views of one
    buffer standing in for shared memory, or as bytes."""
    tensors = blobs.leaves_of(message, fields)
    frames = [blobs.data_header(len(tensors[k].data)) + tensors[k].data for k in leaves]
    for k in leaves:
        tensors[k].ClearField("data")
    if not as_views:
        return frames
    arena = memoryview(bytearray(b"\x00" * 7 + b"".join(frames)))
    spans, at = [], 7
    for f in frames:
        spans.append(arena[at:at + len(f)])
        at += len(f)
    return spans


def check_splice(message: Any, fields: tuple[str, ...], leaves: list[int], as_views: bool) -> None:
    whole = type(message)()
    whole.CopyFrom(message)
    frames = take_data(message, fields, leaves, as_views)
    before = message.SerializeToString()
    filled = type(message)()
    filled.CopyFrom(message)
    tensors = blobs.leaves_of(filled, fields)
    for k, frame in zip(leaves, frames):  # protobuf merges each frame (a Tensor holding only data) into its leaf
        tensors[k].MergeFromString(frame)
    parts = blobs.around(message, fields, leaves, [len(f) for f in frames])
    assert len(parts) == len(frames) + 1 and all(isinstance(p, bytes) for p in parts)
    out = blobs.splice(parts, frames)
    for f in frames:
        if isinstance(f, memoryview):
            f.release()  # shared memory goes away right after
    assert isinstance(out, bytes)
    assert message.SerializeToString() == before  # around does not change its message
    assert type(message).FromString(out) == filled == whole


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_splice_serializes_like_merging_the_frames(data: st.DataObject) -> None:
    fields: tuple[str, ...]
    if data.draw(st.booleans()):
        message, fields = spb.GradResponse(network_id="n", request_id=data.draw(st.text(max_size=3))), ("gradients", "forward")
        if data.draw(st.booleans()):
            message.error.CopyFrom(status_pb2.Status(code=3, message="m"))
    else:
        message, fields = spb.RunResponse(network_id="n", request_id="r"), ("outputs",)
    for name in fields:
        if data.draw(st.integers(0, 4)):
            build(data.draw(trees), getattr(message, name))
    count = len(blobs.leaves_of(message, fields))
    leaves = data.draw(st.lists(st.integers(0, count - 1), unique=True)) if count else []
    check_splice(message, fields, sorted(leaves), data.draw(st.booleans()))


def test_splice_deep_and_wide_trees() -> None:
    deep = ("tensor", pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[5], data=b"deep!"))
    for _ in range(45):  # 45 tuples are 90 nested messages, near protobuf's parsing limit of 100
        deep = ("tuple", [("tuple", []), deep, ("unset",)])
    wide = ("tuple", [("tensor", pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[1], data=bytes([i % 256]))) for i in range(2000)])
    message = spb.GradResponse(network_id="n")
    build(deep, message.gradients)
    build(wide, message.forward)
    check_splice(message, ("gradients", "forward"), [0, 1, 500, 2000], as_views=True)
    check_splice(message, ("gradients", "forward"), [], as_views=False)


def test_splice_without_leaves_is_protobuf_serialization() -> None:
    message = spb.RunResponse(network_id="n", request_id="r")
    message.outputs.tensor.data = b"x"
    assert blobs.splice(blobs.around(message, ("outputs",), [], []), []) == message.SerializeToString()


# ---- locate ----

def test_locate_finds_one_field_of_a_serialized_request() -> None:
    graph = pb.Graph(inputs=[pb.GraphInput(name="x", dtype=pb.DATA_TYPE_FLOAT32, shape=[3])])
    graph.library["f"].SetInParent()
    request = spb.GradRequest(graph=graph, request_id="r", inputs=[pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[2], data=b"ab")])
    raw = request.SerializeToString()
    number = spb.GradRequest.DESCRIPTOR.fields_by_name["graph"].number
    found = blobs.locate(raw, number)
    assert found is not None
    start, begin, end = found
    assert pb.Graph.FromString(raw[begin:end]) == graph
    without = spb.GradRequest()
    without.CopyFrom(request)
    without.ClearField("graph")
    assert spb.GradRequest.FromString(raw[:start] + raw[end:]) == without
    assert blobs.locate(raw + raw, number) is None  # given twice: protobuf merges, so it is left to protobuf
    assert blobs.locate(spb.GradRequest(network_id="n").SerializeToString(), number) is None
    assert blobs.locate(raw[:-1], number) is None  # truncated framing


def test_parse_takes_requests_whole_between_the_blob_size_and_its_limit_and_lifts_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(blobs, "WHOLE_MAX_BYTES", 4096)

    def request(n: int) -> bytes:
        x = np.arange(n, dtype=np.float32)
        tensor = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[n], data=x.tobytes())
        return spb.GradRequest(network_id="n", inputs=[tensor], parameters={"w": tensor}).SerializeToString()

    tiny, medium, large = spb.GradRequest(network_id="n").SerializeToString(), request(256), request(2048)
    assert len(tiny) < SMALL < len(medium) <= blobs.WHOLE_MAX_BYTES < len(large)
    for raw in (tiny, large):  # lifted at once, as before
        got, want = blobs.parse(raw, spb.GradRequest), blobs.lift(raw, spb.GradRequest)
        assert not got.whole and got == want
    whole = blobs.parse(medium, spb.GradRequest)
    assert whole.whole and whole.message == spb.GradRequest.FromString(medium) and whole.raw == medium
    assert whole.places == [] and whole.data == []
    with pytest.raises(DecodeError):
        blobs.parse(medium[:-3], spb.GradRequest)  # cut inside the last tensor: protobuf's own error, as for lift
