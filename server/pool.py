"""A pool of worker processes fed from a bounded queue (how jobs and their buffers cross: ``transport``).

The pool is started before any grpc object exists, and every worker (also a replacement) is
forked by multiprocessing's fork server, a clean process that never held grpc state. A caller
thread takes an idle worker (waiting in a bounded queue), talks to it over a pipe and watches the
worker's sentinel, its deadline and its call's liveness: a dead worker is replaced and only its
request fails (UNAVAILABLE); an expired or cancelled call tells its worker to stop between operations
(a number in shared memory), and only a worker that does not stop within a grace period is replaced.
"""
from __future__ import annotations

import math
import multiprocessing
import multiprocessing.forkserver
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from .errors import Failure
from .transport import Arena, grant, pack, recv, send, unpack

POLL_SECONDS = 0.05
"""How often a waiting caller checks whether its call is still wanted."""

EXIT_WAIT_SECONDS = 1.0
"""How long a worker whose pipe closed is given to exit, so that its exit status can be reported."""

BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Each worker computes one request at a time and the pool runs one worker per core, so BLAS libraries
in workers run single-threaded (N workers x N BLAS threads on N cores is oversubscribed: threads
spin against each other). A variable the operator set is left as it is."""

_FORKSERVER_LOCK = threading.Lock()


def worker_environment() -> dict[str, str]:
    """The variables the fork server (and so every worker) is started with, beyond the server's own."""
    return {k: "1" for k in BLAS_THREAD_VARS if k not in os.environ}


def _ensure_forkserver() -> None:
    """Start multiprocessing's fork server with single-threaded BLAS before NumPy is imported there.

    The fork server imports the worker module (and with it NumPy) once and forks every worker from it,
    so the thread count OpenBLAS reads at import must be in its environment. The variables are set
    only for the moment the fork server is spawned; the server process keeps its own settings."""
    with _FORKSERVER_LOCK:
        extra = worker_environment()
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@dataclass
class Job:
    """One unit of work: a kind and small payload, large buffers, and the network it needs."""

    kind: str
    payload: Any
    blobs: Sequence[bytes | memoryview] = field(default_factory=list)
    network_id: str = ""
    network: bytes = b""


@dataclass
class Result:
    """A worker's answer: a small payload and the large buffers it produced."""

    payload: Any
    blobs: list[bytes]


class _Slot:
    """One worker process with its pipe, its arenas and the networks it is believed to hold."""

    def __init__(self, index: int, flag: Any, compiles: Any) -> None:
        self.index = index
        self.flag = flag
        """A shared int: the number of the job the worker should stop (``worker.Stop``)."""
        self.compiles = compiles
        """A shared int the slot's workers add to: the plans they compiled (kept across replacements)."""
        self.job = 0
        """The number of the job last sent to the worker."""
        self.inbox = Arena(f"w{index}i")
        self.outbox = Arena(f"w{index}o")
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.poller: Any = None
        """A select.poll over the pipe and the worker's sentinel, made once per worker (cheaper than
        multiprocessing.connection.wait, which builds a selector on every call)."""
        self.networks: set[str] = set()
        self.generation = 0

    def dead(self) -> bool:
        """Whether the worker has exited (its sentinel is readable); does not block."""
        assert self.proc is not None
        return any(fd == self.proc.sentinel for fd, _ in self.poller.poll(0))


