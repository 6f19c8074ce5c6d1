"""The worker process: receives jobs over its pipe, keeps decoded networks and compiled programs,
and runs the engine. It never imports grpc (it is forked from the clean fork server)."""
from __future__ import annotations

import ctypes
import mmap
import os
import signal
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import compute
from .blobs import data_header
from .config import Limits
from .errors import Failure
from .pool import BLAS_THREAD_VARS, KEEP_ARENA_BYTES, SHM_DIR, recv, send, unpack


class _Mapping:
    """This worker's view of one parent-owned shared-memory arena, re-mapped when its name changes."""

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


def limit_blas_threads() -> None:
    """Make OpenBLAS single-threaded here unless a thread count is set in the environment.

    The pool starts the fork server with ``OPENBLAS_NUM_THREADS=1`` (see ``pool.worker_environment``);
    this covers a fork server started some other way, through OpenBLAS's own call."""
    if any(k in os.environ for k in BLAS_THREAD_VARS):
        return
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                    "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(1)
                break


HEAP_KEEP_BYTES = 256 << 20
"""Blocks up to this size come from (and go back to) the worker's heap instead of fresh mmaps."""

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's mallopt parameter numbers (malloc.h)."""


def tune_malloc() -> None:
    """Let glibc reuse large blocks instead of mapping fresh pages for every array.

    By default every allocation above 32 MB is a new mmap, so each request over a large tensor pays a
    page fault per 4 KiB of every intermediate (about as much as the arithmetic for an elementwise op).
    A worker is single-threaded and runs one request at a time, so keeping up to ``HEAP_KEEP_BYTES``
    of freed memory for the next request is cheap. glibc's own variables, if set, win."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(M_MMAP_THRESHOLD, HEAP_KEEP_BYTES)
    mallopt(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES)


def main(conn: Connection, limits: Limits, cache_size: int, local_max_elements: int) -> None:
    """Serve jobs until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_blas_threads()
    tune_malloc()
    inbox, outbox = _Mapping(), _Mapping()
    state = compute.WorkerState(compute.codec_limits(limits), Cache(cache_size), Cache(cache_size), limits.max_message_bytes,
                                local_max_elements)
    while True:
        try:
            kind, payload, in_name, spans, network_id, network, out_name = recv(conn)
        except EOFError:
            return
        try:
            if network_id and network_id not in state.networks:
                if not network:
                    send(conn, ("missing", network_id))
                    continue
                state.networks.put(network_id, compute.load_network(network, state.limits))
            blobs = unpack(inbox.attach(in_name), spans)
            answer, arrays = compute.handle(state, kind, payload, blobs, network_id)
            del blobs
            send(conn, ("ok", answer, *_ship(conn, outbox, out_name, arrays)))
        except Exception as exc:  # every failure goes back to the caller as a status
            f = compute.classify(exc)
            send(conn, ("error", f.code, f.message, f.violations))
        finally:
            blobs = answer = arrays = None  # type: ignore[assignment]  # no view of an arena outlives the job
            inbox.trim()
            outbox.trim()


def _ship(conn: Connection, outbox: _Mapping, out_name: str, arrays: list[np.ndarray]) -> tuple[str, list[Any]]:
    """Put ``arrays``' bytes, each framed by ``blobs.data_header``, into the out-arena (asking the parent
    to grow it when too small); returns the arena name and the frames' spans, or ("", framed bytes)
    when shared memory is unavailable."""
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
