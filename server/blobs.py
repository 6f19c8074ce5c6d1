"""Moving large tensor bytes out of messages and back, so that they cross to workers in shared memory
instead of inside a pickled message. Only bytes move here; the codec interprets them.

Requests: ``lift`` finds the large tensor data in a request's raw bytes and returns it as views of them,
parsing only the small rest, which it keeps as bytes to hand on (``locate`` finds one field in such
bytes); ``parse`` takes a request of at most ``WHOLE_MAX_BYTES`` whole instead, for the server to compute itself. Responses: ``around`` serializes a response as the pieces between data frames of known sizes,
and ``splice`` joins the pieces with the frames, copying them once."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

from gradserve.proto import codec
from gradserve.v1 import graph_pb2

BLOB_MIN_BYTES = 64 * 1024
"""Tensors at least this large travel as blobs."""


Where = tuple[str, Any]
"""A tensor's place in a request: ("inputs" or "sens", index) or ("parameters", name)."""


def request_tensors(request: Any) -> Iterator[tuple[Where, graph_pb2.Tensor]]:
    """(place, Tensor) for the inputs, sensitivities and parameter overrides of a Grad/Run request."""
    for i, t in enumerate(request.inputs):
        yield ("inputs", i), t
    for i, t in enumerate(getattr(request, "sens", ())):
        yield ("sens", i), t
    for name in sorted(request.parameters):
        yield ("parameters", name), request.parameters[name]


def tree_leaves(tree: graph_pb2.TensorTree) -> Iterator[graph_pb2.Tensor]:
    """Tensors of a TensorTree in leaf order, walked without recursion."""
    stack = [tree]
    while stack:
        t = stack.pop()
        kind = t.WhichOneof("kind")
        if kind == "tensor":
            yield t.tensor
        elif kind == "tuple":
            stack.extend(reversed(t.tuple.items))


def leaves_of(message: Any, fields: tuple[str, ...]) -> list[graph_pb2.Tensor]:
    """The tensors of ``message``'s TensorTree ``fields`` that are set, in leaf order across them."""
    return [t for f in fields if message.HasField(f) for t in tree_leaves(getattr(message, f))]


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: Any) -> bytes:
    """The key of a length-delimited field (message, bytes or string) on the wire, from its descriptor."""
    return _varint(field.number << 3 | 2)


_DATA = graph_pb2.Tensor.DESCRIPTOR.fields_by_name["data"]
_DATA_KEY = _key(_DATA)
"""The key of Tensor.data on the wire."""


def data_header(nbytes: int) -> bytes:
    """The bytes that, followed by ``nbytes`` of data, are a serialized Tensor holding only that data.

    Workers frame result data this way in shared memory, so that ``splice`` puts each frame into the
    response bytes straight from the shared buffer (one copy)."""
    return _DATA_KEY + _varint(nbytes)


@dataclass(frozen=True, slots=True)
class Lifted:
    """A request parsed without the data of its large tensors, and that data as views of the raw bytes (or
    parsed ``whole``, with that data)."""

    message: Any
    """The request; the tensors at ``places`` have no data."""
    places: list[Where]
    """Where each of ``data`` belongs, in ``request_tensors`` order."""
    data: list[memoryview]
    """The data of the tensor at ``places[i]``: a slice of the raw request, not a copy."""
    raw: bytes
    """The bytes ``message`` was parsed from: the request without ``data``."""
    whole: bool = False
    """Parsed whole by ``parse``: ``data`` is empty, and ``message`` holds the data of its large tensors and ``raw``
    all of the request (``lift`` of those bytes takes the data out, for a worker)."""
    known: Any = None
    """Not parsed: ``raw``, all of the request, is laid out as one the server process computed (``lane.Known``), so
    that protobuf would parse it as that one; ``message`` is None (the servicer parses ``raw`` if it needs one)."""


class _Malformed(Exception):
    """A parameters map entry that ``lift`` does not take apart, so that protobuf alone decides what it means (as
    ``codec.Irregular`` says of framing that protobuf refuses or might read otherwise)."""