class WorkerPool:
    """N worker processes behind a bounded queue; ``submit`` runs one Job and returns its Result."""

    def __init__(self, workers: int, max_queue: int, worker_main: Callable[..., None], worker_args: tuple = (),
                 max_reserve: int = 0, *, stop_grace: float) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([worker_main.__module__])
        _ensure_forkserver()
        self._worker_main = worker_main
        self._worker_args = worker_args
        self.max_queue = max_queue
        self.max_reserve = max_reserve
        """The largest out-arena a worker may ask for (its results make one response: max_message_bytes); 0: any."""
        self.stop_grace = stop_grace
        """Seconds a worker told to stop may take to finish its current operation before it is replaced
        (``Limits.stop_grace_ms``)."""
        self._lock = threading.Lock()
        """Guards the idle slots, the waiting count and closing; taken directly (a Condition's own ``with`` costs Python
        calls, twice a request: a worker's turn taken and given back, or borrowed for the local lane)."""
        self._cond = threading.Condition(self._lock)
        self._life = threading.Lock()
        """Held while starting a worker and while closing, so that no worker starts once the pool is closed."""
        self._waiting = 0
        self._closed = False
        self._slots = [_Slot(i, self._ctx.RawValue("q", 0), self._ctx.RawValue("q", 0)) for i in range(workers)]
        with self._life:
            for s in self._slots:
                self._start(s)
        self._idle = list(self._slots)
        self.replaced = 0

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def queued(self) -> int:
        return self._waiting

    def compiles(self) -> list[int]:
        """Plans compiled by each worker slot so far (its replacements included), in slot order."""
        return [s.compiles.value for s in self._slots]

    def pids(self) -> list[int]:
        """Process ids of the current workers (for operators and tests)."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.pid is not None]

    def busy_pids(self) -> list[int]:
        """Process ids of workers holding a request right now."""
        with self._lock:
            idle = {id(s) for s in self._idle}
        return [s.proc.pid for s in self._slots if id(s) not in idle and s.proc is not None and s.proc.pid is not None]

    def _start(self, slot: _Slot) -> None:
        """Start a worker in ``slot`` (the caller holds ``_life`` and has checked the pool is open)."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=self._worker_main, args=(child, slot.flag, slot.compiles, *self._worker_args), name=f"gradserve-worker-{slot.index}", daemon=True
        )
        proc.start()
        child.close()
        poller = select.poll()
        poller.register(parent.fileno(), select.POLLIN)
        poller.register(proc.sentinel, select.POLLIN)
        slot.proc, slot.conn, slot.poller, slot.networks = proc, parent, poller, set()
        slot.generation += 1

    def _replace(self, slot: _Slot) -> None:
        """Kill ``slot``'s worker (if alive) and start a fresh one in its place, unless the pool is closed."""
        assert slot.proc is not None and slot.conn is not None
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join()
        slot.conn.close()
        with self._life:
            if self._closed:
                return
            self._start(slot)
            self.replaced += 1

    def submit(self, job: Job, deadline: float | None = None, is_active: Callable[[], bool] = lambda: True,
               take: Callable[[Any, list[Any]], Any] | None = None) -> Any:
        """Run ``job`` on a worker; raises Failure (RESOURCE_EXHAUSTED when the queue is full,
        DEADLINE_EXCEEDED/CANCELLED when the call ends first, UNAVAILABLE when the worker dies).

        Returns ``take(payload, buffers)``, called while the worker is still held, so the buffers may be
        views of its shared memory (read them before returning, never keep them); without ``take``, a
        Result with copies of the buffers."""
        slot = self._acquire(deadline, is_active)
        try:
            _check_alive(deadline, is_active, "waiting for a worker")
            if slot.dead():
                self._replace(slot)
                if self._closed:
                    raise Failure("UNAVAILABLE", "the server is shutting down; retry on another replica")
            payload, buffers = self._run(slot, job, deadline, is_active)
            if take is None:
                return Result(payload, [bytes(b) for b in buffers])
            try:
                return take(payload, buffers)
            except BaseException as exc:  # a traceback into ``take`` would keep its views of the arena
                raise exc.with_traceback(None) from None
            finally:
                del buffers  # no view of the arena outlives the call (it may be resized or released next)
        finally:
            slot.inbox.trim()
            slot.outbox.trim()
            self._release(slot)

    def _acquire(self, deadline: float | None, is_active: Callable[[], bool]) -> _Slot:
        with self._lock:
            if self._closed:
                raise Failure("UNAVAILABLE", "the server is shutting down; retry on another replica")
            if not self._idle:
                if self._waiting >= self.max_queue:
                    raise Failure(
                        "RESOURCE_EXHAUSTED",
                        f"all {len(self._slots)} workers are busy and {self._waiting} requests are queued "
                        f"(max_queue_depth={self.max_queue}); retry later",
                    )
                self._waiting += 1
                try:
                    while not self._idle:
                        _check_alive(deadline, is_active, "waiting for a worker")
                        if self._closed:
                            raise Failure("UNAVAILABLE", "the server is shutting down; retry on another replica")
                        self._cond.wait(_poll_timeout(deadline))
                finally:
                    self._waiting -= 1
            return self._idle.pop()

    def borrow(self) -> Callable[[], None] | None:
        """Take an idle worker's turn without sending it anything, for work done in this process (the local lane's
        bounded runs), so that no more requests compute at once than there are workers; returns the function that
        gives the turn back, or None when no worker is idle or callers are already waiting for one."""
        with self._lock:
            if self._closed or not self._idle or self._waiting:
                return None
            slot = self._idle.pop()
        return lambda: self._release(slot)

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._idle.append(slot)
            self._cond.notify()

    def _run(self, slot: _Slot, job: Job, deadline: float | None, is_active: Callable[[], bool]) -> tuple[Any, list[Any]]:
        send_network = job.network_id not in slot.networks
        while True:
            where, spans = pack(slot.inbox, job.blobs)
            network = job.network if send_network else b""
            slot.job += 1
            msg = (job.kind, job.payload, where, spans, job.network_id, network, slot.outbox.name, slot.job, deadline)
            reply = self._exchange(slot, msg, deadline, is_active)
            if reply[0] == "missing" and not send_network:
                send_network = True
                continue
            if job.network_id:
                slot.networks.add(job.network_id)
            if reply[0] == "error":
                raise Failure(*reply[1:])
            _, payload, where, spans = reply
            return payload, unpack(slot.outbox.buf if where else None, spans)

    def _exchange(self, slot: _Slot, msg: tuple, deadline: float | None, is_active: Callable[[], bool]) -> tuple:
        """Send ``msg`` and wait for the reply, serving the worker's requests for a bigger out-arena. When the
        call ends first, tell the worker to stop and wait up to ``stop_grace`` for it (then replace it)."""
        assert slot.conn is not None and slot.proc is not None
        conn, proc, poller = slot.conn, slot.proc, slot.poller
        conn_fd = conn.fileno()
        stopping: Failure | None = None
        until = 0.0
        try:
            send(conn, msg)
            while True:
                wait = _poll_timeout(deadline) if stopping is None else max(0.0, min(POLL_SECONDS, until - time.monotonic()))
                ready = {fd for fd, _ in poller.poll(math.ceil(wait * 1000))}
                if conn_fd in ready:
                    reply = recv(conn)
                    if reply[0] != "grow":
                        if stopping is not None:
                            raise stopping
                        return reply
                    send(conn, None if stopping is not None else grant(slot.outbox, reply[1], self.max_reserve))
                    continue
                if proc.sentinel in ready:
                    raise EOFError
                if stopping is None:
                    try:
                        _check_alive(deadline, is_active, "computing")
                    except Failure as f:
                        stopping, until = f, time.monotonic() + self.stop_grace
                        slot.flag.value = slot.job
                elif time.monotonic() >= until:
                    self._replace(slot)
                    raise stopping
        except (EOFError, OSError, BrokenPipeError):
            proc.join(EXIT_WAIT_SECONDS)  # its pipe may close a moment before its exit status is known
            exitcode = proc.exitcode
            self._replace(slot)
            raise Failure(
                "UNAVAILABLE",
                f"worker process {proc.pid} died while computing this request ({_ended(exitcode)}); "
                "it has been replaced and retrying is safe",
            ) from None

    def close(self) -> None:
        """Stop taking work, stop every worker and release shared memory."""
        with self._life:
            with self._lock:
                self._closed = True
                self._cond.notify_all()
            for s in self._slots:
                if s.conn is not None:
                    s.conn.close()
                if s.proc is not None:
                    s.proc.join(timeout=2)
                    if s.proc.is_alive():
                        s.proc.kill()
                        s.proc.join()
                s.inbox.release()
                s.outbox.release()


def _ended(exitcode: int | None) -> str:
    """How a worker process ended, in words: its exit code, or the signal that killed it."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _poll_timeout(deadline: float | None) -> float:
    if deadline is None:
        return POLL_SECONDS
    return max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))


def _check_alive(deadline: float | None, is_active: Callable[[], bool], doing: str) -> None:
    """Raise DEADLINE_EXCEEDED or CANCELLED if the call should stop."""
    if deadline is not None and time.monotonic() >= deadline:
        raise Failure("DEADLINE_EXCEEDED", f"the deadline passed while {doing}; the work was stopped")
    if not is_active():
        raise Failure("CANCELLED", f"the call was cancelled while {doing}; the work was stopped")
