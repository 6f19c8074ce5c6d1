"""The local lane: requests whose plan is small are computed in the server process.

Handing a request to a worker costs two process wake-ups and a pickled round trip with the server process:
several times the work of a tiny gradient, and a third or more of a few-millisecond training step. A worker
builds every plan first; when the plan is ``local`` (``compute.Plan.local``) the worker sends it along with
its answer (``compute.export_plan``) and later requests for it run here on that plan. Tiny plans (their runs
touch at most ``local_max_elements`` elements) run at once, one at a time, unchecked: their work is bounded.
``bounded`` plans (within ``local_max_flops`` and ``local_max_peak_bytes``) run here only when the bounded lane
is free, a worker idle (its turn is taken meanwhile, so no more requests compute at once than there are
workers) and this process serving no other call (its Python threads share one interpreter lock, so with
concurrent calls the work stays in the workers), one at a time, asking between steps whether their call has
ended; any other request for them goes to a worker as usual. Nothing is compiled here: a request whose plan the
cache dropped goes to a worker, which sends the plan again.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, NamedTuple

from gradserve.engine import Interrupted

from . import compute
from .blobs import Lifted
from .cache import Cache
from .config import Limits
from .errors import Failure, stopped
from .jsonlog import log


class _Shared(Cache):
    """The lane's cache, used by both of its lanes' threads: ``get`` and ``put``, the only operations the lane uses, under one lock."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(size, max_bytes)
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return super().get(key, default)

    def put(self, key: Any, value: Any, nbytes: int = 0) -> list[Any]:
        with self._lock:
            return super().put(key, value, nbytes)


class Known(NamedTuple):
    """A Grad or Run request recognized by its bytes (``Lane.recognize``): laid out as the one that taught its plan's
    Reading, which read its arguments; what the servicer would otherwise parse the request for."""

    key: tuple
    found: compute.Plan
    given: compute.Args
    network_id: str
    request_id: str


LAYOUTS_KEPT = 64
"""Request layouts ``Lane.recognize`` looks for (the most recently learned): one per plan and request size."""