class _Layout(NamedTuple):
    """The field numbers of a request type that ``lift`` looks at."""

    repeated: dict[int, str]  # number -> name of the repeated Tensor fields, "inputs" then "sens"
    parameters: int  # the map<string, Tensor> field
    key: int  # the map entries' fields
    value: int


@functools.cache
def _layout(descriptor: Any) -> _Layout | None:
    """The layout of the request type ``descriptor`` describes, read once per type (None: it has no tensors)."""
    fields = descriptor.fields_by_name
    if "parameters" not in fields:
        return None
    entry = fields["parameters"].message_type.fields_by_name
    return _Layout({fields[name].number: name for name in ("inputs", "sens") if name in fields},
                   fields["parameters"].number, entry["key"].number, entry["value"].number)


def _big_data(buf: bytes, pos: int, end: int, least: int) -> tuple[int, int, int] | None:
    """Where the data field of the serialized Tensor ``buf[pos:end]`` starts, where its bytes start and
    where they end, when the Tensor has exactly one data field and it holds at least ``least`` bytes;
    otherwise None, and the Tensor is left to protobuf as it is."""
    found = None
    try:
        for start, number, wire, begin, after in codec.read_fields(buf, pos, end):
            if number == _DATA.number:
                if found is not None or wire != 2:
                    return None  # protobuf keeps the last of several, and a stray wire type aside
                found = (start, begin, after)
    except codec.Irregular:
        return None
    return found if found is not None and found[2] - found[1] >= least else None


def _entry(buf: bytes, pos: int, end: int, layout: _Layout) -> tuple[tuple[int, int], tuple[int, int, int] | None]:
    """The key's span in the parameters map entry ``buf[pos:end]`` (the last key wins; empty when
    missing) and its value field as (start, payload start, payload end), None when missing or given
    several times (protobuf merges those). Any other field raises _Malformed: protobuf then puts the
    whole entry aside as an unknown field instead of into the map."""
    key, value, values = (pos, pos), None, 0
    for start, number, wire, begin, after in codec.read_fields(buf, pos, end):
        if wire != 2:
            raise _Malformed
        if number == layout.key:
            key = (begin, after)
        elif number == layout.value:
            value, values = (start, begin, after), values + 1
        else:
            raise _Malformed
    return key, value if values == 1 else None


def lift(raw: bytes, cls: type[Any]) -> Lifted:
    """``cls`` (GradRequest or RunRequest; any other type is parsed whole) parsed from ``raw`` without the data of its large top-level
    tensors (inputs, sens and parameters holding at least BLOB_MIN_BYTES), which stays in ``raw`` and
    is returned as views of it.

    Parsing a 64 MB request with protobuf and reading ``data`` copies the data twice; here only the
    small rest is parsed, after one join of its pieces. Putting each view back as its tensor's data
    gives exactly ``cls.FromString(raw)``: whatever this does not take apart with certainty (see
    ``codec.read_fields``, which walks as strictly as protobuf parses, ``_big_data`` and ``_entry``) stays in
    place, or makes it parse ``raw`` whole, so protobuf raises its own DecodeError on malformed input. Small requests are parsed at once."""
    least, layout = BLOB_MIN_BYTES, _layout(cls.DESCRIPTOR)
    if len(raw) >= least and layout is not None:
        try:
            kept, places, data = _take_apart(raw, layout, least)
        except (codec.Irregular, _Malformed):
            pass  # parsed whole below: protobuf reads those bytes, or raises its DecodeError
        else:
            if data:
                rest = b"".join(kept)
                return Lifted(cls.FromString(rest), places, data, rest)
    return Lifted(cls.FromString(raw), [], [], raw)


WHOLE_MAX_BYTES = 256 << 10
"""Requests up to this size are parsed whole (``parse``): protobuf copies their bytes faster than ``lift`` finds their
tensors (up to about 1 MiB for a request of a dozen tensors, a third of that for one tensor alone), and the copy, held
beside the received bytes until the call ends, stays small (``config.Limits.max_queued_bytes`` does not count it)."""


def parse(raw: bytes, cls: type[Any]) -> Lifted:
    """``cls`` parsed from ``raw``: whole when it is at most ``WHOLE_MAX_BYTES`` (a request the server computes itself
    needs no more; one going to a worker is ``lift``ed then), else ``lift``ed."""
    if len(raw) < BLOB_MIN_BYTES or len(raw) > WHOLE_MAX_BYTES:
        return lift(raw, cls)
    return Lifted(cls.FromString(raw), [], [], raw, True)


