"""Server settings and limits: defaults, ``--flag`` and ``GRADSERVE_*`` environment variables."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Limits enforced on every request, all checked before the memory they guard is allocated.

    With the defaults a server with W workers stays within about 1104 MiB + W x 1984 MiB in all, /dev/shm
    included (the formula is in deploy/kubernetes/README.md): a 256 MB tensor in and out of every worker."""

    max_message_bytes: int = 256 * MiB + 16 * MiB
    """Largest gRPC message either way: room for a 256 MB tensor plus the rest of the message."""
    max_graph_nodes: int = 100_000
    max_tensor_elements: int = 1 << 28
    max_tensor_rank: int = 32
    max_nesting_depth: int = 32
    default_deadline_ms: int = 60_000
    max_deadline_ms: int = 600_000
    max_queue_depth: int = 64
    max_queued_bytes: int = 384 * MiB
    """Request bytes (as received) of the Grad and Run calls waiting for a worker or being computed; a call
    that would bring them over this is refused (RESOURCE_EXHAUSTED) before its data is copied anywhere."""
    max_registered_networks: int = 1024
    max_registry_bytes: int = 320 * MiB
    """Serialized bytes of the networks the server keeps registered (least recently used evicted first);
    a single network larger than this is refused."""
    max_worker_cache_bytes: int = 128 * MiB
    """Bytes of networks and compiled programs (parameters and constants) each worker, and the local
    lane, keeps (least recently used dropped first; the one in use is always kept)."""
    max_request_peak_bytes: int = 768 * MiB
    """Most tensor bytes alive at once while one request runs (known from shapes at compile time)."""
    max_request_flops: int = 10**11
    """Most floating-point operations (estimated from shapes at compile time) one request may cost."""
    stop_grace_ms: int = 2_000
    """How long a worker told to stop (its call cancelled or expired) may take to finish its current
    operation before it is killed and replaced."""
    max_open_streams: int = 16
    """GradStream calls open at once; each holds a gRPC thread for as long as it is open, so beyond this
    a new stream is refused (RESOURCE_EXHAUSTED) and health checks and unary calls keep their threads."""


PROTOBUF_MAX_BYTES = (1 << 31) - 1
"""protobuf cannot serialize or parse a message of 2 GiB or more."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``gradserve serve`` can be told."""

    host: str = "[::]"
    port: int = 50051
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    grace_seconds: float = 30.0
    """How long SIGTERM waits for in-flight calls before exiting."""
    worker_cache_size: int = 64
    """Networks and compiled programs each worker keeps (least recently used are dropped)."""
    local_max_elements: int = 1 << 14
    """Programs whose every run reads and writes at most this many tensor elements in all (a few
    microseconds of NumPy) run in the server process once a worker has compiled them, skipping the
    round trip to a worker, which costs more than such work; 0: every request runs in a worker."""
    max_connection_age_seconds: float = 0.0
    """Send each client connection GOAWAY this long after it opened (its calls may finish, up to
    max_deadline_ms), so that clients of a DNS name reconnect and spread over replicas added since;
    0: a connection lasts as long as its client keeps it."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint (plain HTTP on ``host``); None: off, 0: a free port (logged)."""
    auth_token: str = field(default="", repr=False)
    """When set (or read from ``auth_token_file``), Gradient calls need ``authorization: Bearer <token>``."""
    auth_token_file: str = ""
    tls_cert: str = ""
    """PEM certificate chain; with ``tls_key`` the server speaks TLS only."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    access_log: bool = False
    """Log one JSON line per call (event "access": method, code, duration_ms, request_id, network_id)."""
    limits: Limits = field(default_factory=Limits)

    def bearer_token(self) -> str:
        """The token Gradient calls must carry ("" when auth is off), from ``auth_token`` or ``auth_token_file``."""
        if self.auth_token_file:
            with open(self.auth_token_file, encoding="ascii") as f:
                return f.read().strip()
        return self.auth_token

    def tls_files(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate chain, private key, client CA or None) read from their files, or None without TLS."""
        if not self.tls_cert:
            return None
        ca = _read(self.tls_client_ca) if self.tls_client_ca else None
        return _read(self.tls_cert), _read(self.tls_key), ca


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return "GRADSERVE_" + name.upper()