class Lane:
    """Plans the workers found ``local`` and sent, run in this process."""

    def __init__(self, limits: Limits, cache_size: int, borrow: Callable[[], Callable[[], None] | None]) -> None:
        self._state = compute.worker_state(limits, _Shared(cache_size, limits.max_worker_cache_bytes), 0)
        self._borrow = borrow
        """Takes an idle worker's turn for a bounded run (``WorkerPool.borrow``): the lane adds no core's worth of work."""
        self._tiny = threading.Lock()
        self._bounded = threading.Lock()
        self._count = threading.Lock()
        self._layouts = _Shared(LAYOUTS_KEPT, 0)
        """(key, network id, request id, Reading) of the request that taught a plan its Reading, by (kind, request size)."""
        self.served = 0
        """Requests computed here (a Prometheus counter reads it)."""
        self.passed = 0
        """Requests for a bounded plan held here that went to a worker instead (see ``run``)."""

    def plan(self, key: tuple) -> compute.Plan | None:
        """The plan ``key`` (a ``compute.plan_key``) when it runs here."""
        found: compute.Plan | None = self._state.cache.get(key)
        return found

    def recognize(self, kind: str, raw: bytes) -> Known | None:
        """The ``kind`` request ``raw`` when it is laid out as one that taught its plan's Reading (its arguments read),
        so that it need not be parsed; else None (also when that plan has left the cache, or is held again with a
        Reading another request taught it: that request's ids are not the layout's)."""
        layout = self._layouts.get((kind, len(raw)))
        if layout is None:
            return None
        key, network_id, request_id, reading = layout
        found = self.plan(key)
        if found is None or found.reading is not reading:
            return None
        given = found.read(raw)
        return None if given is None else Known(key, found, given, network_id, request_id)

    def admit(self, key: tuple, plan: bytes) -> None:
        """Run the plan ``key`` here from now on: a worker found it local and sent it (``compute.export_plan``). The
        lane is only a shortcut: a plan that fails to load is logged as a warning and left to the workers, and the
        request that brought it keeps its answer."""
        try:
            found = compute.import_plan(plan)
        except Exception as exc:
            log("plan_not_admitted", level="warning", error=f"{type(exc).__name__}: {exc}"[:compute.ERROR_LOG_CHARS])
            return
        self._state.cache.put(key, found, found.held)

    def run(self, found: compute.Plan, kind: str, incoming: Lifted, key: tuple, network_id: str, network: bytes,
            deadline: float | None, is_active: Callable[[], bool], spare: bool) -> list[Any] | None:
        """Compute ``incoming`` (a request whose plan is ``found``, as ``plan(key)`` or ``recognize`` gave it) here: the
        pieces whose join is the response (``compute.pieces``), or None when it must go to a worker (the plan is
        bounded and the bounded lane busy, no worker idle or ``spare`` false: this process serving other calls, or the
        request a stream's). Raises Failure for a bad request, and DEADLINE_EXCEEDED or CANCELLED when a bounded run's
        call ends. The network is decoded here too (once, cached) for requests that do not match the plan's types exactly."""
        if found.bounded and not spare:
            self._passed()
            return None
        room = self._bounded if found.bounded else self._tiny
        if not room.acquire(blocking=not found.bounded):
            self._passed()
            return None
        give_back = self._borrow() if found.bounded else None
        if found.bounded and give_back is None:
            room.release()
            self._passed()
            return None
        try:
            stop = _Stop(deadline, is_active) if found.bounded else None
            try:
                # The plan and the network are held here and passed on: decoding the network may drop the plan from
                # the cache, and the other lane's thread may drop the network.
                given = self._given(found, kind, incoming, key, network_id, network)
                out = compute.pieces(found, kind, compute.execute(found, given, stop))
            except Interrupted as exc:
                raise stop.failure(exc) if stop is not None else compute.classify(exc) from None
            except Exception as exc:
                raise compute.classify(exc) from None
        finally:
            room.release()
            if give_back is not None:
                give_back()
        with self._count:
            self.served += 1
        return out

    def _given(self, found: compute.Plan, kind: str, incoming: Lifted, key: tuple, network_id: str, network: bytes) -> compute.Args:
        """The arguments of ``incoming``'s run of ``found``: read by the plan's Reading when the request was recognized
        or its bytes fit it, else taken or decoded (``compute.checked``). The request that teaches the plan its Reading,
        when it names its network by id, is the layout ``recognize`` looks for from then on."""
        known: Known | None = incoming.known
        if known is not None:
            return known.given
        raw = None if incoming.places else incoming.raw
        given = found.read(raw)
        if given is not None:
            return given
        taught, request = found.read_taught, incoming.message
        given = compute.checked(self._state, kind, found, compute.Tensors.of(request, incoming.places, incoming.data),
                                self._state.network(network_id, network), raw)
        if raw is not None and not taught and found.reading is not None and request.WhichOneof("network") == "network_id":
            self._layouts.put((kind, len(raw)), (key, network_id, request.request_id, found.reading))
        return given

    def _passed(self) -> None:
        """Count a request for a bounded plan held here that goes to a worker instead."""
        with self._count:
            self.passed += 1


ACTIVE_EVERY = 8
"""A bounded run here asks whether its caller is still there before every this many steps (gRPC's ``is_active``
takes a lock: asked before every step of a digits CNN gradient it cost 3% of the run); the deadline before each."""


class _Stop:
    """The engine's ``interrupt`` hook for a bounded run here: True once the call's deadline has passed or its
    caller has gone (as ``worker.Stop`` for a worker's run)."""

    def __init__(self, deadline: float | None, is_active: Callable[[], bool]) -> None:
        self.deadline = deadline
        self.is_active = is_active
        self.asked = 0

    def __call__(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        self.asked += 1
        return self.asked % ACTIVE_EVERY == 0 and not self.is_active()

    def failure(self, exc: Exception) -> Failure:
        """The status of a run this hook stopped, saying why."""
        return stopped(self.deadline is None or time.monotonic() < self.deadline, exc)
