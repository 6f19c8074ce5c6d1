"""Structured log lines: one JSON object per event on stderr, those below the process's log level dropped."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
"""Log levels, least severe first."""

_lock = threading.Lock()
_threshold = LEVELS.index("info")


def set_level(level: str) -> None:
    """Write only lines of ``level`` (one of ``LEVELS``) or more severe from now on, in this process."""
    global _threshold
    _threshold = LEVELS.index(level)


def log(event: str, stream: TextIO | None = None, level: str | None = None, **fields: Any) -> None:
    """Write ``{"ts", "level", "event", **fields}`` as one line; ``level`` defaults to "error" for events
    ending in "error", else "info"."""
    level = level or ("error" if event.endswith("error") else "info")
    if LEVELS.index(level) < _threshold:
        return
    line = json.dumps({"ts": round(time.time(), 3), "level": level, "event": event, **fields}, default=str)
    with _lock:
        print(line, file=stream or sys.stderr, flush=True)
