"""Handing the memory freed after large requests back to the system.

gRPC receives a message into many small buffers, which glibc's malloc serves from per-thread arenas
and keeps after they are freed: after a burst of large requests the server process stayed 1.1 GiB
larger than at rest. ``malloc_trim`` returns the free pages of every arena (measured: to 0.3 GiB)."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Callable

TRIM_AFTER_BYTES = 64 << 20
"""Trim once this many bytes of large requests have been freed since the last trim."""
PERIOD_SECONDS = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Trimmer:
    """A daemon thread that trims malloc's arenas every ``PERIOD_SECONDS`` in which ``freed()`` (a running
    total of bytes) grew by ``TRIM_AFTER_BYTES`` or more; ``stop()`` ends it."""

    def __init__(self, freed: Callable[[], int]) -> None:
        self._freed = freed
        self._last = freed()
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
        if self._trim is not None:
            self._thread.start()

    def _run(self) -> None:
        assert self._trim is not None
        while not self._stop.wait(PERIOD_SECONDS):
            now = self._freed()
            if now - self._last >= TRIM_AFTER_BYTES:
                self._trim(0)
                self.trims += 1
                self._last = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
