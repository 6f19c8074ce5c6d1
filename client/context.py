"""The context options: ``set_context(target=...)``, else ``GRADSERVE_TARGET``, else the embedded engine (chosen
by ``backends``); how a remote backend connects (bearer token, TLS), and how long its calls may take and retry."""
from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import grpc

OPTIONS = {
    "target": "GRADSERVE_TARGET",
    "token": "GRADSERVE_TOKEN",
    "tls_ca": "GRADSERVE_TLS_CA",
    "tls_cert": "GRADSERVE_TLS_CERT",
    "tls_key": "GRADSERVE_TLS_KEY",
    "retry_seconds": "GRADSERVE_RETRY_SECONDS",
    "timeout": "GRADSERVE_TIMEOUT",
    "batch_split": "GRADSERVE_BATCH_SPLIT",
}
"""Each context option and the environment variable read when ``set_context`` has not set it."""
SECONDS = ("retry_seconds", "timeout")
"""The options that are a number of seconds."""
FLAGS = ("batch_split",)
"""The options that are a bool (their variable: ``1``, ``true``, ``yes`` or ``on`` is True); the others are strings."""
CONNECTION = ("target", "token", "tls_ca", "tls_cert", "tls_key")
"""The options a backend is made for: changing one of them selects another backend."""
RETRY_SECONDS = 15.0
"""How long a remote call retries UNAVAILABLE by default: longer than a server's restart (about 2 s)."""
ENV_VAR = OPTIONS["target"]

GRAPH_MODE = 0
"""MindSpore's graph mode: networks are compiled to graphs (here both modes trace and cache graphs)."""
PYNATIVE_MODE = 1
"""MindSpore's PyNative mode, its default since 2.0: Python runs as written, value-dependent control flow included."""
MODES = {GRAPH_MODE: "GRAPH_MODE", PYNATIVE_MODE: "PYNATIVE_MODE"}
MINDSPORE_OPTIONS = (
    "device_target", "device_id", "save_graphs", "save_graphs_path", "check_bprop", "pynative_synchronize",
    "jit_syntax_level", "jit_config", "max_call_depth", "enable_graph_kernel", "runtime_num_threads",
    "memory_optimize_level", "deterministic", "max_device_memory", "enable_reduce_precision",
)
"""MindSpore's context options that scripts commonly set and that change nothing here; they are accepted and kept."""

_UNSET = object()
_UNKNOWN = object()
"""What ``_state`` gives for a key that is no gradserve option."""
_state: dict[str, Any] = dict.fromkeys(OPTIONS, _UNSET)
_mindspore: dict[str, Any] = {"mode": PYNATIVE_MODE}
generation = [0]
"""How many times ``set_context`` changed an option: ``backends`` keeps its choice while this stands still."""


def set_context(**kwargs: Any) -> None:
    """``target=None`` selects the embedded engine, ``target="host:port"`` a gradserve server; ``token`` (bearer
    token), ``tls_ca`` (CA file: use TLS), ``tls_cert`` and ``tls_key`` (client certificate files, mutual TLS)
    say how to connect; ``retry_seconds`` (how long a call retries unreachable servers, default 15) and ``timeout``
    (each call's deadline, default none) are seconds. Each is a string or a number of seconds, or None: the default,
    whatever the ``GRADSERVE_*`` variable says. ``batch_split=True`` splits the batch of every top-level weights'
    gradient call across the target's replicas (``gradserve.parallel.data_parallel``); the embedded engine ignores
    it. ``mode`` is ``GRAPH_MODE`` or ``PYNATIVE_MODE`` (the default); MindSpore's
    other common options (``device_target``...) are accepted and have no effect."""
    for key, value in kwargs.items():
        if key == "mode":
            if isinstance(value, bool) or value not in MODES:
                raise ValueError(f"set_context: mode must be GRAPH_MODE (0) or PYNATIVE_MODE (1), got {value!r}")
            _mindspore[key] = value
            continue
        if key in MINDSPORE_OPTIONS:
            _mindspore[key] = value
            continue
        if key not in OPTIONS:
            raise ValueError(f"set_context: unknown option {key!r}; gradserve understands only {_known()}")
        if key in SECONDS:
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and 0 <= value < float("inf")):
                raise TypeError(f"set_context: {key} must be None or a number of seconds >= 0, got {value!r}")
        elif key in FLAGS:
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"set_context: {key} must be None or a bool, got {value!r}")
        elif value is not None and not (isinstance(value, str) and value):
            what = "a non-empty 'host:port' string" if key == "target" else "a non-empty string"
            raise TypeError(f"set_context: {key} must be None or {what}, got {value!r}")
        _state[key] = value
        generation[0] += 1


def _known() -> str:
    """The option names set_context and get_context take, for an unknown one's error (a ValueError, as MindSpore's)."""
    return ", ".join(map(repr, (*OPTIONS, "mode", *MINDSPORE_OPTIONS)))


def get_context(key: str) -> Any:
    """The current value of a context option: the one set, else its ``GRADSERVE_*`` variable, else None
    (``mode``: PYNATIVE_MODE unless set)."""
    value = _state.get(key, _UNKNOWN)
    if value is _UNKNOWN:
        if key in _mindspore or key in MINDSPORE_OPTIONS:
            return _mindspore.get(key)
        raise ValueError(f"get_context: unknown option {key!r}; gradserve understands only {_known()}")
    if value is not _UNSET:
        return value
    env = os.environ.get(OPTIONS[key]) or None
    return (env or "").strip().lower() in ("1", "true", "yes", "on") if key in FLAGS else env


def retry_seconds() -> float:
    """How long a remote call retries UNAVAILABLE: the ``retry_seconds`` option, else RETRY_SECONDS."""
    seconds = _seconds("retry_seconds")
    return RETRY_SECONDS if seconds is None else seconds


def call_timeout() -> float | None:
    """Each remote call's deadline in seconds from its start: the ``timeout`` option, else None (no deadline)."""
    return _seconds("timeout")


def _seconds(key: str) -> float | None:
    value = get_context(key)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{OPTIONS[key]} must be a number of seconds >= 0, got {value!r}")
    return seconds


def open_channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A gRPC channel to ``target`` as the context says: TLS when ``tls_ca`` is set (with ``tls_cert`` and
    ``tls_key``: mutual TLS), plaintext otherwise; ``authorization: Bearer <token>`` on every call when ``token`` is set."""
    import grpc

    ca, cert, key = (get_context(k) for k in ("tls_ca", "tls_cert", "tls_key"))
    if (cert or key) and not (ca and cert and key):
        raise ValueError("tls_cert and tls_key (GRADSERVE_TLS_CERT, GRADSERVE_TLS_KEY) go together, and need tls_ca")
    if ca:
        credentials = grpc.ssl_channel_credentials(_read(ca), _read(key) if key else None, _read(cert) if cert else None)
        channel = grpc.secure_channel(target, credentials, options)
    else:
        channel = grpc.insecure_channel(target, options)
    token = get_context("token")
    return grpc.intercept_channel(channel, _bearer(token)) if token else channel


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _bearer(token: str) -> Any:
    """A client interceptor adding ``authorization: Bearer <token>`` to every call's metadata."""
    import grpc

    class Details(collections.namedtuple("Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                     "compression")), grpc.ClientCallDetails):
        """Call details with the token added."""

    class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        """Adds the token to every kind of call."""

        def _call(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
            return continuation(Details(details.method, details.timeout, metadata, details.credentials,
                                        details.wait_for_ready, details.compression), request)

        intercept_unary_unary = intercept_unary_stream = _call
        intercept_stream_unary = intercept_stream_stream = _call

    return Bearer()
