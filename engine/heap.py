"""Keeping freed heap memory for the next run instead of handing it back to the system.

glibc's malloc maps a fresh block for each allocation above its mmap threshold, and trims the heap's free top above
its trim threshold; both start small (128 KiB) and only grow as large blocks are freed. A program's intermediates of a
few hundred KiB each, alive together, then come back as new pages on every run, one page fault per 4 KiB: in a fresh
process the PINN case of ``bench/engine.py`` ran in 2.3 ms instead of 1.0 ms, the digits CNN training step in 4.8 ms
instead of 4.2. Raising both thresholds once per process keeps those pages (glibc's own settings of them win: its
``MALLOC_*`` variables and its ``GLIBC_TUNABLES``)."""
from __future__ import annotations

import ctypes
import os
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's mallopt parameter numbers (malloc.h)."""
PROGRAM_HEAP_KEEP_BYTES = 32 << 20
"""What a process that runs programs keeps (``keep_heap``), unless something asked for more."""
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
"""The same two thresholds as glibc tunables (``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:...``)."""

_lock = threading.Lock()
_kept = [0]
"""The largest ``keep`` asked for in this process so far (0: none yet)."""


def keep_heap(keep: int = PROGRAM_HEAP_KEEP_BYTES) -> None:
    """Let glibc keep up to ``keep`` freed bytes at the heap's top, and serve blocks up to ``keep`` from the heap; only
    ever raised (a worker's larger bound stays). Nothing happens when glibc's variables or tunables set either
    threshold, or the C library is not glibc."""
    if keep <= _kept[0]:
        return
    with _lock:
        if keep <= _kept[0]:
            return
        _kept[0] = keep
        tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
        if any(k in os.environ for k in GLIBC_VARIABLES) or any(t.startswith(GLIBC_TUNABLES) for t in tunables):
            return
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            return
        mallopt(M_MMAP_THRESHOLD, keep)
        mallopt(M_TRIM_THRESHOLD, keep)
