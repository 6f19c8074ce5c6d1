"""Both halves of the worker transport in one process: the parent's arenas and the worker's views of them,
request buffers packed in and viewed out, result arrays shipped as framed data (growing the out-arena)."""
from __future__ import annotations

import threading
from multiprocessing import Pipe
from typing import Any

import numpy as np

from gradserve.server import transport
from gradserve.server.blobs import data_header


def test_packed_buffers_are_seen_by_a_view_of_the_arena() -> None:
    arena, view = transport.Arena("t"), transport.ArenaView()
    try:
        blobs = [b"abc", memoryview(bytes(range(200))), b""]
        name, spans = transport.pack(arena, blobs)
        assert name == arena.name and name and spans == [(0, 3), (3, 200), (203, 0)]
        got = transport.unpack(view.attach(name), spans)
        assert [bytes(g) for g in got] == [bytes(b) for b in blobs]
        del got
        assert transport.pack(arena, []) == ("", [])
        assert transport.unpack(None, [b"x", b"yz"]) == [b"x", b"yz"]  # bytes that came through the pipe
    finally:
        view.detach()
        arena.release()
    assert arena.name == "" and arena.buf is None


def test_shipped_arrays_arrive_as_data_frames_and_the_arena_grows_on_request() -> None:
    parent, child = Pipe()
    outbox, view = transport.Arena("o"), transport.ArenaView()
    arrays = [np.arange(10, dtype=np.float32), np.ones((3, 4), np.int64)[:, ::2]]  # the second not contiguous
    answer: dict[str, Any] = {}

    def worker() -> None:
        answer["shipped"] = transport.ship(child, view, outbox.name, arrays)

    try:
        thread = threading.Thread(target=worker)
        thread.start()
        kind, size = transport.recv(parent)  # no out-arena yet: the worker asks for one
        expected = [data_header(a.nbytes) + np.ascontiguousarray(a).tobytes() for a in arrays]
        assert kind == "grow" and size == sum(map(len, expected))
        transport.send(parent, transport.grant(outbox, size, max_reserve=0))
        thread.join(timeout=60)
        name, spans = answer["shipped"]
        assert name == outbox.name
        assert [bytes(f) for f in transport.unpack(outbox.buf, spans)] == expected
    finally:
        view.detach()
        outbox.release()
        parent.close()
        child.close()


def test_grant_refuses_sizes_over_the_reserve_limit() -> None:
    arena = transport.Arena("g")
    try:
        assert transport.grant(arena, 2 << 20, max_reserve=1 << 20) is None and arena.buf is None
        assert transport.grant(arena, 1 << 20, max_reserve=1 << 20) == arena.name != ""
    finally:
        arena.release()
