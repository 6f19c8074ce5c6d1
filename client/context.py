"""Choosing the backend: ``set_context(target=...)``, else ``GRADSERVE_TARGET``, else the embedded engine."""
from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Callable

from .backend import Backend
from .embedded import EmbeddedBackend

ENV_VAR = "GRADSERVE_TARGET"
REMOTE_MODULE = "gradserve.client.remote"
"""Imported on first use of a target, so that it can register its factory."""

_UNSET = object()
_state: dict[str, Any] = {"target": _UNSET}
_factories: list[Callable[[str], Backend]] = []
_backends: dict[str | None, Backend] = {}
_lock = threading.Lock()


def set_context(**kwargs: Any) -> None:
    """``set_context(target=None)`` selects the embedded engine; ``target="host:port"`` a gradserve server."""
    for key, value in kwargs.items():
        if key != "target":
            raise TypeError(f"set_context: unknown option {key!r}; gradserve understands only 'target'")
        if value is not None and not (isinstance(value, str) and value):
            raise TypeError(f"set_context: target must be None or a non-empty 'host:port' string, got {value!r}")
        _state["target"] = value


def get_context(key: str) -> Any:
    """The current value of a context option (``target``: None means the embedded engine)."""
    if key != "target":
        raise TypeError(f"get_context: unknown option {key!r}; gradserve understands only 'target'")
    target = _state["target"]
    return (os.environ.get(ENV_VAR) or None) if target is _UNSET else target


def register_backend_factory(factory: Callable[[str], Backend]) -> None:
    """Called by a remote-backend module: ``factory(target)`` makes the Backend for a ``host:port`` target."""
    _factories.append(factory)


def get_backend() -> Backend:
    """The Backend for the current target, created once per target."""
    target = get_context("target")
    with _lock:
        backend = _backends.get(target)
        if backend is None:
            backend = EmbeddedBackend() if target is None else _remote(target)
            _backends[target] = backend
    return backend


def _remote(target: str) -> Backend:
    if not _factories:
        try:
            importlib.import_module(REMOTE_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != REMOTE_MODULE:
                raise
    if not _factories:
        raise RuntimeError(
            f"target {target!r} (from set_context or {ENV_VAR}) needs a remote backend, but none is available: "
            f"{REMOTE_MODULE} is not installed and no factory was registered with "
            f"gradserve.client.register_backend_factory; use set_context(target=None) for the embedded engine"
        )
    return _factories[-1](target)
