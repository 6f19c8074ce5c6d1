"""How jobs and their large buffers cross between the server process and a worker: pickled messages over
the worker's pipe, and shared-memory arenas for the bytes of large tensors.

The parent owns two arenas per worker (``Arena``: the in-arena for request data, the out-arena for
results) and names them in each message; the worker maps them by name (``ArenaView``). Request data is
``pack``ed into the in-arena and ``unpack``ed by the worker as views; the worker ``ship``s result data,
framed by ``blobs.data_header``, into the out-arena, asking the parent to grow it when too small. When
/dev/shm has no room, the bytes travel in the pipe message instead.
"""
from __future__ import annotations

import itertools
import mmap
import os
import pickle
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from .blobs import data_header
from .errors import Failure

KEEP_ARENA_BYTES = 256 << 20
"""Shared-memory arenas up to this size are kept for the next request; larger ones are released."""

SHM_DIR = "/dev/shm"


def send(conn: Connection, obj: Any) -> None:
    """Send a message over a worker pipe (plain pickle: the messages hold no fds or connections,
    so ForkingPickler's reducers, which cost more than the rest of a small message, are not needed)."""
    conn.send_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection) -> Any:
    """Receive a message sent with ``send``."""
    return pickle.loads(conn.recv_bytes())


class Arena:
    """A growable shared-memory segment owned by the parent; workers attach to it by name."""

    _names = itertools.count()

    def __init__(self, label: str) -> None:
        self.label = label
        self.shm: shared_memory.SharedMemory | None = None

    @property
    def name(self) -> str:
        return self.shm.name if self.shm is not None else ""

    @property
    def buf(self) -> memoryview | None:
        """The segment's bytes (None when there is none)."""
        return self.shm.buf if self.shm is not None else None

    def reserve(self, size: int) -> bool:
        """Make room for ``size`` bytes; False when /dev/shm has no room (the caller uses the pipe)."""
        if self.shm is not None and self.shm.size >= size:
            return True
        self.release()
        if not _shm_has_room(size):
            return False
        name = f"gs{os.getpid()}{self.label}{next(self._names)}"
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=max(size, 1 << 20))
        return True

    def trim(self) -> None:
        """Release the segment if it is larger than what is worth keeping."""
        if self.shm is not None and self.shm.size > KEEP_ARENA_BYTES:
            self.release()

    def release(self) -> None:
        """Unlink and unmap the segment."""
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()
            self.shm = None


def _shm_has_room(size: int) -> bool:
    """Whether /dev/shm can hold ``size`` more bytes (writing past a full tmpfs would SIGBUS)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= size + (16 << 20)


class ArenaView:
    """A worker's view of one parent-owned arena, re-mapped when its name changes."""

    def __init__(self) -> None:
        self.name = ""
        self.buf: memoryview | None = None
        self._map: mmap.mmap | None = None

    def attach(self, name: str) -> memoryview | None:
        """The arena ``name`` as a writable memoryview (None for the empty name)."""
        if name != self.name:
            self.detach()
            if name:
                fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
                try:
                    self._map = mmap.mmap(fd, 0)
                    self.buf = memoryview(self._map)
                finally:
                    os.close(fd)
            self.name = name
        return self.buf

    def detach(self) -> None:
        """Drop the mapping (unmapped now, or once the last array over it is gone)."""
        if self.buf is not None:
            try:
                self.buf.release()
            except BufferError:
                pass
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # an array still views it; unmapped when that array is freed
                pass
        self.buf, self._map, self.name = None, None, ""

    def trim(self) -> None:
        """Drop a mapping the parent releases after each request (``Arena.trim``'s rule): the pages of an
        unlinked arena stay allocated in /dev/shm for as long as any process maps it."""
        if self.buf is not None and len(self.buf) > KEEP_ARENA_BYTES:
            self.detach()


def pack(arena: Arena, blobs: Sequence[bytes | memoryview]) -> tuple[str, list[tuple[int, int]] | list[bytes]]:
    """Copy ``blobs`` into ``arena`` and return its name with (offset, length) spans, or ("", the blobs
    as bytes) when shared memory has no room and they must go through the pipe."""
    if not blobs:
        return "", []
    total = sum(len(b) for b in blobs)
    if not arena.reserve(total):
        return "", [bytes(b) for b in blobs]
    buf = arena.buf
    assert buf is not None
    spans, off = [], 0
    for b in blobs:
        buf[off:off + len(b)] = b
        spans.append((off, len(b)))
        off += len(b)
    return arena.name, spans


def unpack(buf: memoryview | None, spans: list[Any]) -> list[Any]:
    """The buffers described by ``pack``'s (or ``ship``'s) result, as views of ``buf`` (or the bytes themselves)."""
    if buf is None:
        return list(spans)
    return [buf[off:off + n] for off, n in spans]


def grant(arena: Arena, size: int, max_reserve: int) -> str | None:
    """The parent's answer to a worker asking (in ``ship``) for an out-arena of ``size`` bytes: the arena's
    name, "" when /dev/shm has no room (the bytes come through the pipe), None when ``size`` is over
    ``max_reserve`` (0: any size; the worker answers RESOURCE_EXHAUSTED)."""
    if max_reserve and size > max_reserve:
        return None
    return arena.name if arena.reserve(size) else ""


def ship(conn: Connection, outbox: ArenaView, out_name: str, arrays: list[np.ndarray]) -> tuple[str, list[Any]]:
    """In a worker: put ``arrays``' bytes, each framed by ``blobs.data_header``, into the out-arena (asking
    the parent over ``conn`` to grow it when too small); returns the arena name and the frames' spans, or
    ("", framed bytes) when shared memory is unavailable."""
    if not arrays:
        return "", []
    arrays = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    headers = [data_header(a.nbytes) for a in arrays]
    total = sum(len(h) + a.nbytes for h, a in zip(headers, arrays))
    buf = outbox.attach(out_name)
    if buf is None or len(buf) < total:
        send(conn, ("grow", total))
        name = recv(conn)
        if name is None:
            raise Failure("RESOURCE_EXHAUSTED", f"the results are {total} bytes, over the max_message_bytes limit")
        buf = outbox.attach(name)
    if buf is None:
        return "", [b"".join((h, a.data)) for h, a in zip(headers, arrays)]
    spans, off = [], 0
    for h, a in zip(headers, arrays):
        n = len(h) + a.nbytes
        buf[off:off + len(h)] = h
        buf[off + len(h):off + n] = a.data
        spans.append((off, n))
        off += n
    return outbox.name, spans