def boolean(text: str) -> bool:
    """A yes/no setting's value: 1, true, yes, on or 0, false, no, off."""
    word = text.strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"not a yes/no value: {text!r}")
    return word in ("1", "true", "yes", "on")


def _kind(f: dataclasses.Field) -> Any:
    return {"float": float, "str": str, "bool": boolean}.get(str(f.type), int)


def _scalar_fields() -> list[tuple[dataclasses.Field, bool]]:
    """(field, is_limit) for every setting that has a flag."""
    own = [(f, False) for f in dataclasses.fields(ServerConfig) if f.name != "limits"]
    return own + [(f, True) for f in dataclasses.fields(Limits)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting; each also reads ``GRADSERVE_<NAME>``; a flag wins over the variable."""
    for f, _ in _scalar_fields():
        switch: dict[str, Any] = {"nargs": "?", "const": True} if _kind(f) is boolean else {}  # a bare --flag turns it on
        parser.add_argument(_flag(f.name), dest=f.name, type=_kind(f), default=None,
                            help=f"(env {_env(f.name)})", **switch)


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """The configuration from parsed flags, then environment variables, then defaults."""
    base = ServerConfig()
    top: dict[str, Any] = {}
    lim: dict[str, Any] = {}
    for f, is_limit in _scalar_fields():
        value: Any = getattr(args, f.name, None)
        if value is None and _env(f.name) in environ:
            raw = environ[_env(f.name)]
            kind = _kind(f)
            try:
                value = kind(raw)
            except ValueError:
                raise SystemExit(f"gradserve: {_env(f.name)}={raw!r} is not a valid {kind.__name__}") from None
        if value is not None:
            (lim if is_limit else top)[f.name] = value
    cfg = dataclasses.replace(base, **top, limits=dataclasses.replace(base.limits, **lim))
    _validate(cfg)
    return cfg


def _validate(cfg: ServerConfig) -> None:
    if cfg.workers < 1:
        raise SystemExit(f"gradserve: --workers must be at least 1, got {cfg.workers}")
    if cfg.max_connection_age_seconds < 0:
        raise SystemExit(f"gradserve: --max-connection-age-seconds must be >= 0, got {cfg.max_connection_age_seconds}")
    if cfg.local_max_elements < 0:
        raise SystemExit(f"gradserve: --local-max-elements must be >= 0, got {cfg.local_max_elements}")
    if cfg.metrics_port is not None and not 0 <= cfg.metrics_port < 65536:
        raise SystemExit(f"gradserve: --metrics-port must be 0 to 65535, got {cfg.metrics_port}")
    if cfg.auth_token and cfg.auth_token_file:
        raise SystemExit("gradserve: set --auth-token or --auth-token-file, not both")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise SystemExit("gradserve: --tls-cert and --tls-key go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise SystemExit("gradserve: --tls-client-ca needs --tls-cert and --tls-key")
    try:
        token, _ = cfg.bearer_token(), cfg.tls_files()
    except OSError as exc:
        raise SystemExit(f"gradserve: cannot read {exc.filename}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"gradserve: the auth token file {cfg.auth_token_file} is not ASCII text") from None
    if (cfg.auth_token or cfg.auth_token_file) and not (token and token.isascii() and token.isprintable() and " " not in token):
        raise SystemExit("gradserve: the auth token must be non-empty printable ASCII without spaces")
    for f in dataclasses.fields(Limits):
        if getattr(cfg.limits, f.name) < 0:
            raise SystemExit(f"gradserve: {_flag(f.name)} must be >= 0, got {getattr(cfg.limits, f.name)}")
    if cfg.limits.max_message_bytes > PROTOBUF_MAX_BYTES:
        raise SystemExit(f"gradserve: --max-message-bytes must be below 2 GiB (at most {PROTOBUF_MAX_BYTES}, "
                         f"protobuf's message size limit), got {cfg.limits.max_message_bytes}")
