"""The worker process: receives jobs over its pipe, keeps decoded networks and compiled programs,
and runs the engine. It never imports grpc (it is forked from the clean fork server)."""
from __future__ import annotations

import mmap
import os
import signal
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import compute
from .config import Limits
from .pool import SHM_DIR, unpack


class _Mapping:
    """This worker's view of one parent-owned shared-memory arena, re-mapped when its name changes."""

    def __init__(self) -> None:
        self.name = ""
        self.buf: memoryview | None = None

    def attach(self, name: str) -> memoryview | None:
        """The arena ``name`` as a writable memoryview (None for the empty name)."""
        if name != self.name:
            self.buf = None  # the mmap is unmapped once the last array over it is gone
            if name:
                fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
                try:
                    self.buf = memoryview(mmap.mmap(fd, 0))
                finally:
                    os.close(fd)
            self.name = name
        return self.buf


class Cache(OrderedDict):
    """A least-recently-used dict holding at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        """Insert ``value``, evicting the least recently used entry when full."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def main(conn: Connection, limits: Limits, cache_size: int) -> None:
    """Serve jobs until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox, outbox = _Mapping(), _Mapping()
    state = compute.WorkerState(compute.codec_limits(limits), Cache(cache_size), Cache(cache_size))
    while True:
        try:
            kind, payload, in_name, spans, network_id, network, out_name = conn.recv()
        except EOFError:
            return
        try:
            if network_id and network_id not in state.networks:
                if not network:
                    conn.send(("missing", network_id))
                    continue
                state.networks.put(network_id, compute.load_network(network, state.limits))
            blobs = unpack(inbox.attach(in_name), spans)
            answer, arrays = compute.handle(state, kind, payload, blobs, network_id)
            del blobs
            conn.send(("ok", answer, *_ship(conn, outbox, out_name, arrays)))
        except Exception as exc:  # every failure goes back to the caller as a status
            f = compute.classify(exc)
            conn.send(("error", f.code, f.message, f.violations))


def _ship(conn: Connection, outbox: _Mapping, out_name: str, arrays: list[np.ndarray]) -> tuple[str, list[Any]]:
    """Put ``arrays``' bytes into the out-arena (asking the parent to grow it when too small);
    returns the arena name and spans, or ("", raw bytes) when shared memory is unavailable."""
    if not arrays:
        return "", []
    arrays = [np.ascontiguousarray(a) for a in arrays]
    total = sum(a.nbytes for a in arrays)
    buf = outbox.attach(out_name)
    if buf is None or len(buf) < total:
        conn.send(("grow", total))
        buf = outbox.attach(conn.recv())
    if buf is None:
        return "", [a.tobytes() for a in arrays]
    spans, off = [], 0
    for a in arrays:
        buf[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
        spans.append((off, a.nbytes))
        off += a.nbytes
    return outbox.name, spans