def locate(raw: bytes, number: int) -> tuple[int, int, int] | None:
    """Where the length-delimited field ``number`` of the serialized message ``raw`` is: (start of its key, start
    and end of its payload); None unless the field is there exactly once as bytes (protobuf merges repeated ones)
    in plain framing, in which case the caller serializes what it needs."""
    found = None
    try:
        for start, field, wire, begin, end in codec.read_fields(raw, 0, len(raw)):
            if field == number:
                if found is not None or wire != 2:
                    return None
                found = start, begin, end
    except codec.Irregular:
        return None
    return found


def _take_apart(raw: bytes, layout: _Layout, least: int) -> tuple[list[Any], list[Where], list[memoryview]]:
    """The pieces of ``raw`` without the large data of its top-level tensors, and that data's places
    and views, for ``lift``. Each Tensor (and parameters map entry) that loses its data field gets
    its length prefix rewritten; every other byte is kept as it is, as views of ``raw``."""
    view = memoryview(raw)
    kept: list[Any] = []
    done = 0  # raw[done:] is not in kept yet
    count = dict.fromkeys(layout.repeated.values(), 0)
    listed: dict[str, list[tuple[int, memoryview]]] = {name: [] for name in count}
    params: dict[str, memoryview] = {}
    repeated = layout.repeated
    for start, number, wire, begin, end in codec.read_fields(raw, 0, len(raw)):
        if wire != 2:
            continue  # a stray wire type: protobuf keeps the field aside as an unknown field
        name = repeated.get(number)
        if name is not None:
            index = count[name]
            count[name] = index + 1
            if end - begin < least or (found := _big_data(raw, begin, end, least)) is None:
                continue
            cut, at, stop = found
            head = codec.read_varint(raw, start, end)[1]
            kept += (view[done:head], _varint(end - begin - (stop - cut)), view[begin:cut])
            listed[name].append((index, view[at:stop]))
            done = stop
        elif number == layout.parameters:
            (k0, k1), value = _entry(raw, begin, end, layout)
            key = str(raw[k0:k1], "utf-8", "surrogateescape")  # protobuf rejects bad UTF-8 when it parses
            found = _big_data(raw, value[1], value[2], least) if value and value[2] - value[1] >= least else None
            if value is None or found is None:
                params.pop(key, None)  # this entry replaces any earlier one of that key
                continue
            vstart, vbegin, vend = value
            cut, at, stop = found
            head = codec.read_varint(raw, start, end)[1]
            vhead = codec.read_varint(raw, vstart, vend)[1]
            tensor = _varint(vend - vbegin - (stop - cut))
            entry = end - begin - (vbegin - vhead) + len(tensor) - (stop - cut)
            kept += (view[done:head], _varint(entry), view[begin:vhead], tensor, view[vbegin:cut])
            params[key] = view[at:stop]
            done = stop
    kept.append(view[done:])
    places: list[Where] = [(name, index) for name, items in listed.items() for index, _ in items]
    data = [d for items in listed.values() for _, d in items]
    for key in sorted(params):
        places.append(("parameters", key))
        data.append(params[key])
    return kept, places, data


_TREE = graph_pb2.TensorTree.DESCRIPTOR.fields_by_name
_TENSOR_KEY = _key(_TREE["tensor"])
_TUPLE_KEY = _key(_TREE["tuple"])
_ITEM_KEY = _key(graph_pb2.TensorTuple.DESCRIPTOR.fields_by_name["items"])


def frame_size(nbytes: int) -> int:
    """The size of the frame (``data_header`` and the data) of ``nbytes`` of tensor data."""
    return len(data_header(nbytes)) + nbytes


