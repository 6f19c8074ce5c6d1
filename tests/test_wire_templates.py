"""The codec's templates against protobuf itself: a request joined by its layout's Template is byte for byte what
protobuf serializes, and a response read by a TreeReader is bitwise what ``decode_tree`` gives after full parsing,
for several dtypes and shapes; a changed or irregular layout falls back to full parsing."""
from __future__ import annotations

import numpy as np
import pytest

from gradserve.proto import codec
from gradserve.proto.codec.templates import Template, TreeReader, slots
from gradserve.server.blobs import around, data_header, frame_size, splice
from gradserve.v1 import graph_pb2, service_pb2

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]
SHAPES = [(), (1,), (3,), (2, 3), (0, 4), (2, 1, 5), (40, 70)]


def arrays(seed: int, types: list[tuple[type, tuple[int, ...]]]) -> list[np.ndarray]:
    """Random arrays of ``types`` (bools 0/1, integers over their whole range, floats of any sign and size)."""
    rng = np.random.default_rng(seed)
    out = []
    for dt, shape in types:
        if dt is np.bool_:
            out.append(rng.integers(0, 2, shape).astype(np.bool_))
        elif np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            out.append(rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True))
        else:
            out.append(np.asarray(rng.standard_normal(shape) * 1e3).astype(dt))
    return out


TYPES = [(dt, shape) for i, dt in enumerate(DTYPES) for shape in (SHAPES[i % len(SHAPES)], SHAPES[(i + 3) % len(SHAPES)])]


def grad_request(inputs: list[np.ndarray], params: dict[str, np.ndarray], network_id: str = "n" * 64) -> bytes:
    """A GradRequest serialized by protobuf (deterministically: map entries sorted by key)."""
    req = service_pb2.GradRequest(network_id=network_id, grad=codec.encode_grad_operation(False, True, False, tuple(params)))
    for a in inputs:
        codec.encode_tensor(a, req.inputs.add())
    for name, a in params.items():
        codec.encode_tensor(a, req.parameters[name])
    return req.SerializeToString(deterministic=True)


def grad_response(tree: object, network_id: str = "n" * 64) -> bytes:
    """A GradResponse holding ``tree`` serialized by protobuf."""
    resp = service_pb2.GradResponse(network_id=network_id)
    codec.encode_tree(tree, resp.gradients)
    return resp.SerializeToString()


def decoded(raw: bytes) -> object:
    """The gradients of the GradResponse ``raw`` by full parsing."""
    return codec.decode_tree(service_pb2.GradResponse.FromString(raw).gradients)


def same(a: object, b: object) -> None:
    """``a`` and ``b`` are trees of the same structure whose leaves have equal dtypes, shapes and bytes."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
        return
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes()


def test_a_joined_request_is_what_protobuf_serializes_for_every_dtype_and_shape() -> None:
    first = arrays(0, TYPES)
    inputs, params = first[:5], {f"p{i}": a for i, a in enumerate(first[5:])}
    template = Template.learn(grad_request(inputs, params), service_pb2.GradRequest.DESCRIPTOR)
    assert template is not None
    assert template.paths[:5] == [("inputs", i) for i in range(5)]
    assert sorted(template.paths[5:]) == [("parameters", n) for n in sorted(params)]
    for seed in (1, 2):
        new = arrays(seed, TYPES)
        by_path = {("inputs", i): a for i, a in enumerate(new[:5])} | {("parameters", f"p{i}"): a for i, a in enumerate(new[5:])}
        joined = template.join([by_path[p] for p in template.paths])
        assert joined == grad_request(new[:5], {f"p{i}": a for i, a in enumerate(new[5:])})


def test_a_request_of_other_types_is_not_joined_and_strided_arrays_are_joined_in_c_order() -> None:
    x, w = np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((4, 3))
    template = Template.learn(grad_request([x], {"w": w}), service_pb2.GradRequest.DESCRIPTOR)
    assert template is not None
    assert template.join([x.astype(np.float64), w]) is None  # dtype
    assert template.join([x[:2], w]) is None  # shape
    assert template.join([x]) is None  # count
    strided, transposed = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T, np.arange(12.0).reshape(3, 4).T
    assert strided.shape == x.shape and transposed.shape == w.shape
    assert not strided.flags.c_contiguous and not transposed.flags.c_contiguous
    assert template.join([strided, transposed]) == grad_request([strided], {"w": transposed})


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_response_read_by_its_layout_equals_full_parsing(dtype: type) -> None:
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    types = [(dtype, s) for s in SHAPES]
    earlier = []
    layout = None
    for seed in range(3):
        leaves = arrays(seed, types)
        tree = (leaves[0], (leaves[1], (leaves[2],)), leaves[3], (), tuple(leaves[4:]))
        raw = grad_response(tree)
        got = reader(raw)
        same(got, decoded(raw))
        same(got, tree)
        assert reader.layout is not None, "the first response teaches the layout"
        layout = layout if seed else reader.layout
        assert reader.layout is layout, "later ones are read by it"
        earlier.append((got, tree))
    for got, tree in earlier:  # results of earlier calls stay intact
        same(got, tree)


def test_results_are_read_only_as_full_parsing_gives_them_and_alias_only_their_own_response() -> None:
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    tree = (np.arange(5, dtype=np.float32), np.arange(3, dtype=np.int64), np.arange(7, dtype=np.int8))
    reader(grad_response(tree))
    raw = grad_response(tuple(a + 1 for a in tree))
    got = reader(raw)
    assert reader.layout is not None
    for a, b in zip(got, decoded(raw)):
        assert a.flags.writeable is b.flags.writeable is False
        assert a.flags.aligned
    held = [a for a, s in zip(got, reader.layout[0].slots) if s.start % s.dtype.alignment == 0]
    assert held, "aligned data is viewed in place"
    assert all(np.shares_memory(a, np.frombuffer(raw, np.uint8)) for a in held)


def changed_layouts() -> list[tuple[str, bytes]]:
    """Responses whose layout differs from ``grad_response(BASE)``'s."""
    f32 = np.ones(4, np.float32)
    extra = service_pb2.GradResponse.FromString(grad_response(BASE))
    extra.request_id = "7"
    forward = service_pb2.GradResponse.FromString(grad_response(BASE))
    codec.encode_tree(f32, forward.forward)
    return [
        ("a shape", grad_response((np.ones(5, np.float32), BASE[1]))),
        ("a dtype", grad_response((f32.astype(np.int32), BASE[1]))),
        ("the same bytes as another dtype", grad_response((f32.view(np.int32), BASE[1]))),
        ("the tree", grad_response(((f32,), BASE[1]))),
        ("the network id", grad_response(BASE, "m" * 64)),
        ("a request id", extra.SerializeToString()),
        ("forward outputs", forward.SerializeToString()),
        ("an unknown field at the end", grad_response(BASE) + b"\x50\x01"),
    ]


