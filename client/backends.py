"""Choosing the backend for the current context: the embedded engine with no target, else a remote backend made
by a registered factory or, by default, ``remote.RemoteBackend`` (imported on first use, so that the embedded
engine needs no grpc); and the batch splitter that ``batch_split`` routes top-level gradient calls through."""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

from .backend import Backend
from .context import CONNECTION, ENV_VAR, generation, get_context
from .embedded import EmbeddedBackend

REMOTE_MODULE = "gradserve.client.remote"
"""Holds ``RemoteBackend``, the default factory of a target's backend; imported on first use of a target."""

_factories: list[Callable[[str], Backend]] = []
_splitters: list[Callable[[Any, tuple[Any, ...]], tuple[bool, Any]]] = []
_backends: dict[tuple[str | None, ...], Backend] = {}
_current: list[Any] = [None, None, -1]
"""The backend ``get_backend`` chose last, the ``_backends`` registry it was chosen from, and the context's
``generation`` then: kept until ``set_context`` changes an option or the registry is replaced, so that steady
calls read no environment variable."""
_lock = threading.Lock()


def register_backend_factory(factory: Callable[[str], Backend]) -> None:
    """``factory(target)`` makes the Backend for a ``host:port`` target (the last registered wins over the default)."""
    _factories.append(factory)


def register_batch_splitter(split: Callable[[Any, tuple[Any, ...]], tuple[bool, Any]]) -> None:
    """Called by the data-parallel module: ``split(grad_fn, args)`` gives ``(True, result)`` for a call it split
    across replicas, ``(False, None)`` for one that runs as usual."""
    _splitters.append(split)


def batch_splitter(backend: Backend | None = None) -> Callable[[Any, tuple[Any, ...]], tuple[bool, Any]] | None:
    """The splitter top-level gradient calls go through when ``batch_split`` is on and the target is a server;
    None otherwise (the embedded engine ignores the flag). The backend (``backend``, else ``get_backend()``'s) is
    asked first: ``get_backend`` keeps its choice, so a steady call on the embedded engine reads no environment
    variable. ``gradserve.client`` imports the data-parallel module, which registers the splitter."""
    if isinstance(backend or get_backend(), EmbeddedBackend) or not get_context("batch_split"):
        return None
    return _splitters[-1]


def get_backend() -> Backend:
    """The Backend for the current target and connection settings, created once for each. The settings are read
    (``set_context``'s, else the ``GRADSERVE_*`` variables) on the first call and after each ``set_context``."""
    backend, registry, seen = _current
    now = generation[0]
    if registry is _backends and seen == now:
        return backend  # type: ignore[no-any-return]
    target = get_context("target")
    settings = (None,) if target is None else tuple(get_context(k) for k in CONNECTION)
    with _lock:
        backend = _backends.get(settings)
        if backend is None:
            backend = EmbeddedBackend() if target is None else _remote(target)
            _backends[settings] = backend
        if generation[0] == now:
            _current[:] = [backend, _backends, now]
    return backend


def _remote(target: str) -> Backend:
    if _factories:
        return _factories[-1](target)
    try:
        module = importlib.import_module(REMOTE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != REMOTE_MODULE:
            raise
        raise RuntimeError(
            f"target {target!r} (from set_context or {ENV_VAR}) needs a remote backend, but none is available: "
            f"{REMOTE_MODULE} is not installed and no factory was registered with "
            f"gradserve.client.register_backend_factory; use set_context(target=None) for the embedded engine"
        ) from None
    return module.RemoteBackend(target)  # type: ignore[no-any-return]
