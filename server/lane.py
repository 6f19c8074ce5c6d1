"""The local lane: requests whose plan is tiny are computed in the server process.

Handing a request to a worker costs two process wake-ups and a pickled round trip, several times
the work of a tiny gradient. A worker builds every plan first; when it reports the plan ``local``
(``compute.Plan.local``: its runs touch at most ``local_max_elements`` elements and it has at most
``compute.LOCAL_MAX_NODES`` nodes, so it builds quickly),
later requests for it run here, one at a time, with no deadline checks needed: their work is bounded.
"""
from __future__ import annotations

import threading
from typing import Any

from . import compute
from .blobs import data_header
from .config import Limits
from .worker import Cache

LOCAL_MAX_NETWORK_BYTES = 64 << 10
"""Networks serialized larger than this are never decoded in the server process (decoding costs time
in proportion to the whole network, however little of it a plan runs)."""


class Lane:
    """Plans the workers found ``local``, compiled again and run in this process."""

    def __init__(self, limits: Limits, max_elements: int, cache_size: int) -> None:
        self._state = compute.worker_state(limits, Cache(cache_size, limits.max_worker_cache_bytes), max_elements)
        self._admitted = Cache(cache_size)
        self._lock = threading.Lock()
        self.served = 0
        """Requests computed here (a Prometheus counter reads it)."""

    def takes(self, key: tuple) -> bool:
        """Whether the plan ``key`` (a ``compute.plan_key``) runs here."""
        return key in self._admitted

    def admit(self, key: tuple, network: bytes) -> None:
        """Run the plan ``key`` here from now on (a worker found it local)."""
        if len(network) <= LOCAL_MAX_NETWORK_BYTES:
            with self._lock:
                self._admitted.put(key, True)

    def run(self, kind: str, request: Any, network_id: str, network: bytes, key: tuple) -> tuple[list[bytes], list[bytes]]:
        """Compute ``request`` (whose plan is ``key``) here: the response's parts and the frames of its large
        leaves (``compute.Encoded``); raises Failure for a bad request."""
        with self._lock:
            state = self._state
            try:
                state.network(network_id, network)
                _, encoded = compute.run(state, kind, request, compute.Tensors.of(request), network_id, key)
            except Exception as exc:
                raise compute.classify(exc) from None
            self.served += 1
        return encoded.parts, [data_header(a.nbytes) + a.tobytes() for a in encoded.arrays]
