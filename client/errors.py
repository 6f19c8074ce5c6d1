"""Errors the client raises on its own, before anything reaches a backend."""
from __future__ import annotations

import os
import traceback

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(p))
    for p in (__file__, os.path.join(os.path.dirname(__file__), "..", "gradserve", "__init__.py"))
)


class TracingError(RuntimeError):
    """Something in a ``construct`` cannot be turned into a static graph (value-dependent Python code)."""


def user_location() -> str:
    """``file:line in function: source`` of the innermost caller outside the gradserve package."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.dirname(os.path.abspath(frame.filename))
        if not any(path == d or path.startswith(d + os.sep) for d in _PACKAGE_DIRS):
            src = f": {frame.line.strip()}" if frame.line else ""
            return f"{frame.filename}:{frame.lineno} in {frame.name}{src}"
    return "<unknown location>"
