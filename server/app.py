"""Assembling a running server: the worker pool first, then gRPC with health and reflection; draining."""
from __future__ import annotations

import functools
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradserve.engine import heap
from gradserve.v1 import service_pb2, service_pb2_grpc

from . import blobs, jsonlog, preflight, worker
from .auth import BearerAuth
from .config import ServerConfig
from .errors import Failure
from .intake import Intake, Received
from .jsonlog import log
from .pool import WorkerPool
from .servicer import GradientServicer
from .trim import Trimmer

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["Gradient"].full_name
SPARE_THREADS = 8
"""gRPC threads beyond workers + queue + open streams, so health checks and ServerInfo answer while the
pool is full and every allowed GradStream is open."""

PARSE_PROBLEMS = {
    "Exceeded upb_DecodeOptions_MaxDepth": "messages nest more than 100 levels deep (protobuf's recursion limit)",
    "Wire format was corrupt": "the bytes are not valid protobuf wire format (garbage or truncated)",
    "String field had bad UTF-8": "a string field is not valid UTF-8",
}
"""Plain words for protobuf's (upb's) parse errors; any other error is quoted as it is."""

Reject = Callable[[str, Failure, grpc.ServicerContext], None]


@dataclass(frozen=True)
class Unparsable:
    """Stands in for a request message protobuf could not parse, so that the method can answer INVALID_ARGUMENT."""

    problem: str


def _explain(exc: Exception) -> str:
    """What protobuf disliked about a message, in plain words when the error is a known one."""
    detail = str(exc).rpartition(": ")[2]
    return PARSE_PROBLEMS.get(detail, f"{type(exc).__name__}: {exc}")


def _until_unparsable(requests: Iterator[tuple[Any, int]], bad: list[tuple[int, Unparsable]]) -> Iterator[Any]:
    """The parsed messages of a request stream of (message, size), ending before the first unparsable one
    (recorded in ``bad``)."""
    for i, (request, _size) in enumerate(requests):
        if isinstance(request, Unparsable):
            bad.append((i, request))
            return
        yield request


def _received_until_unparsable(received: Iterator[Received], bad: list[tuple[int, Unparsable]]) -> Iterator[Received]:
    """The intake's ``Received`` messages of a request stream, ending before the first unparsable one
    (recorded in ``bad``, its bytes released)."""
    for i, item in enumerate(received):
        if isinstance(item.message, Unparsable):
            item.release()
            bad.append((i, item.message))
            return
        yield item


RECEIVED_STREAMS = frozenset({f"/{SERVICE_NAME}/GradStream"})
"""Request streams whose messages are received in turn and held within the intake's budgets (``Intake.stream``)."""

Parser = Callable[[bytes], Any]

LIFTED: dict[str, Parser] = {f"/{SERVICE_NAME}/{name}": functools.partial(parse, cls=cls) for name, cls, parse in
          (("Grad", service_pb2.GradRequest, blobs.parse), ("Run", service_pb2.RunRequest, blobs.parse),
           ("GradStream", service_pb2.GradRequest, blobs.lift), ("RegisterNetwork", service_pb2.RegisterNetworkRequest, blobs.lift))}
"""The parsers of the methods whose requests arrive as ``blobs.Lifted``: large tensor data stays in the received bytes, on
its way to shared memory, instead of being copied by protobuf, and the received bytes are handed on. Unary Grad and Run
requests of at most ``blobs.WHOLE_MAX_BYTES`` are parsed whole (``blobs.parse``): the local lane computes most of them, and the others are
lifted on their way to a worker; a stream's requests are lifted at once (the lane leaves their bounded plans to the workers).
A server parses unary Grad and Run requests with ``GradientServicer.parse`` instead, which leaves one unparsed when its local
lane recognizes its bytes."""


