"""Templates: serialized messages of one layout cut around their tensors' data, so that messages of the same
types are written by one join and read as arrays over the message's bytes at known offsets, with no message built.

A layout is learned from one serialized message (``Template.learn``): a strict walk of its wire bytes (``wire``'s),
guided by the descriptors, finds every Tensor's data; whatever protobuf might read differently from that walk (unknown or
repeated singular fields, several members of a oneof, a repeated map key, a map entry without its message value, a
key or length longer than protobuf's 5 bytes, a tensor whose byte count does not fit its type) gives no template. Every byte outside the data then belongs to the template's ``pieces``. A message
whose bytes outside the data are exactly those pieces, with data of the same lengths, parses as the learned one
does except for the data itself, which is why ``read`` and ``join`` equal full parsing and serializing bitwise.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gradserve.engine import flatten, unflatten
from gradserve.v1 import graph_pb2 as pb

from .errors import WireError
from .limits import DEFAULT_LIMITS, Limits
from .tensors import decode_dtype, decode_tree
from .wire import Bytes, Irregular, read_fields, read_varint

Path = tuple[Any, ...]
"""Where a tensor is in its message: field names, with a list index or a map key after a repeated or map field
(``("inputs", 0)``, ``("parameters", "w")``, ``("gradients", "tuple", "items", 1, "tensor")``)."""

MAX_DEPTH = 100
"""Messages nested deeper than this are not taken apart (they are parsed by protobuf): protobuf's own recursion limit, so
that every message protobuf parses can be (a response whose tree nests at most 49 tuples deep)."""

_TENSOR = pb.Tensor.DESCRIPTOR
_DTYPE, _SHAPE, _DATA = (_TENSOR.fields_by_name[n].number for n in ("dtype", "shape", "data"))
_LITTLE = sys.byteorder == "little"
_LOW64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Slot:
    """One tensor of a layout: where it is, its type, and where its data starts in the serialized message."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


_WIRE_OF_TYPE = {FieldDescriptor.TYPE_DOUBLE: 1, FieldDescriptor.TYPE_FIXED64: 1, FieldDescriptor.TYPE_SFIXED64: 1,
                 FieldDescriptor.TYPE_FLOAT: 5, FieldDescriptor.TYPE_FIXED32: 5, FieldDescriptor.TYPE_SFIXED32: 5,
                 FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_BYTES: 2, FieldDescriptor.TYPE_MESSAGE: 2}
"""The wire type of each field type that is not a varint."""


def _repeated(field: FieldDescriptor) -> bool:
    """Whether ``field`` is repeated (maps included)."""
    return bool(field.is_repeated)


def _tensor(buf: Bytes, pos: int, end: int, path: Path, out: list[Slot]) -> None:
    """Append the Slot of the serialized Tensor ``buf[pos:end]``: one dtype, packed shape and data at most."""
    dtype = 0
    shape: list[int] = []
    data = None
    seen: set[int] = set()
    for _, number, wire, begin, after in read_fields(buf, pos, end):
        if number in seen:
            raise Irregular
        seen.add(number)
        if number == _DTYPE and wire == 0:
            dtype = read_varint(buf, begin, after)[0]
        elif number == _SHAPE and wire == 2:
            at = begin
            while at < after:
                d, at = read_varint(buf, at, after)
                d &= _LOW64  # protobuf keeps a varint's low 64 bits (a 10th byte may carry more)
                shape.append(d - (1 << 64) if d >= 1 << 63 else d)
        elif number == _DATA and wire == 2:
            data = (begin, after)
        else:
            raise Irregular
    try:
        dt = decode_dtype(dtype, "dtype")  # type: ignore[arg-type]
    except WireError:
        raise Irregular from None
    if min(shape, default=0) < 0:
        raise Irregular
    start, stop = data if data is not None else (end, end)
    if stop - start != math.prod(shape) * dt.itemsize:
        raise Irregular
    out.append(Slot(path, dt, tuple(shape), start, stop - start))


