"""The codec's templates at the edges of a layout, against protobuf itself as the oracle: every single-byte change of a
learned response falls back to full parsing, so do proto3's omitted defaults, length prefixes that change width, and
ids that change length; varints protobuf reads modulo 2**64, responses given as mutable buffers, and one reader shared by
several threads give what full parsing gives."""
from __future__ import annotations

import tracemalloc
from concurrent import futures
from typing import Any

import numpy as np
import pytest

from gradserve.proto import codec
from gradserve.proto.codec.templates import Template, TreeReader, slots
from gradserve.server.blobs import around, data_header, frame_size
from gradserve.v1 import service_pb2


def varint(n: int) -> bytes:
    """``n`` as a base-128 varint, as long as it takes (beyond 64 bits too)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def response(tree: Any, network_id: str = "n" * 64, request_id: str = "") -> bytes:
    """A GradResponse holding ``tree`` as its gradients, serialized by protobuf."""
    resp = service_pb2.GradResponse(network_id=network_id, request_id=request_id)
    codec.encode_tree(tree, resp.gradients)
    return resp.SerializeToString()


def parsed(raw: bytes) -> Any:
    """The gradients of ``raw`` by full parsing, or the type of the error full parsing raises."""
    try:
        return codec.decode_tree(service_pb2.GradResponse.FromString(bytes(raw)).gradients)
    except Exception as exc:  # the oracle's error type is what is compared
        return type(exc)


def read(reader: TreeReader, raw: Any) -> Any:
    """What ``reader`` gives for ``raw``, or the type of the error it raises."""
    try:
        return reader(raw)
    except Exception as exc:
        return type(exc)


def same(a: Any, b: Any) -> bool:
    """Equal trees: the same structure, dtypes, shapes and bytes (or the same error type)."""
    if isinstance(a, type) or isinstance(b, type):
        return a is b
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return (isinstance(b, np.ndarray) and (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes()
            and not a.flags.writeable)


def learned(raw: bytes) -> TreeReader:
    """A reader that has learned the layout of ``raw``."""
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    assert same(reader(raw), parsed(raw))
    assert reader.layout is not None
    return reader


BASE = (np.arange(3, dtype=np.float32), np.array(True), (np.arange(4, dtype=np.int16).reshape(2, 2),), np.zeros((0, 2)))


def test_every_single_byte_changed_outside_the_data_is_read_as_full_parsing_reads_it() -> None:
    raw = response(BASE, "ab")
    reader = learned(raw)
    template = reader.layout[0]  # type: ignore[index]
    data = {i for s in template.slots for i in range(s.start, s.start + s.nbytes)}
    for i in sorted(set(range(len(raw))) - data):
        for value in {raw[i] ^ 1, raw[i] ^ 0x80, 0, 0xFF} - {raw[i]}:
            changed = raw[:i] + bytes([value]) + raw[i + 1:]
            assert template.read(changed) is None, i
            assert same(read(learned(raw), changed), parsed(changed)), (i, value)
    for i in range(len(raw) + 1):  # a byte more or less anywhere
        for changed in (raw[:i] + b"\x00" + raw[i:], raw[:i] + raw[i + 1:])[:1 + (i < len(raw))]:
            assert template.read(changed) is None
            assert same(read(learned(raw), changed), parsed(changed)), i


@pytest.mark.parametrize("what", ["zero-size leaf with explicit empty data", "empty tuple", "network id omitted",
                                  "a 0-d leaf of zeros", "request id set"])
def test_proto3_defaults_omitted_or_written_are_read_as_parsed_in_either_order(what: str) -> None:
    tensor = service_pb2.GradResponse.FromString(response(BASE)).gradients.tuple.items[3].tensor
    explicit = field(1, field(2, b"".join(  # BASE with its zero-size leaf's empty data written, as server templates do
        field(1, field(1, item.tensor.SerializeToString() + (data_header(0) if item.tensor is tensor else b"")))
        if item.HasField("tensor") else field(1, item.SerializeToString())
        for item in service_pb2.GradResponse.FromString(response(BASE)).gradients.tuple.items))) + field(3, b"n" * 64)
    other = {
        "zero-size leaf with explicit empty data": explicit,
        "empty tuple": response((BASE[0], (), BASE[2], BASE[3])),
        "network id omitted": response(BASE, ""),
        "a 0-d leaf of zeros": response((BASE[0], np.array(False), BASE[2], BASE[3])),
        "request id set": response(BASE, request_id="1"),
    }[what]
    assert same(parsed(explicit), parsed(response(BASE)))
    for first, second in ((response(BASE), other), (other, response(BASE))):
        reader = learned(first)
        for raw in (second, first, second):
            assert same(reader(raw), parsed(raw))


def test_data_whose_length_prefix_changes_width_or_moves_between_leaves_falls_back() -> None:
    narrow, wide = response((np.arange(127, dtype=np.int8), BASE[0])), response((np.arange(128, dtype=np.int8), BASE[0]))
    assert len(wide) == len(narrow) + 3  # the shape's dimension and the data's length take a byte more, and so their parents'
    reader = learned(narrow)
    assert same(reader(wide), parsed(wide)) and same(reader(narrow), parsed(narrow))
    a, b = response((np.arange(4, dtype=np.int8), np.arange(8, dtype=np.int8))), response((np.arange(8, dtype=np.int8), np.arange(4, dtype=np.int8)))
    assert len(a) == len(b)  # the same size, the data lengths swapped
    reader = learned(a)
    assert reader.layout[0].read(b) is None  # type: ignore[index]
    assert same(reader(b), parsed(b)) and same(reader(a), parsed(a))


@pytest.mark.parametrize("ids", [("n" * 64, "n" * 63), ("", "x"), ("a" * 127, "a" * 128)])
def test_a_network_id_of_another_length_falls_back(ids: tuple[str, str]) -> None:
    first, second = (response(BASE, i) for i in ids)
    reader = learned(first)
    assert reader.layout[0].read(second) is None  # type: ignore[index]
    for raw in (second, first, second):
        assert same(reader(raw), parsed(raw))


def test_a_shape_varint_beyond_64_bits_is_read_as_protobuf_reads_it_modulo_2_to_the_64() -> None:
    """Protobuf keeps the low 64 bits of a 10-byte varint: a zero-size tensor's dimension of 2**65 + 5 is 5."""
    for dim in ((1 << 65) + 5, (1 << 64) + 5, (1 << 69) + 3):
        tensor = b"\x08\x03" + field(2, varint(0) + varint(dim))
        raw = field(1, field(1, tensor)) + field(3, b"n" * 8)
        assert len(varint(dim)) == 10
        want = parsed(raw)
        assert isinstance(want, np.ndarray) and want.shape == (0, dim % (1 << 64))
        found = slots(raw, service_pb2.GradResponse.DESCRIPTOR)
        assert found is None or found[0].shape == want.shape
        reader = TreeReader(service_pb2.GradResponse, "gradients")
        assert same(reader(raw), want) and same(reader(raw), want)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_response_in_a_mutable_or_borrowed_buffer_gives_arrays_that_do_not_change_with_it(kind: type) -> None:
    raw = response(BASE)
    reader = learned(raw)
    buffer = bytearray(raw)
    got = reader(kind(buffer))
    assert same(got, parsed(raw))
    buffer[:] = response(tuple(np.asarray(a) + 1 if a.dtype.kind != "b" else a for a in BASE[:2]) + BASE[2:])
    assert same(got, parsed(raw)), "the result changed with the buffer it was read from"


