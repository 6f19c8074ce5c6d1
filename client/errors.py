"""Errors the client raises on its own, before anything reaches a backend."""
from __future__ import annotations

import os
import sys
import traceback


class TracingError(RuntimeError):
    """Something in a ``construct`` cannot be turned into a static graph (value-dependent Python code)."""


def user_location() -> str:
    """``file:line in function: source`` of the innermost caller outside the gradserve package."""
    frame = _user_frame()
    if frame is None:
        return "<unknown location>"
    src = f": {frame.line.strip()}" if frame.line else ""
    return f"{frame.filename}:{frame.lineno} in {frame.name}{src}"


def user_site() -> tuple[str, int, str]:
    """``(file, line, function)`` of the innermost caller outside the gradserve package: a call site's identity."""
    frame = _user_frame()
    return ("", 0, "") if frame is None else (frame.filename, frame.lineno or 0, frame.name)


def _user_frame() -> traceback.FrameSummary | None:
    """The innermost stack frame outside the gradserve package, if any."""
    dirs = _package_dirs()
    for frame in reversed(traceback.extract_stack()):
        path = os.path.dirname(os.path.abspath(frame.filename))
        if not any(path == d or path.startswith(d + os.sep) for d in dirs):
            return frame
    return None


def _package_dirs() -> tuple[str, ...]:
    """Folders of the imported gradserve packages, wherever setuptools mapped them from."""
    return tuple(
        os.path.abspath(p)
        for name, mod in list(sys.modules.items())
        if (name == "gradserve" or name.startswith("gradserve.")) and hasattr(mod, "__path__")
        for p in mod.__path__
    )
