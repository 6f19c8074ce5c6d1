"""Structured log lines: one JSON object per event on stderr."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

_lock = threading.Lock()


def log(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Write ``{"ts", "level", "event", **fields}`` as one line; errors are level "error"."""
    level = "error" if event.endswith("error") else "info"
    line = json.dumps({"ts": round(time.time(), 3), "level": level, "event": event, **fields}, default=str)
    with _lock:
        print(line, file=stream or sys.stderr, flush=True)