def test_threads_sharing_one_reader_across_layouts_read_each_response_as_parsed() -> None:
    layouts = [response((np.arange(n, dtype=np.float64) * k, BASE[1])) for n in (1, 2, 16) for k in (1.0, -2.5)]
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    bad: list[int] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            i = int(rng.integers(len(layouts)))
            if not same(reader(layouts[i]), parsed(layouts[i])):
                bad.append(i)

    with futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert not bad


def test_a_template_of_the_servers_framed_response_reads_it_whether_the_frame_is_first_or_not() -> None:
    """The server writes a large leaf's data as a frame after its tensor, and its other fields first (``around``)."""
    small, large = np.arange(3, dtype=np.int8), np.arange(20_000, dtype=np.float32)
    raws = []
    for k in range(2):
        resp = service_pb2.GradResponse(network_id="n" * 64)
        codec.encode_tree((large[:0], small + k), resp.gradients)
        resp.gradients.tuple.items[0].tensor.shape[:] = large.shape
        frame = codec.encode_tensor(large * k).data
        parts = around(resp, ("gradients",), [0], [frame_size(len(frame))])
        raws.append(parts[0] + data_header(len(frame)) + frame + parts[1])
    reader = learned(raws[0])
    assert reader.layout[0].read(raws[1]) is not None  # type: ignore[index]
    assert same(reader(raws[1]), parsed(raws[1]))
    assert Template.learn(raws[1], service_pb2.GradResponse.DESCRIPTOR) == reader.layout[0]  # type: ignore[index]


