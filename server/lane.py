"""The local lane: requests whose plan is tiny are computed in the server process.

Handing a request to a worker costs two process wake-ups and a pickled round trip, several times
the work of a tiny gradient. A worker builds every plan first; when the plan is ``local``
(``compute.Plan.local``: its runs touch at most ``local_max_elements`` elements, it has at most
``compute.LOCAL_MAX_NODES`` nodes and its network is small), the worker sends it along with its answer
(``compute.export_plan``) and later requests for it run here on that plan, one at a time, with no
deadline checks needed: their work is bounded. Nothing is compiled here unless the cache dropped a plan.
"""
from __future__ import annotations

import threading
from typing import Any

from . import compute
from .blobs import data_header
from .cache import Cache
from .config import Limits


class Lane:
    """Plans the workers found ``local`` and sent, run in this process."""

    def __init__(self, limits: Limits, cache_size: int) -> None:
        self._state = compute.worker_state(limits, Cache(cache_size, limits.max_worker_cache_bytes), 0)
        self._lock = threading.Lock()
        self.served = 0
        """Requests computed here (a Prometheus counter reads it)."""

    def takes(self, key: tuple) -> bool:
        """Whether the plan ``key`` (a ``compute.plan_key``) runs here."""
        return key in self._state.cache

    def admit(self, key: tuple, plan: bytes) -> None:
        """Run the plan ``key`` here from now on: a worker found it local and sent it (``compute.export_plan``)."""
        found = compute.import_plan(plan)
        with self._lock:
            self._state.cache.put(key, found, found.held)

    def run(self, kind: str, request: Any, network_id: str, network: bytes, key: tuple) -> tuple[list[bytes], list[bytes]]:
        """Compute ``request`` (whose plan is ``key``) here: the response's parts and the frames of its large
        leaves (``compute.Encoded``); raises Failure for a bad request. The network is decoded here too (once,
        cached) for requests that do not match the plan's types exactly, which the codec checks."""
        with self._lock:
            state = self._state
            try:
                state.network(network_id, network)
                _, encoded = compute.run(state, kind, request, compute.Tensors.of(request), network_id, key)
            except Exception as exc:
                raise compute.classify(exc) from None
            self.served += 1
        return encoded.parts, [data_header(a.nbytes) + a.tobytes() for a in encoded.arrays]
