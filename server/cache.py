"""The one least-recently-used map of the server: workers' and the local lane's networks and plans, and
the registry of networks."""
from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Any

COLLECT_AFTER_BYTES = 8 << 20
"""A cache that has dropped entries holding this many bytes runs the garbage collector: a decoded network
and the gradients cached on it form reference cycles, which the collector, counting objects rather than
the bytes they hold, would otherwise free only after a hundred or so large networks."""


class Cache:
    """A least-recently-used map bounded by entry count and by the bytes its entries hold; the entry
    put last is always kept, so that the one in use is never dropped."""

    def __init__(self, size: int, max_bytes: int = 0, collect: bool = True) -> None:
        self.size = size
        self.max_bytes = max_bytes
        """0: no byte bound."""
        self.collect = collect
        """Run the garbage collector after dropping ``COLLECT_AFTER_BYTES`` (for entries that form reference cycles)."""
        self.nbytes = 0
        self._dropped = 0
        """Bytes of entries dropped since the last garbage collection."""
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def __contains__(self, key: Any) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def held(self, key: Any) -> int:
        """The bytes the entry of ``key`` holds (0 when there is none); not a use."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry[1]

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (now the most recently used), or ``default``."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Any, value: Any, nbytes: int = 0) -> list[Any]:
        """Insert ``value`` holding ``nbytes``, dropping the least recently used entries beyond the bounds;
        returns the keys dropped."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        gone = []
        while len(self._entries) > 1 and (len(self._entries) > self.size or (self.max_bytes and self.nbytes > self.max_bytes)):
            dropped, (_, size) = self._entries.popitem(last=False)
            gone.append(dropped)
            self.nbytes -= size
            self._dropped += size
        if self.collect and self._dropped >= COLLECT_AFTER_BYTES:
            self._dropped = 0
            gc.collect()
        return gone