def overlong(value: int, width: int) -> bytes:
    """``value`` as a varint padded to ``width`` bytes."""
    return bytes((value >> 7 * i & 0x7F) | (0x80 if i < width - 1 else 0) for i in range(width))


@pytest.mark.parametrize("width", range(1, 11))
def test_keys_and_lengths_padded_past_what_protobuf_reads_give_no_template(width: int) -> None:
    """Protobuf reads a key or a length of at most 5 bytes (padded or not) and refuses a longer one."""
    one = b"\x00\x00\x80\x3f"  # float32 1.0
    padded_length = b"\x08\x03\x1a" + overlong(4, width) + one
    padded_key = b"\x08\x03" + overlong(3 << 3 | 2, width) + b"\x04" + one
    for tensor in (padded_length, padded_key):
        raw = field(1, field(1, tensor))
        want, template = parsed(raw), Template.learn(raw, service_pb2.GradResponse.DESCRIPTOR)
        if width <= 5:
            assert isinstance(want, np.ndarray) and want.shape == () and want == 1.0
            assert template is not None
            assert same(template.read(raw)[0], want)  # type: ignore[index]
        else:
            assert isinstance(want, type), "protobuf refuses it"
            assert template is None


def test_learning_the_layout_of_a_large_response_takes_a_few_times_its_size_in_memory_not_twenty_times() -> None:
    """The probe that checks a layout (its data filled with a pattern) is made without arrays of 8 bytes per data byte."""
    raw = response((np.arange(1_000_000, dtype=np.float32), np.arange(10, dtype=np.int8)))
    tracemalloc.start()
    try:
        parsed(raw)
        parsing = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        reader = TreeReader(service_pb2.GradResponse, "gradients")
        reader(raw)
        learning = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.layout is not None
    assert parsing >= len(raw) - 100  # full parsing copies the data once
    assert learning <= 6 * len(raw), f"learning took {learning / len(raw):.1f} times the response's size"


def test_a_map_entry_without_its_tensor_which_protobuf_reads_as_an_empty_one_gives_no_template() -> None:
    raw = field(1, b"n") + field(6, field(1, b"w"))  # GradRequest: network_id, parameters {"w": <no value>}
    request = service_pb2.GradRequest.FromString(raw)
    assert list(request.parameters) == ["w"] and request.parameters["w"].ByteSize() == 0
    assert slots(raw, service_pb2.GradRequest.DESCRIPTOR) is None
    assert Template.learn(raw, service_pb2.GradRequest.DESCRIPTOR) is None
