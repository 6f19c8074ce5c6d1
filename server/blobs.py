"""Moving large tensor bytes out of messages and back, so that they cross to workers in shared memory
instead of inside a pickled message. Only bytes move here; the codec interprets them."""
from __future__ import annotations

import math
from typing import Any, Iterator

from .. import codec
from ..v1 import graph_pb2

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


_ITEMSIZE = {enum: dt.itemsize for enum, dt in codec._DTYPE_OF_ENUM.items()}


def declared_bytes(t: graph_pb2.Tensor) -> int:
    """The data size a Tensor's dtype and shape declare, read without touching its data.

    (``ByteSize()`` would serialize the message, and reading ``data`` copies it: for a 64 MB tensor
    each costs more than moving it to the worker.) A tensor whose data does not match its
    declaration is rejected by the codec in the worker, wherever its bytes travelled."""
    return _ITEMSIZE.get(t.dtype, 1) * math.prod(t.shape)


def strip(request: Any) -> tuple[list[Where], list[bytes]]:
    """Empty the data of every large tensor of a request; returns their places and their bytes
    (in ``request_tensors`` order)."""
    places: list[Where] = []
    blobs: list[bytes] = []
    for name in ("inputs", "sens"):
        for i, t in enumerate(getattr(request, name, ())):
            if declared_bytes(t) >= BLOB_MIN_BYTES:
                blobs.append(t.data)
                t.ClearField("data")
                places.append((name, i))
    params = request.parameters
    if params:
        for name in sorted(params):
            t = params[name]
            if declared_bytes(t) >= BLOB_MIN_BYTES:
                blobs.append(t.data)
                t.ClearField("data")
                places.append(("parameters", name))
    return places, blobs


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


_DATA_KEY = (graph_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number << 3) | 2
"""The key of Tensor.data on the wire (field number, length-delimited)."""


def data_header(nbytes: int) -> bytes:
    """The bytes that, followed by ``nbytes`` of data, are a serialized Tensor holding only that data.

    Workers frame result data this way in shared memory, so that the server merges each frame into its
    response tensor straight from the shared buffer (one copy; ``data = bytes(view)`` would be two)."""
    out = bytearray([_DATA_KEY])
    while nbytes > 0x7F:
        out.append((nbytes & 0x7F) | 0x80)
        nbytes >>= 7
    out.append(nbytes)
    return bytes(out)


def fill(message: Any, fields: tuple[str, ...], leaves: list[int], frames: list[Any]) -> None:
    """Merge ``frames`` (``data_header`` and data: bytes or views of shared memory) into the leaves
    numbered ``leaves`` (counted across ``fields``), which become those tensors' data."""
    if not leaves:
        return
    tensors = leaves_of(message, fields)
    for k, frame in zip(leaves, frames):
        tensors[k].MergeFromString(frame)