BASE = (np.arange(4, dtype=np.float32), np.arange(6, dtype=np.float64).reshape(2, 3))


@pytest.mark.parametrize("what", [name for name, _ in changed_layouts()])
def test_a_changed_layout_falls_back_to_full_parsing_and_is_learned(what: str) -> None:
    raw = dict(changed_layouts())[what]
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    reader(grad_response(BASE))
    learned = reader.layout
    assert learned is not None and learned[0].read(raw) is None
    same(reader(raw), decoded(raw))
    if reader.layout is not None and reader.layout is not learned:
        same(reader(raw), decoded(raw))  # now by its own layout
    same(reader(grad_response(BASE)), BASE)


def test_irregular_framing_gives_no_template_and_full_parsing_decides() -> None:
    tensor = graph_pb2.Tensor()
    codec.encode_tensor(np.ones(2, np.float32), tensor)
    tensor_bytes = tensor.SerializeToString()
    key = b"\x0a" + bytes([len(tensor_bytes)])  # TensorTree.tensor
    tree = key + tensor_bytes
    irregular = {
        "two network ids": grad_response(BASE) + b"\x1a\x01x",
        "both members of the tree's oneof": b"\x0a" + bytes([len(tree) + 2]) + tree + b"\x12\x00",
        "a repeated dtype": b"\x0a" + bytes([len(tree) + 2]) + b"\x0a" + bytes([len(tensor_bytes) + 2]) + b"\x08\x03" + tensor_bytes,
        "an unknown field": b"\x50\x01" + grad_response(BASE),
    }
    for name, raw in irregular.items():
        assert slots(raw, service_pb2.GradResponse.DESCRIPTOR) is None, name
        reader = TreeReader(service_pb2.GradResponse, "gradients")
        same(reader(raw), decoded(raw))
        assert reader.layout is None, name


def test_bool_data_other_than_0_or_1_is_refused_as_full_parsing_refuses_it() -> None:
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    good = np.array([True, False, True])
    reader(grad_response(good))
    raw = grad_response(good).replace(b"\x01\x00\x01", b"\x01\x02\x01")
    assert reader.layout is not None and reader.layout[0].read(raw) is None
    with pytest.raises(codec.WireError, match="bool elements"):
        reader(raw)


def test_a_response_the_server_cuts_around_large_leaves_is_read_as_parsed() -> None:
    small, large = np.arange(10, dtype=np.float32), np.arange(40_000, dtype=np.float32).reshape(200, 200)
    reader = TreeReader(service_pb2.GradResponse, "gradients")
    layout = None
    for k in range(3):
        tree = (small + k, large * k)
        resp = service_pb2.GradResponse(network_id="n" * 64)
        codec.encode_tree((tree[0], tree[1].reshape(-1)[:0]), resp.gradients)
        resp.gradients.tuple.items[1].tensor.shape[:] = tree[1].shape
        frame = codec.encode_tensor(tree[1]).data
        raw = splice(around(resp, ("gradients",), [1], [frame_size(len(frame))]), [data_header(len(frame)) + frame])
        got = reader(raw)
        same(got, decoded(raw))
        same(got, tree)
        layout = layout if k else reader.layout
        assert layout is not None and reader.layout is layout