def _serialize(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``serializer`` for messages; responses already serialized (``bytes``) pass through."""
    return lambda response: response if isinstance(response, bytes) else serializer(response)


def guard_parsing(handler: grpc.RpcMethodHandler, method: str, reject: Reject, intake: Intake,
                  parsers: Mapping[str, Parser] = LIFTED) -> grpc.RpcMethodHandler:
    """``handler`` with a request deserializer that never raises and a behaviour that answers a message
    protobuf could not parse INVALID_ARGUMENT naming the method and the problem (grpc says INTERNAL).
    A unary request is asked of gRPC only in its turn to be received (``intake``), and its bytes count as
    held until the method returns (it is served as a request stream, so that gRPC does not take it in first).
    A message of a ``RECEIVED_STREAMS`` stream is asked of gRPC in its turn in the intake's stream lane and
    reaches the method as an ``intake.Received`` (its bytes held until the method releases it).
    A bad message in a request stream ends it after the messages before it have been answered.
    Requests of the methods in ``parsers`` are parsed by their parser (``LIFTED``'s, or the server's own); responses may be bytes."""
    parse = parsers.get(method, handler.request_deserializer)
    type_name = getattr(getattr(handler.request_deserializer, "__self__", None), "DESCRIPTOR", None)
    expected = f"a valid {type_name.full_name}" if type_name is not None else "a valid request"

    def deserialize(raw: bytes) -> tuple[Any, int]:
        try:
            return parse(raw), len(raw)
        except (DecodeError, RecursionError) as exc:
            return Unparsable(_explain(exc)), len(raw)

    def refuse(context: grpc.ServicerContext, bad: Unparsable, where: str) -> None:
        reject(method, Failure("INVALID_ARGUMENT", f"{method}: {where} is not {expected} message: {bad.problem}"), context)

    def one(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> tuple[Any, int]:
        """The one message of a unary request and its size, counted as held (the caller releases it)."""
        got: tuple[Any, int] | None = None
        try:
            got = intake.receive(method, requests, context)
        except Failure as f:
            reject(method, f, context)
        if got is None:  # the call ended first, or carried no message
            if context.is_active():
                reject(method, Failure("INVALID_ARGUMENT", f"{method}: the call ended without its request message"), context)
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its request message arrived")
        assert got is not None  # reject and abort end the call by raising
        request, size = got
        if isinstance(request, Unparsable):
            intake.release(size)
            refuse(context, request, "the request")
        return request, size

    def _each(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Iterator[tuple[Any, int]]:
        """A request stream's messages received in the intake's lane for other streams, each held while it is served
        (a message that does not fit ends the call RESOURCE_EXHAUSTED naming max_queued_bytes)."""
        try:
            yield from intake.each(requests, context)
        except Failure as f:
            reject(method, f, context)

    def unary_unary(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Any:
        request, size = one(requests, context)
        try:
            return handler.unary_unary(request, context)
        finally:
            intake.release(size)

    def unary_stream(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Iterator[Any]:
        request, size = one(requests, context)
        try:
            yield from handler.unary_stream(request, context)
        finally:
            intake.release(size)

    def stream_unary(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Any:
        bad: list[tuple[int, Unparsable]] = []
        response = handler.stream_unary(_until_unparsable(_each(requests, context), bad), context)
        for i, b in bad:
            refuse(context, b, f"message {i} of the request stream")
        return response

    def stream_stream(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Iterator[Any]:
        bad: list[tuple[int, Unparsable]] = []
        yield from handler.stream_stream(_until_unparsable(_each(requests, context), bad), context)
        for i, b in bad:
            refuse(context, b, f"message {i} of the request stream")

    def received_stream(requests: Iterator[tuple[Any, int]], context: grpc.ServicerContext) -> Iterator[Any]:
        bad: list[tuple[int, Unparsable]] = []
        yield from handler.stream_stream(_received_until_unparsable(intake.stream(requests, context), bad), context)
        for i, b in bad:
            refuse(context, b, f"message {i} of the request stream")

    make, behavior = {
        (False, False): (grpc.stream_unary_rpc_method_handler, unary_unary),
        (False, True): (grpc.stream_stream_rpc_method_handler, unary_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, stream_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, received_stream if method in RECEIVED_STREAMS else stream_stream),
    }[(handler.request_streaming, handler.response_streaming)]
    return make(behavior, request_deserializer=deserialize, response_serializer=_serialize(handler.response_serializer))


class ParseGuard(grpc.ServerInterceptor):
    """Applies ``guard_parsing`` to every method served (once per method), with ``intake``'s limits (default: none)."""

    def __init__(self, reject: Reject, intake: Intake | None = None, parsers: Mapping[str, Parser] = LIFTED) -> None:
        self._reject = reject
        self._intake = intake or Intake(0, 0, 0)
        self._parsers = parsers
        self._guarded: dict[str, grpc.RpcMethodHandler | None] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            handler = continuation(handler_call_details)
            if handler is None:  # an unknown method: not cached, so that made-up names cannot grow the cache
                return None
            ok = handler.request_deserializer is not None
            guarded = self._guarded[method] = guard_parsing(handler, method, self._reject, self._intake, self._parsers) if ok else handler
        return guarded


SEND_GRACE_SECONDS = 5.0
"""How long responses already produced may take to reach their callers once a drain is done."""


class Server:
    """A gradserve server: ``start()`` returns the bound port, ``stop()`` drains and shuts down. Creating one
    raises ``preflight.StartupError`` before any worker starts when its TLS files or fixed ports will not do."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        lim = config.limits
        preflight.check(config)
        jsonlog.set_level(config.log_level)
        # The pool's processes come first: no grpc object may exist when they are created.
        self.pool = WorkerPool(config.workers, lim.max_queue_depth, worker.main,
                               (lim, config.worker_cache_size, config.local_max_elements, config.local_max_flops, config.local_max_peak_bytes,
                                config.log_level),
                               max_reserve=lim.max_message_bytes, stop_grace=lim.stop_grace_ms / 1000)
        heap.keep_heap(worker.SERVER_HEAP_KEEP_BYTES)  # large responses reuse heap pages (the Trimmer returns them)
        if config.local_max_elements and config.local_max_flops:
            worker.limit_blas_threads()  # the local lane computes as a worker does, on one core
        # Each unary call computing or queued holds a thread, and so does each open GradStream (capped at
        # max_open_streams); the spare threads serve health checks, ServerInfo and calls being refused.
        threads = config.workers + lim.max_queue_depth + lim.max_open_streams + SPARE_THREADS
        self.servicer = GradientServicer(self.pool, config)
        options = [
            ("grpc.max_receive_message_length", lim.max_message_bytes or -1),
            ("grpc.max_send_message_length", lim.max_message_bytes or -1),
            ("grpc.so_reuseport", 0),
        ]
        if config.max_connection_age_seconds:
            options += [("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                        ("grpc.max_connection_age_grace_ms", lim.max_deadline_ms or 2**31 - 1)]
        token = config.bearer_token()
        # The first interceptor is the outermost: a call without the token is refused before its bytes are parsed.
        interceptors: list[grpc.ServerInterceptor] = [BearerAuth(token, SERVICE_NAME, self._reject)] if token else []
        self.intake = Intake(lim.max_receive_bytes, lim.max_message_bytes, lim.max_queued_bytes,
                             lim.max_stream_receive_bytes, lim.max_receive_waiting, self.servicer.deadline)
        recognizing = {f"/{SERVICE_NAME}/{name}": functools.partial(self.servicer.parse, kind) for name, kind in (("Grad", "grad"), ("Run", "run"))}
        interceptors.append(ParseGuard(self._reject, self.intake, {**LIFTED, **recognizing}))
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"), options=options,
                                maximum_concurrent_rpcs=threads, interceptors=interceptors)
        service_pb2_grpc.add_GradientServicer_to_server(self.servicer, self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.grpc
        )
        self.auth = bool(token)
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self.trimmer: Trimmer | None = None

    def start(self) -> int:
        """Bind (TLS when configured), serve /metrics when configured, start serving; returns the port (useful with port 0).
        Raises ``preflight.StartupError`` when a port cannot be bound."""
        host, port = self.config.host, self.config.port
        address, tls = f"{host}:{port}", self.config.tls_files()
        try:
            if tls is None:
                self.port = self.grpc.add_insecure_port(address)
            else:
                cert, key, client_ca = tls
                credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                          require_client_auth=client_ca is not None)
                self.port = self.grpc.add_secure_port(address, credentials)
        except RuntimeError:  # grpc's "Failed to bind"; preflight found the usual causes before the pool started
            self.pool.close()
            raise preflight.unavailable(host, port, "--port", "gRPC cannot bind it (its own log line says why)") from None
        if self.config.metrics_port is not None:
            try:
                self.metrics_port = self.servicer.metrics.serve(host, self.config.metrics_port)
            except OSError as exc:
                self.grpc.stop(None)
                self.pool.close()
                raise preflight.unavailable(host, self.config.metrics_port, "--metrics-port", exc.strerror or str(exc)) from None
        self.grpc.start()
        self.trimmer = Trimmer(lambda: self.intake.freed + self.servicer.answered)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log("server_start", host=self.config.host, port=self.port, workers=self.pool.size, pids=self.pool.pids(),
            tls=tls is not None, mutual_tls=tls is not None and tls[2] is not None, auth=self.auth,
            metrics_port=self.metrics_port, limits=self.config.limits.__dict__)
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Answer new calls UNAVAILABLE (health NOT_SERVING) while in-flight calls finish, for at most
        ``grace`` seconds; then stop gRPC and the workers. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_seconds if grace is None else grace
        self.servicer.draining = True
        self.health.enter_graceful_shutdown()
        log("server_draining", port=self.port, grace_seconds=grace)
        idle = self.servicer.wait_idle(grace)
        # Handlers that returned may still be sending their responses: give those a moment, unless the
        # drain timed out, in which case the remaining calls are cancelled now.
        self.grpc.stop(SEND_GRACE_SECONDS if idle else 0).wait()
        self.servicer.metrics.close()
        if self.trimmer is not None:
            self.trimmer.stop()
        self.pool.close()
        log("server_stop", port=self.port, counters=self.servicer.metrics.snapshot(), workers_replaced=self.pool.replaced)

    def _reject(self, method: str, f: Failure, context: grpc.ServicerContext) -> None:
        """Answer ``f`` for a call that never reached its method; counted when it was a Gradient method."""
        service, _, name = method.lstrip("/").partition("/")
        if service == SERVICE_NAME:
            self.servicer.reject(name, f, context)
        else:
            self.servicer.fail(method, f, context)

    def wait_for_termination(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signalled.set())
        while not signalled.wait(1.0):
            pass
        self.stop()


@contextmanager
def running(config: ServerConfig, grace: float = 1.0) -> Iterator[Server]:
    """A started server for the ``with`` block (its ``port`` set), always stopped afterwards."""
    server = Server(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace)
