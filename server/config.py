"""Server settings and limits: defaults, ``--flag`` and ``GRADSERVE_*`` environment variables."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from gradserve.proto import codec

from . import jsonlog

MiB = 1 << 20


@dataclass(frozen=True)
class Limits(codec.Limits):
    """Limits enforced on every request, all checked before the memory they guard is allocated: the
    codec's (what one request may contain) with the server's defaults, and the server's own; 0 is no limit.

    With the defaults a server with W workers stays within about 2951 MiB + W x 1984 MiB in all, /dev/shm
    included (the formula is in deploy/kubernetes/README.md): a 256 MB tensor in and out of every worker."""

    max_tensor_elements: int = 1 << 28
    # All four codec limits are declared here (these two with the codec's defaults) so that mypy knows the fields
    # ``decoding`` replaces even where it cannot see the codec's class: over the source tree, the editable install's
    # import hook hides ``gradserve.proto`` from it and the base class is Any.
    max_tensor_rank: int = codec.Limits.max_tensor_rank
    max_graph_nodes: int = 100_000
    max_nesting_depth: int = codec.Limits.max_nesting_depth
    max_message_bytes: int = 256 * MiB + 16 * MiB
    """Largest gRPC message either way: room for a 256 MB tensor plus the rest of the message."""
    default_deadline_ms: int = 60_000
    max_deadline_ms: int = 600_000
    max_queue_depth: int = 64
    max_queued_bytes: int = 384 * MiB
    """Request bytes (as received) of the Grad and Run calls waiting for a worker or being computed; a call
    that would bring them over this is refused (RESOURCE_EXHAUSTED) before the data of its tensors of 64 KiB or
    more is copied anywhere, unless the whole request is at most 256 KiB: protobuf parsed such a request whole
    as it arrived (``blobs.parse``), and that copy is held beside its received bytes, uncounted, until it is answered."""
    max_receive_bytes: int = 256 * MiB + 16 * MiB
    """Room for Grad, Run and RegisterNetwork requests being received: each takes ``max_message_bytes`` of it
    until it has arrived (gRPC tells nothing of a message's size before), so this many over that many are
    received at once (at least one); the others wait their turn, up to their deadline, with gRPC holding
    only their flow-control window. Other methods, and calls declaring a small request, are received one
    at a time in a lane of their own (``server/intake.py``). Once received, a request counts its size
    against ``max_queued_bytes`` until it is answered."""
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
    max_stream_receive_bytes: int = 256 * MiB + 16 * MiB
    """Room for GradStream messages being received, in a lane of their own: each takes ``max_message_bytes``
    of it until it has arrived, so this many over that many (at least one) arrive at once, whatever the
    number of open streams; a stream asks gRPC for its next message only in its turn. Once in, a message
    counts against ``max_queued_bytes`` until it is answered, and one that does not fit is answered
    RESOURCE_EXHAUSTED in its own response while the stream goes on."""
    max_receive_waiting: int = 16
    """Grad, Run and RegisterNetwork calls waiting for their turn to be received (each holds a gRPC thread
    and its flow-control window, about 4 MiB), counted apart for connections whose last message was small
    (they go ahead) and for the others, so that waiting uploads never refuse small calls; a call that would
    wait behind this many of its kind is refused (RESOURCE_EXHAUSTED) at once."""


    def decoding(self) -> Limits:
        """These limits as the codec reads them: its limits set to 0 (no limit) become unreachable numbers."""
        return dataclasses.replace(
            self,
            max_tensor_elements=self.max_tensor_elements or 1 << 62,
            max_tensor_rank=self.max_tensor_rank or 1 << 30,
            max_graph_nodes=self.max_graph_nodes or 1 << 62,
            max_nesting_depth=self.max_nesting_depth or 1 << 30,
        )


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
    local_max_flops: int = 10**9
    """Programs costing at most this many floating-point operations (estimated from shapes) and holding at most
    ``local_max_peak_bytes`` at once (a training step of a small CNN or MLP, a few milliseconds) also run in the
    server process once a worker has compiled them, one at a time, in an idle worker's turn, for a call alone in
    flight (any other request goes to a worker); they stop between steps when their call ends. 0: only tiny
    programs."""
    local_max_peak_bytes: int = 64 * MiB
    """Most tensor bytes alive at once (and serialized network bytes) of a program run in the server process
    under ``local_max_flops``."""
    max_connection_age_seconds: float = 0.0
    """Send each client connection GOAWAY this long after it opened (its calls may finish, up to
    max_deadline_ms), so that clients of a DNS name reconnect and spread over replicas added since;
    0: a connection lasts as long as its client keeps it."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint (plain HTTP on ``host``); None: off, 0: a free port (logged)."""
    log_level: str = "info"
    """The least severe JSON log lines written (``jsonlog.LEVELS``); applies to the whole process."""
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


HELP = {
    "host": "address to listen on, for gRPC and /metrics",
    "port": "gRPC port (0: a free port, logged as port in server_start)",
    "workers": "worker processes computing gradients",
    "grace_seconds": "on SIGTERM or SIGINT, how long calls in flight may take to finish before the server exits",
    "worker_cache_size": "networks and compiled programs each worker keeps, least recently used dropped first",
    "local_max_elements": "plans reading and writing at most this many tensor elements in all run in the server "
                          "process, skipping the round trip to a worker (0: every request runs in a worker)",
    "local_max_flops": "plans costing at most this many floating-point operations (and within the peak bytes below) "
                       "also run in the server process, one at a time, while it is free (0: only tiny plans)",
    "local_max_peak_bytes": "most tensor bytes alive at once, and network bytes, of a plan run in the server process "
                            "under the flops bound above",
    "max_connection_age_seconds": "send each client connection GOAWAY this long after it opened, so that clients "
                                  "of a DNS name spread over replicas added since (0: never)",
    "metrics_port": "serve Prometheus /metrics over plain HTTP on this port (0: a free port, logged)",
    "log_level": "the least severe JSON log lines written: " + ", ".join(jsonlog.LEVELS),
    "auth_token": "bearer token every gradserve.v1.Gradient call must carry (a flag shows in ps: "
                  "prefer the variable or --auth-token-file)",
    "auth_token_file": "file holding the bearer token",
    "tls_cert": "PEM certificate chain: with --tls-key, serve TLS only",
    "tls_key": "unencrypted PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: clients must present a certificate it signed (mutual TLS)",
    "access_log": "log one JSON line per call (event access: method, code, duration_ms, request_id, network_id)",
    "max_message_bytes": "largest gRPC message either way, in bytes",
    "max_graph_nodes": "most nodes in a request's graph, its library functions included",
    "max_tensor_elements": "most elements in any one tensor",
    "max_tensor_rank": "most dimensions of any one tensor",
    "max_nesting_depth": "deepest nesting of GradOperations, library calls and output tuples",
    "default_deadline_ms": "deadline of a call that sets none, in milliseconds",
    "max_deadline_ms": "longest deadline a call gets, in milliseconds (longer ones are cut to this)",
    "max_queue_depth": "requests waiting for a free worker before more are refused (RESOURCE_EXHAUSTED)",
    "max_queued_bytes": "request bytes of the Grad and Run calls waiting for or holding a worker; beyond it a call "
                        "is refused (RESOURCE_EXHAUSTED) before its large tensors' data is copied (requests over 256 KiB)",
    "max_receive_bytes": "room for Grad, Run and RegisterNetwork requests being received, each counted as the largest "
                         "message (gRPC gives no size before a message is in); the others wait their turn",
    "max_registered_networks": "networks the server's registry holds",
    "max_registry_bytes": "serialized bytes of the networks the registry holds, least recently used evicted first",
    "max_worker_cache_bytes": "bytes of networks and compiled programs each worker (and the local lane) keeps",
    "max_request_peak_bytes": "most tensor bytes alive at once in one request, known from shapes before it runs",
    "max_request_flops": "most floating-point operations one request may cost, estimated from shapes before it runs",
    "stop_grace_ms": "how long a worker told to stop a cancelled or expired call may take before it is killed",
    "max_open_streams": "GradStream calls open at once (each holds a gRPC thread)",
    "max_stream_receive_bytes": "room for GradStream messages being received, each counted as the largest message; "
                                "streams take turns to receive their next message",
    "max_receive_waiting": "Grad, Run and RegisterNetwork calls waiting for their turn to be received (apart: those "
                           "of connections whose last message was small); beyond it a call is refused (RESOURCE_EXHAUSTED)",
}
"""One line of ``gradserve serve --help`` per setting."""
OFF = {"metrics_port": "off", "auth_token": "none", "auth_token_file": "none", "tls_cert": "none (plaintext)",
       "tls_key": "none", "tls_client_ca": "none (no client certificates)"}
"""Defaults that read better in words than as values."""
METAVARS: dict[type, str] = {int: "N", float: "X"}


def _default(name: str, value: Any) -> str:
    if name == "workers":
        return f"one per CPU this process may use, {value} here"
    return OFF.get(name, str(value))


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
    """Add one ``--flag`` per setting, described with its default; each also reads ``GRADSERVE_<NAME>``;
    a flag wins over the variable, and a bare yes/no ``--flag`` turns it on."""
    base = ServerConfig()
    groups = {False: parser.add_argument_group("server"), True: parser.add_argument_group("limits (reported by ServerInfo)")}
    for f, is_limit in _scalar_fields():
        default = _default(f.name, getattr(base.limits if is_limit else base, f.name))
        kind, text = _kind(f), HELP.get(f.name, f.name.replace("_", " "))
        switch: dict[str, Any] = {"nargs": "?", "const": True} if kind is boolean else {}
        groups[is_limit].add_argument(_flag(f.name), dest=f.name, type=kind, default=None, metavar=METAVARS.get(kind),
                                      help=f"{text} (default: {default}; env {_env(f.name)})", **switch)


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


FILES = ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca")
"""Settings naming files that are read at start-up."""


def _validate(cfg: ServerConfig) -> None:
    if cfg.workers < 1:
        raise SystemExit(f"gradserve: --workers must be at least 1, got {cfg.workers}")
    if not 0 <= cfg.port < 65536:
        raise SystemExit(f"gradserve: --port must be 0 to 65535, got {cfg.port}")
    if cfg.grace_seconds < 0 or cfg.worker_cache_size < 0:
        raise SystemExit("gradserve: --grace-seconds and --worker-cache-size must be >= 0, got "
                         f"{cfg.grace_seconds} and {cfg.worker_cache_size}")
    if cfg.log_level not in jsonlog.LEVELS:
        raise SystemExit(f"gradserve: --log-level must be one of {', '.join(jsonlog.LEVELS)}, got {cfg.log_level!r}")
    if cfg.max_connection_age_seconds < 0:
        raise SystemExit(f"gradserve: --max-connection-age-seconds must be >= 0, got {cfg.max_connection_age_seconds}")
    for name in ("local_max_elements", "local_max_flops", "local_max_peak_bytes"):
        if getattr(cfg, name) < 0:
            raise SystemExit(f"gradserve: {_flag(name)} must be >= 0, got {getattr(cfg, name)}")
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
        flag = next((_flag(n) for n in FILES if getattr(cfg, n) == exc.filename), "file")
        raise SystemExit(f"gradserve: cannot read {flag} {exc.filename}: {exc.strerror}") from None
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