def _walk(buf: Bytes, pos: int, end: int, descriptor: Descriptor, path: Path, out: list[Slot], depth: int) -> None:
    """Append the Slot of every Tensor in the serialized ``descriptor`` message ``buf[pos:end]``, in byte order."""
    if depth > MAX_DEPTH:
        raise Irregular
    fields = descriptor.fields_by_number
    singular: set[int] = set()
    oneofs: set[str] = set()
    counts: dict[int, int] = {}
    keys: dict[int, set[Any]] = {}
    for _, number, wire, begin, after in read_fields(buf, pos, end):
        field = fields.get(number)
        if field is None:
            raise Irregular
        if _repeated(field):
            index = counts.get(number, 0)
            counts[number] = index + 1
        else:
            if number in singular:
                raise Irregular
            singular.add(number)
            if field.containing_oneof is not None:
                if field.containing_oneof.name in oneofs:
                    raise Irregular
                oneofs.add(field.containing_oneof.name)
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            packed = _repeated(field) and wire == 2 and field.type not in _WIRE_OF_TYPE
            if wire != _WIRE_OF_TYPE.get(field.type, 0) and not packed:
                raise Irregular
            continue
        if wire != 2:
            raise Irregular
        sub = field.message_type
        if sub is None:
            raise Irregular
        if sub.GetOptions().map_entry:
            key = _map_key(buf, begin, after, sub)
            if key in keys.setdefault(number, set()):
                raise Irregular
            keys[number].add(key)
            value = sub.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(buf, begin, after, sub, path + (field.name, key), out, depth + 1)
            continue
        if descriptor.GetOptions().map_entry:  # the value of a map entry is named by the entry's key alone
            here = path
        else:
            here = path + ((field.name, counts[number] - 1) if _repeated(field) else (field.name,))
        if sub is _TENSOR:
            _tensor(buf, begin, after, here, out)
        else:
            _walk(buf, begin, after, sub, here, out, depth + 1)
    if descriptor.GetOptions().map_entry and descriptor.fields_by_name["value"].number not in singular:
        raise Irregular  # protobuf gives the entry an empty message, which has no bytes here to be a slot


def _map_key(buf: Bytes, pos: int, end: int, entry: Descriptor) -> Any:
    """The key of the serialized map entry ``buf[pos:end]`` (string keys as str, integer keys as int)."""
    key_field = entry.fields_by_name["key"]
    found = None
    for _, number, wire, begin, after in read_fields(buf, pos, end):
        if number == key_field.number:
            if found is not None:
                raise Irregular
            found = (wire, begin, after)
    if found is None:
        return "" if key_field.type == FieldDescriptor.TYPE_STRING else 0
    wire, begin, after = found
    if key_field.type == FieldDescriptor.TYPE_STRING and wire == 2:
        try:
            return bytes(buf[begin:after]).decode("utf-8")
        except UnicodeDecodeError:
            raise Irregular from None
    if wire == 0:
        return read_varint(buf, begin, after)[0]
    raise Irregular


def slots(raw: Bytes, descriptor: Descriptor) -> list[Slot] | None:
    """Every Tensor of the serialized ``descriptor`` message ``raw`` in byte order, or None when its framing is
    anything but plain (see the module's docstring)."""
    out: list[Slot] = []
    try:
        _walk(raw, 0, len(raw), descriptor, (), out, 1)
    except Irregular:
        return None
    return out