def around(message: Any, fields: tuple[str, ...], leaves: list[int], sizes: list[int]) -> list[bytes]:
    """``message`` serialized as the ``len(leaves) + 1`` pieces between frames of ``sizes`` bytes, each
    frame merged into the leaf tensor numbered in ``leaves`` (ascending); ``splice`` joins them.

    The tree fields with frames are written here: their leaf tensors and frameless subtrees serialized
    by protobuf, each frame after its tensor, the enclosing keys and lengths computed; the other fields
    are serialized by protobuf and come first. Unknown fields of the TensorTree and TensorTuple
    messages above a frame are not kept (responses built by protobuf have none). ``message`` is not changed."""
    if not leaves:
        return [message.SerializeToString()]
    by_leaf = dict(zip(leaves, sizes))
    rest = type(message)()
    rest.CopyFrom(message)
    trees: list[Any] = []
    first = 0
    for name in fields:
        if not message.HasField(name):
            continue
        parts, size, first = _tree(getattr(message, name), by_leaf, first)
        if parts is not None:
            rest.ClearField(name)
            trees += (_key(message.DESCRIPTOR.fields_by_name[name]) + _varint(size), *parts)
    out: list[bytes] = []
    cut: list[bytes] = [rest.SerializeToString()]
    for piece in trees:
        if isinstance(piece, int):  # where a frame goes
            out.append(b"".join(cut))
            cut = []
        else:
            cut.append(piece)
    out.append(b"".join(cut))
    return out


def splice(parts: list[bytes], frames: list[Any]) -> bytes:
    """``parts[0] + frames[0] + parts[1] + ... + parts[-1]``, copying each frame (bytes, or a view that may
    be released afterwards) once."""
    if not frames:
        return parts[0]
    joined: list[Any] = [parts[0]]
    for frame, part in zip(frames, parts[1:]):
        joined += (frame, part)
    return b"".join(joined)


def _tree(tree: graph_pb2.TensorTree, frames: dict[int, int], first: int) -> tuple[list[Any] | None, int, int]:
    """The serialized ``tree`` as pieces, with the leaf number standing where each frame goes (``frames``:
    frame sizes by leaf number, its leaves numbered from ``first``) after its leaf tensor, its size, and the
    next leaf number; None for the pieces when none of its leaves has a frame. Walked without recursion:
    sizes children first, then pieces in order."""
    nodes: list[graph_pb2.TensorTree] = []
    children: list[list[int]] = []
    leaf: list[int] = []  # the leaf number of each tensor node, -1 for the others
    stack = [(tree, -1)]
    while stack:  # pre-order, which is leaf order
        node, parent = stack.pop()
        here = len(nodes)
        nodes.append(node)
        children.append([])
        if parent >= 0:
            children[parent].append(here)
        kind = node.WhichOneof("kind")
        if kind == "tensor":
            leaf.append(first)
            first += 1
        else:
            leaf.append(-1)
            if kind == "tuple":
                stack.extend((item, here) for item in reversed(node.tuple.items))
    head: dict[int, bytes] = {}  # key and length of the tensor or tuple of each node with a frame below
    body: dict[int, bytes] = {}  # serialized: the tensor of a leaf with a frame, a frameless child of a node with one
    lead: dict[int, bytes] = {}  # the item key and length before each child of a node with a frame below
    size = [0] * len(nodes)
    for i in reversed(range(len(nodes))):  # every node after its descendants
        frame = frames.get(leaf[i])
        if frame is not None:
            body[i] = nodes[i].tensor.SerializeToString()
            inner = len(body[i]) + frame
            head[i] = _TENSOR_KEY + _varint(inner)
        elif any(c in head for c in children[i]):
            inner = 0
            for c in children[i]:
                if c not in head:
                    body[c] = nodes[c].SerializeToString()
                    size[c] = len(body[c])
                lead[c] = _ITEM_KEY + _varint(size[c])
                inner += len(lead[c]) + size[c]
            head[i] = _TUPLE_KEY + _varint(inner)
        else:
            continue
        size[i] = len(head[i]) + inner
    if 0 not in head:
        return None, 0, first
    out: list[Any] = []
    todo = [0]
    while todo:
        i = todo.pop()
        if i in lead:
            out.append(lead[i])
        if i not in head:
            out.append(body[i])
        elif leaf[i] >= 0:
            out += (head[i], body[i], leaf[i])
        else:
            out.append(head[i])
            todo.extend(reversed(children[i]))
    return out, size[0], first
