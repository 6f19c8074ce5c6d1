"""Protobuf's wire framing read as protobuf reads it: the one field walker of the templates and of the server's
``blobs``, which refuses (``Irregular``) whatever framing protobuf refuses or might read otherwise, so that bytes
taken apart here are never bytes protobuf would not parse."""
from __future__ import annotations

from typing import Iterator

Bytes = bytes | memoryview
"""What the walk reads: ``bytes``, or a ``memoryview`` of unsigned bytes (whose items are ints, as those of bytes are)."""


class Irregular(Exception):
    """Bytes that protobuf refuses or might read otherwise than the walk that raised this, so that protobuf alone
    reads them."""


def read_varint(buf: Bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[pos]`` and the position after it; Irregular past ``end`` or 10 bytes."""
    value = shift = 0
    for i in range(pos, min(end, pos + 10)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise Irregular


def read_fields(buf: Bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(start, number, wire type, payload start, payload end) of each field of the message ``buf[pos:end]``; a
    length-delimited payload starts after its length.

    Irregular: field number 0, a key beyond 32 bits, a key or a length longer than 5 bytes (protobuf refuses them
    even when padded with zeros), groups and wire types 6 and 7, varints over 10 bytes and fields running past
    ``end``. (One-byte keys and lengths, the usual ones, are read inline: this loop is most of the time of taking a large
    request apart.)"""
    while pos < end:
        start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
            if key > 0xFFFFFFFF or pos - start > 5:
                raise Irregular
        wire = key & 7
        if key < 8:  # field number 0
            raise Irregular
        if wire == 2:
            if pos < end and buf[pos] < 0x80:
                pos, after = pos + 1, pos + 1 + buf[pos]
            else:
                size, at = read_varint(buf, pos, end)
                if at - pos > 5:
                    raise Irregular
                pos, after = at, at + size
        elif wire == 0:
            after = pos + 1 if pos < end and buf[pos] < 0x80 else read_varint(buf, pos, end)[1]
        elif wire == 1:
            after = pos + 8
        elif wire == 5:
            after = pos + 4
        else:
            raise Irregular
        if after > end:
            raise Irregular
        yield start, key >> 3, wire, pos, after
        pos = after