@dataclass(frozen=True)
class Template:
    """A serialized message of one layout as the pieces between its tensors' data: ``pieces[i]`` comes before the
    data of ``slots[i]`` (ending with its Tensor's data key and length), ``pieces[-1]`` after the last."""

    pieces: tuple[bytes, ...]
    slots: tuple[Slot, ...]
    size: int
    """The whole message's length."""
    writes: tuple[tuple[bytes, np.dtype, tuple[int, ...]], ...] = dataclasses.field(init=False, repr=False)
    """Per slot, what ``chunks`` needs: the piece before it, its dtype and shape."""
    reads: tuple[tuple[bytes, int, int, tuple[int, ...], bool, bool], ...] = dataclasses.field(init=False, repr=False)
    """Per slot, what ``read`` needs besides its dtype: the piece after it, its data's start and end, its shape, whether
    its data is misaligned for its dtype and whether it is bool with data (whose bytes must be 0 or 1)."""
    dtypes: tuple[np.dtype, ...] = dataclasses.field(init=False, repr=False)
    """Per slot, its dtype."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "writes", tuple((piece, s.dtype, s.shape) for piece, s in zip(self.pieces, self.slots)))
        object.__setattr__(self, "reads", tuple(
            (piece, s.start, s.start + s.nbytes, s.shape, s.start % s.dtype.alignment != 0, s.dtype.kind == "b" and s.nbytes > 0)
            for s, piece in zip(self.slots, self.pieces[1:])))
        object.__setattr__(self, "dtypes", tuple(s.dtype for s in self.slots))

    @classmethod
    def learn(cls, raw: Bytes, descriptor: Descriptor) -> Template | None:
        """The template of the serialized ``descriptor`` message ``raw`` (whose tensors' data is never read); None when
        its framing is not plain, or on a big-endian machine (where the data is not in the arrays' byte order)."""
        found = slots(raw, descriptor) if _LITTLE else None
        if found is None:
            return None
        pieces, done = [], 0
        for s in found:
            pieces.append(bytes(raw[done:s.start]))
            done = s.start + s.nbytes
        pieces.append(bytes(raw[done:]))
        return cls(tuple(pieces), tuple(found), len(raw))

    @property
    def paths(self) -> list[Path]:
        """Each slot's path, in slot order."""
        return [s.path for s in self.slots]

    def join(self, arrays: Sequence[Any]) -> bytes | None:
        """The message of this layout holding ``arrays`` (one per slot, in slot order) as its tensors' data, in one
        copy of each; None unless each has its slot's dtype and shape (taken, as ``encode_tensor`` takes them, by
        ``np.asarray``: a list or a scalar too)."""
        chunks = self.chunks(arrays)
        return None if chunks is None else b"".join(chunks)

    def chunks(self, arrays: Sequence[Any]) -> list[Any] | None:
        """What ``join`` joins: ``pieces[0]``, the C-contiguous array of ``arrays[0]``, ``pieces[1]``, ...,
        ``pieces[-1]``, for a caller that cuts the message around some of its data; None as for ``join``."""
        if len(arrays) != len(self.slots):
            return None
        out: list[Any] = []
        for (piece, dtype, shape), a in zip(self.writes, arrays):
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype or a.shape != shape:
                return None
            out += (piece, a if a.flags.c_contiguous else np.ascontiguousarray(a))
        out.append(self.pieces[-1])
        return out

    def read(self, raw: bytes, dtypes: Sequence[np.dtype] | None = None) -> list[np.ndarray] | None:
        """The read-only arrays of the message ``raw``'s tensors, in slot order, when ``raw`` has this layout (every
        byte outside the data equal to the pieces, bool data only 0 or 1); else None. Each array views ``raw``
        (immutable bytes; any other buffer is copied first, so that no array changes with it) when its data is aligned
        for its dtype, and a copy of its data otherwise. ``dtypes``, when given, are the dtype objects the arrays
        carry, one per slot and each equal to the slot's: a caller's own, which it may compare by identity."""
        if type(raw) is not bytes:
            raw = bytes(raw)
        if len(raw) != self.size or not raw.startswith(self.pieces[0]):
            return None
        out = []
        for (piece, start, stop, shape, misaligned, boolean), dtype in zip(self.reads, self.dtypes if dtypes is None else dtypes):
            if not raw.startswith(piece, stop):
                return None
            a = np.ndarray(shape, dtype, raw[start:stop], 0) if misaligned else np.ndarray(shape, dtype, raw, start)
            if boolean and a.view(np.uint8).max() > 1:
                return None
            out.append(a)
        return out


_CHUNK = 1 << 16
"""How many bytes of a probe's data ``_pattern`` makes at a time."""


def _pattern(n: int, first: int, boolean: bool) -> np.ndarray:
    """``n`` bytes that differ from place to place (0 or 1 each for bool data), numbered from ``first``."""
    h = (np.arange(first, first + n, dtype=np.uint64) * np.uint64(0x9E3779B1)) >> np.uint64(13)
    return (h & np.uint64(1 if boolean else 0xFF)).astype(np.uint8)


def _bytes_of(a: np.ndarray) -> np.ndarray:
    """The bytes of the C-contiguous array ``a`` as a flat uint8 view (compared without copying them)."""
    return a.reshape(-1).view(np.uint8)


class TreeReader:
    """Decodes the TensorTree field ``field`` of serialized ``cls`` messages: as ``decode_tree`` does on the parsed
    message the first time and whenever the layout differs from the last one learned, else by the layout's Template.

    A layout is kept only after a check that reading it equals full parsing: its data filled with a pattern that
    differs at every byte, the template's arrays and ``decode_tree``'s must agree byte for byte."""

    def __init__(self, cls: type[Any], field: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.cls, self.field, self.limits = cls, field, limits
        self.layout: tuple[Template, Callable[[list[np.ndarray]], Any]] | None = None
        """The template, and the tree made of its arrays (``_builder``)."""

    def __call__(self, raw: bytes) -> Any:
        """The tree in the message ``raw``, as nested tuples of read-only arrays."""
        layout = self.layout
        if layout is not None:
            arrays = layout[0].read(raw)
            if arrays is not None:
                return layout[1](arrays)
        tree = decode_tree(getattr(self.cls.FromString(raw), self.field), self.limits)
        self.layout = self._learn(raw, tree)
        return tree

    def _learn(self, raw: bytes, tree: Any) -> tuple[Template, Callable[[list[np.ndarray]], Any]] | None:
        """The layout of ``raw``, whose field holds ``tree``, once checked; None when it cannot be used."""
        template = Template.learn(raw, self.cls.DESCRIPTOR)
        if template is None:
            return None
        mine = [i for i, s in enumerate(template.slots) if s.path[0] == self.field]
        leaves = flatten(tree)
        skeleton = unflatten(tree, iter(range(len(leaves))))  # the tree's nesting, holding no array
        if len(leaves) != len(mine):
            return None
        probe = bytearray(raw)
        first = 0
        for i in mine:
            s = template.slots[i]
            for k in range(0, s.nbytes, _CHUNK):  # a chunk at a time: _pattern works in 8 bytes per byte
                n = min(_CHUNK, s.nbytes - k)
                probe[s.start + k:s.start + k + n] = _pattern(n, first + k, s.dtype.kind == "b").data
            first += s.nbytes
        probed = bytes(probe)
        del probe  # not held while the probe is parsed and read
        expected = flatten(decode_tree(getattr(self.cls.FromString(probed), self.field), self.limits))
        got = template.read(probed)
        if got is None:
            return None
        for i, want in zip(mine, expected):
            a = got[i]
            if a.dtype != want.dtype or a.shape != want.shape or not np.array_equal(_bytes_of(a), _bytes_of(want)):
                return None
        return template, _builder(mine, skeleton)


def _builder(mine: list[int], skeleton: Any) -> Callable[[list[np.ndarray]], Any]:
    """The tree of nesting ``skeleton`` (its leaves numbered) made of a read's arrays, leaf ``k`` from slot
    ``mine[k]``: one array, or a flat tuple of several, by one ``itemgetter``."""
    if type(skeleton) is int:
        return operator.itemgetter(mine[skeleton])
    if type(skeleton) is tuple and len(skeleton) > 1 and all(type(k) is int for k in skeleton):
        return operator.itemgetter(*(mine[k] for k in skeleton))
    return lambda arrays: unflatten(skeleton, map(arrays.__getitem__, mine))
