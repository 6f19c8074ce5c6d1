"""The worker process: receives jobs over its pipe, keeps decoded networks and compiled programs,
and runs the engine. It never imports grpc (it is forked from the clean fork server)."""
from __future__ import annotations

import ctypes
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from gradserve.engine import Interrupted, heap

from . import compute, jsonlog
from .cache import Cache
from .config import Limits
from .errors import Failure, stopped
from .pool import BLAS_THREAD_VARS
from .transport import ArenaView, recv, send, ship, unpack


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
"""Freed memory a worker keeps for its next request (``heap.keep_heap``): it is single-threaded and runs one request
at a time, so keeping it is cheap, and without it each request over a large tensor paid a page fault per 4 KiB of
every intermediate (about as much as the arithmetic for an elementwise op)."""


SERVER_HEAP_KEEP_BYTES = 32 << 20
"""The server process's bound (``heap.keep_heap``): it serves many threads (an arena each), and its ``trim.Trimmer``
hands freed pages back after bursts of large requests; before, glibc mapped (and faulted in, 4 KiB at a time) both
copies of every large response, the spliced one and gRPC's, about 1300 page faults and 4 ms of CPU for a 2.7 MB
response on a loaded 2-core machine."""


class Stop:
    """The engine's ``interrupt`` hook for one job: True once the parent has written the job's number
    into the shared ``flag`` (its call was cancelled or expired) or the job's deadline has passed."""

    def __init__(self, flag: Any) -> None:
        self.flag = flag
        self.job = 0
        self.deadline: float | None = None
        """``time.monotonic()`` value, the same clock in every process of the machine."""

    def __call__(self) -> bool:
        return self.flag.value == self.job or (self.deadline is not None and time.monotonic() >= self.deadline)

    def failure(self, exc: Exception) -> Failure:
        """The status of a job the hook stopped, saying why."""
        return stopped(self.flag.value == self.job, exc)


def main(conn: Connection, flag: Any, compiles: Any, limits: Limits, cache_size: int, local_max_elements: int,
         local_max_flops: int, local_max_peak_bytes: int, log_level: str) -> None:
    """Serve jobs until the parent closes the pipe; ``flag`` (a shared int) holds the number of a job to stop,
    ``compiles`` (a shared int, read by the metrics) counts the plans this worker compiled; it logs at the server's
    ``log_level`` (a worker starts from the fork server, which never saw the server's setting)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jsonlog.set_level(log_level)
    limit_blas_threads()
    heap.keep_heap(HEAP_KEEP_BYTES)
    inbox, outbox = ArenaView(), ArenaView()
    state = compute.worker_state(limits, Cache(cache_size, limits.max_worker_cache_bytes), local_max_elements,
                                 local_max_flops, local_max_peak_bytes)
    stop = Stop(flag)
    while True:
        try:
            kind, payload, in_name, spans, network_id, network, out_name, stop.job, stop.deadline = recv(conn)
        except EOFError:
            return
        key = payload.key if kind in compute.KINDS else None
        fresh = key is not None and key not in state.cache
        try:
            if network_id and network_id not in state.cache:
                if not network:
                    send(conn, ("missing", network_id))
                    continue
                state.network(network_id, network)
            blobs = unpack(inbox.attach(in_name), spans)
            try:
                answer, arrays = compute.handle(state, kind, payload, blobs, network_id, stop)
            finally:
                if fresh and key in state.cache:  # this job compiled its plan (and cached it): counted before any answer
                    compiles.value += 1
            del blobs
            send(conn, ("ok", answer, *ship(conn, outbox, out_name, arrays)))
        except Exception as exc:  # every failure goes back to the caller as a status
            f = stop.failure(exc) if isinstance(exc, Interrupted) else compute.classify(exc)
            send(conn, ("error", f.code, f.message, f.violations))
        finally:
            blobs = answer = arrays = None  # type: ignore[assignment]  # no view of an arena outlives the job
            inbox.trim()
            outbox.trim()
