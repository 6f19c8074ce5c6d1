"""The gradserve.v1.Gradient servicer: registry, limits, dispatch to the worker pool, status mapping.

It holds no numerics: requests go to workers, or for small plans to the local lane, and answers come
back as serialized responses; large tensor data travels through shared memory and is spliced in here.
"""
from __future__ import annotations

import functools
import hashlib
import queue
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.engine.errors import shown
from gradserve.proto import codec
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

from . import blobs
from .cache import Cache
from .compute import ERROR_LOG_CHARS, KINDS, Answer, Plan, Request, classify, plan_key
from .config import ServerConfig
from .errors import Failure
from .intake import Received
from .jsonlog import log
from .lane import Known, Lane
from .metrics import Metrics
from .pool import Job, WorkerPool

API_VERSION = "gradserve.v1"
LARGE_ANSWER_BYTES = 64 << 10
"""Responses larger than this count in ``GradientServicer.answered``."""


DIGESTS_PER_NETWORK = 4
"""Digests of the bytes a network was registered from that the registry keeps (the latest): the same network serialized
otherwise (field order, unknown fields) has another digest, and each kept would stay as long as the network does."""


class Registry:
    """Registered networks (serialized) by id, least recently used evicted beyond a count and a byte
    budget, plus a digest->id index (the latest ``DIGESTS_PER_NETWORK`` digests of each network) so that
    registering the same bytes again needs no worker."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._nets = Cache(capacity or sys.maxsize, max_bytes, collect=False)
        """Serialized networks by id (``capacity`` 0: no count bound)."""
        self._ids: dict[str, str] = {}
        self._digests: dict[str, list[str]] = {}
        """The digests in ``_ids`` of each network, oldest first."""
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._nets.nbytes

    def check(self, raw: bytes) -> None:
        """Refuse (RESOURCE_EXHAUSTED) a serialized network larger than the whole budget."""
        if self.max_bytes and len(raw) > self.max_bytes:
            raise Failure("RESOURCE_EXHAUSTED", f"the network is {len(raw)} bytes serialized, over the max_registry_bytes "
                          f"limit of {self.max_bytes}; it cannot be registered on this server; send smaller parameters")

    def get(self, network_id: str) -> bytes | None:
        """The serialized network, or None if unknown (or evicted)."""
        with self._lock:
            raw: bytes | None = self._nets.get(network_id)
            return raw

    def lookup(self, digest: str) -> str | None:
        """The id of a network registered from bytes with this digest, if still registered."""
        with self._lock:
            nid = self._ids.get(digest)
            return nid if nid in self._nets else None

    def put(self, digest: str, network_id: str, raw: bytes) -> bool:
        """Store a network (``check``ed); True when it was new."""
        with self._lock:
            created = network_id not in self._nets
            if self._ids.get(digest) != network_id:
                self._ids[digest] = network_id
                digests = self._digests.setdefault(network_id, [])
                digests.append(digest)
                if len(digests) > DIGESTS_PER_NETWORK:
                    del self._ids[digests.pop(0)]
            gone = set(self._nets.put(network_id, raw, len(raw)))
            if gone:
                self._ids = {d: i for d, i in self._ids.items() if i not in gone}
                for nid in gone:
                    self._digests.pop(nid, None)
            return created

    def __len__(self) -> int:
        with self._lock:
            return len(self._nets)


@dataclass
class Call:
    """One call being served: when it must end, whether its caller still wants it, and what its log lines name."""

    method: str
    context: grpc.ServicerContext
    deadline: float | None
    request_id: str = ""
    network_id: str = ""

    def is_active(self) -> bool:
        return self.context.is_active()

    def ids(self) -> dict[str, Any]:
        """The call's request id (the request's own, else the ``x-request-id`` metadata, else a new one) and
        network id, cut to a loggable length, for a log line."""
        if not self.request_id:
            given = dict(self.context.invocation_metadata() or ()).get("x-request-id", "")
            self.request_id = given if isinstance(given, str) and given else secrets.token_hex(8)
        return {"request_id": _loggable(self.request_id), "network_id": _loggable(self.network_id)}


LOG_ID_LIMIT = 128
"""Characters of a request or network id a log line carries as it is (a network id has 71); longer ones are cut."""


def _loggable(text: str) -> str:
    """A caller's id for a log line: as it is when short, else cut (``shown``)."""
    return text if len(text) <= LOG_ID_LIMIT else shown(text, LOG_ID_LIMIT)


def _log_failure(f: Failure, call: Call) -> None:
    """The request_error line of a call that failed."""
    log("request_error", method=call.method, code=f.code, message=f.message, peer=call.context.peer(), **call.ids())


def status_proto(f: Failure) -> status_pb2.Status:
    """A google.rpc.Status for a Failure, with a BadRequest detail when it names fields."""
    status = status_pb2.Status(code=code_pb2.Code.Value(f.code), message=f.message)
    if f.violations:
        br = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=k, description=d) for k, d in f.violations]
        )
        status.details.add().Pack(br)
    return status


class GradientServicer(service_pb2_grpc.GradientServicer):
    """Serves the v1 API with a WorkerPool."""

    def __init__(self, pool: WorkerPool, config: ServerConfig) -> None:
        self.pool = pool
        self.config = config
        self.limits = config.limits
        self.registry = Registry(config.limits.max_registered_networks, config.limits.max_registry_bytes)
        self.lane = Lane(config.limits, config.worker_cache_size, pool.borrow)
        self.metrics = Metrics(pool, lambda: len(self.registry), lambda: self.lane.served, lambda: self.lane.passed)
        self.draining = False
        self._ops: tuple[bytes, list[int]] | None = None
        self._inflight = 0
        self._held = 0
        """Bytes of the Grad and Run requests waiting for a worker or being computed (``max_queued_bytes``)."""
        self.answered = 0
        """Running total of the bytes of Grad and Run responses over ``LARGE_ANSWER_BYTES`` (the ``trim.Trimmer`` reads it:
        the server process keeps freed heap pages for the next large response, ``heap.keep_heap``)."""
        self._counting = threading.Lock()
        """Guards ``_inflight`` and ``_held``; taken directly on every call (a Condition's own ``with`` costs Python calls)."""
        self._quiet = threading.Condition(self._counting)
        self._streams = 0
        self._streams_lock = threading.Lock()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is being served (True), or ``timeout`` seconds pass (False)."""
        with self._quiet:
            return self._quiet.wait_for(lambda: self._inflight == 0, timeout)

    def _enter(self) -> None:
        if self.draining:
            raise Failure("UNAVAILABLE", "the server is draining; retry on another replica")
        with self._counting:
            self._inflight += 1

    def _leave(self) -> None:
        with self._counting:
            self._inflight -= 1
            if self.draining:  # only wait_idle waits, and only once draining is set
                self._quiet.notify_all()

    def _hold(self, size: int) -> None:
        """Count ``size`` request bytes against ``max_queued_bytes``, or refuse the request (RESOURCE_EXHAUSTED)."""
        limit = self.limits.max_queued_bytes
        with self._counting:
            held = self._held
            if not limit or held + size <= limit:
                self._held = held + size
                return
        raise Failure("RESOURCE_EXHAUSTED", f"this request is {size} bytes and the requests waiting or being computed hold "
                      f"{held}, together over the max_queued_bytes limit of {limit}; retry later, or send smaller requests")

    def _unhold(self, size: int) -> None:
        with self._counting:
            self._held -= size

    # ---- plumbing ----

    def _serve(self, method: str, context: grpc.ServicerContext, fn: Callable[[Call], Any], request_id: str = "") -> Any:
        """Run ``fn(call)`` as one unary call (``_observe``); a failure ends the call with its status."""
        return self._observe(Call(method, context, None, request_id), fn,
                             lambda f: context.abort_with_status(rpc_status.to_status(status_proto(f))))

    def _observe(self, call: Call, fn: Callable[[Call], Any], failed: Callable[[Failure], Any]) -> Any:
        """``fn(call)``, with the bookkeeping of one served call: counted in flight (refused while draining),
        given its deadline, its outcome and latency recorded (metrics, access log). A Failure is logged and
        answered by ``failed(f)``; any other exception is a bug, logged and answered as an INTERNAL Failure."""
        code, start, method, context = "OK", time.perf_counter(), call.method, call.context
        try:
            self._enter()
            try:
                call.deadline = self.deadline(context)
                return fn(call)
            finally:
                self._leave()
        except Failure as f:
            code = f.code
            _log_failure(f, call)
            return failed(f)
        except Exception as exc:
            code = "INTERNAL"
            log("internal_error", method=method, error=f"{type(exc).__name__}: {exc}", peer=context.peer(), **call.ids())
            return failed(Failure("INTERNAL", f"{method}: server bug: {type(exc).__name__}: {exc}"))
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.record(method, code, elapsed)
            if self.config.access_log:
                log("access", method=method, code=code, duration_ms=round(elapsed * 1000, 3), **call.ids())

    def fail(self, method: str, f: Failure, context: grpc.ServicerContext) -> None:
        """Log ``f`` and end the call with its status (raises, as ``context.abort`` does)."""
        _log_failure(f, Call(method, context, None))
        context.abort_with_status(rpc_status.to_status(status_proto(f)))

    def reject(self, method: str, f: Failure, context: grpc.ServicerContext) -> None:
        """Count, log and answer a request that never reached a method (one protobuf cannot parse, or unauthenticated)."""
        self.metrics.record(method, f.code)
        self.fail(method, f, context)

    def deadline(self, context: grpc.ServicerContext) -> float | None:
        """Monotonic deadline: the caller's, else the default, never beyond the maximum (None: no limit at all).

        grpc reports a call without a deadline as one that ends in centuries (``time_remaining`` is never
        None), so a remaining time beyond ``NO_DEADLINE_SECONDS`` counts as no client deadline."""
        remaining = context.time_remaining()
        if remaining is None or remaining > NO_DEADLINE_SECONDS:
            ms: float | None = self.limits.default_deadline_ms or None
        else:
            ms = remaining * 1000
        if self.limits.max_deadline_ms:
            ms = self.limits.max_deadline_ms if ms is None else min(ms, self.limits.max_deadline_ms)
        return None if ms is None else time.monotonic() + ms / 1000

    def _register(self, raw: bytes, call: Call) -> tuple[str, bool]:
        """(id, created) for a serialized network; decoded and checked by a worker once."""
        digest = hashlib.sha256(raw).hexdigest()
        nid = self.registry.lookup(digest)
        if nid is not None:
            call.network_id = nid
            return nid, False
        self.registry.check(raw)
        nid = call.network_id = self.pool.submit(Job("load", raw), call.deadline, call.is_active).payload
        return nid, self.registry.put(digest, nid, raw)

    def _network(self, incoming: blobs.Lifted, call: Call) -> tuple[str, bytes]:
        """(id, serialized network) of a Grad or Run request; an inline graph is registered."""
        request = incoming.message
        which = request.WhichOneof("network")
        if which == "network_id":
            return request.network_id, self._registered(request.network_id, call)
        if which == "graph":
            raw = _graph(incoming)
            nid, _ = self._register(raw, call)
            return nid, raw
        raise Failure("INVALID_ARGUMENT", "network: set network_id or graph", [("network", "neither network_id nor graph is set")])

    def _registered(self, network_id: str, call: Call) -> bytes:
        """The serialized network a request names by id (NOT_FOUND when it is not registered)."""
        call.network_id = network_id
        raw = self.registry.get(network_id)
        if raw is None:
            raise Failure(
                "NOT_FOUND",
                f"network_id {shown(network_id)} is not registered on this server; register it again or send the graph inline",
                [("network_id", "unknown network id")],
            )
        return raw

    def parse(self, kind: str, raw: bytes) -> blobs.Lifted:
        """The ``kind`` request ``raw`` as received (the request deserializer of unary Grad and Run calls): left unparsed
        when the local lane recognizes it (``Lane.recognize``: protobuf would parse it as one it has run), else
        ``blobs.parse``d. The lane is only a shortcut: a failure to recognize (a bug) is logged as an error and the
        request parsed, where gRPC would answer an unlogged INTERNAL, uncounted, for every request of that size."""
        try:
            known = self.lane.recognize(kind, raw)
        except Exception as exc:
            log("recognize_error", kind=kind, size=len(raw), error=f"{type(exc).__name__}: {exc}"[:ERROR_LOG_CHARS])
            known = None
        if known is not None:
            return blobs.Lifted(None, [], [], raw, known=known)
        return blobs.parse(raw, KINDS[kind].request)

    def _compute(self, kind: str, incoming: blobs.Lifted, call: Call, bounded: bool = True) -> bytes:
        """The serialized response to a Grad or Run request: computed by the local lane when its plan is
        small and the lane takes it now, else by a worker (which reports whether the plan is small); ``bounded``
        false leaves bounded plans to the workers. Its bytes count against ``max_queued_bytes`` until it is answered."""
        size = len(incoming.raw) + sum(map(len, incoming.data))  # the bytes received
        self._hold(size)
        try:
            known: Known | None = incoming.known
            if known is not None:  # recognized by the lane, not parsed
                done = self._local(kind, known.found, incoming, known.key, known.network_id,
                                   self._registered(known.network_id, call), known.request_id, call, bounded)
                if done is not None:
                    return done
                incoming = blobs.parse(incoming.raw, KINDS[kind].request)
            request = incoming.message
            nid, raw = self._network(incoming, call)
            key = plan_key(kind, request, nid)
            found = self.lane.plan(key)
            if found is not None and known is None:  # (a recognized request the lane did not take goes to a worker)
                done = self._local(kind, found, incoming, key, nid, raw, request.request_id, call, bounded)
                if done is not None:
                    return done
            tail = _tail(kind, nid, request.request_id)
            if incoming.whole:  # lifted now, so that its large tensors cross to the worker in shared memory
                incoming = blobs.lift(incoming.raw, type(request))
            job = Job(kind, Request(_body(incoming), incoming.places, key, found is None), incoming.data, nid, raw)

            def take(answer: Answer, frames: list[Any]) -> tuple[bytes, bytes]:
                """The response, built while the worker's shared memory holds the frames, and the plan if local."""
                return self._reply(kind, answer.parts, frames, tail), answer.plan

            out, plan = self.pool.submit(job, call.deadline, call.is_active, take)
            if plan:
                self.lane.admit(key, plan)
            return self._answered(out)
        finally:
            self._unhold(size)

    def _local(self, kind: str, found: Plan, incoming: blobs.Lifted, key: tuple, network_id: str, network: bytes,
               request_id: str, call: Call, bounded: bool) -> bytes | None:
        """The response to a request whose plan ``found`` the lane holds, computed by the lane (``Lane.run``), or None
        when the lane does not take it now."""
        pieces = self.lane.run(found, kind, incoming, key, network_id, network, call.deadline, call.is_active,
                               spare=bounded and self._inflight <= 1)
        if pieces is None:
            return None
        pieces.append(_tail(kind, network_id, request_id))
        return self._answered(self._sized(kind, b"".join(pieces)))

    def _answered(self, out: bytes) -> bytes:
        """``out``, a response about to be sent, counted in ``answered`` when large."""
        if len(out) > LARGE_ANSWER_BYTES:
            with self._counting:
                self.answered += len(out)
        return out

    def _reply(self, kind: str, parts: list[bytes], frames: list[Any], tail: bytes) -> bytes:
        """The response cut into ``parts`` (``compute.Encoded``) joined with ``frames``, its large leaves' data,
        and ``tail`` (the ids) appended: protobuf reads concatenated messages as one."""
        return self._sized(kind, blobs.splice([*parts[:-1], parts[-1] + tail], frames))

    def _sized(self, kind: str, out: bytes) -> bytes:
        """``out``, a serialized response, refused (RESOURCE_EXHAUSTED) when larger than ``max_message_bytes``."""
        limit = self.limits.max_message_bytes
        if limit and len(out) > limit:
            raise Failure("RESOURCE_EXHAUSTED", f"the {KINDS[kind].response.__name__} would be {len(out)} bytes, over the "
                          f"max_message_bytes limit of {limit}; ask for smaller or fewer results")
        return out

    # ---- RPCs ----

    # RegisterNetwork, Grad, Run and GradStream take Lifted requests (Grad, Run and GradStream answer
    # serialized bytes): app.LIFTED gives them their own request deserializer and a response serializer
    # that passes bytes through.
    def RegisterNetwork(self, request: blobs.Lifted, context: grpc.ServicerContext) -> service_pb2.RegisterNetworkResponse:  # type: ignore[override]
        """Store a network under its content-addressed id (idempotent)."""
        def register(call: Call) -> service_pb2.RegisterNetworkResponse:
            if request.message.HasField("graph") == bool(request.message.onnx_model):
                raise Failure("INVALID_ARGUMENT", "set exactly one of graph and onnx_model", [("graph", "set exactly one of graph and onnx_model")])
            raw = _graph(request) if request.message.HasField("graph") else _onnx_graph(request.message.onnx_model, self.limits)
            nid, created = self._register(raw, call)
            return service_pb2.RegisterNetworkResponse(network_id=nid, created=created)

        return self._serve("RegisterNetwork", context, register)

    def Grad(self, request: blobs.Lifted, context: grpc.ServicerContext) -> bytes:  # type: ignore[override]
        """GradOperation of a registered or inline network on the given inputs (a serialized GradResponse)."""
        return self._serve("Grad", context, lambda call: self._compute("grad", request, call), _request_id(request))

    def Run(self, request: blobs.Lifted, context: grpc.ServicerContext) -> bytes:  # type: ignore[override]
        """Forward outputs of a network (a serialized RunResponse)."""
        return self._serve("Run", context, lambda call: self._compute("run", request, call), _request_id(request))

    def GradStream(self, request_iterator: Iterator[Received], context: grpc.ServicerContext) -> Iterator[bytes | service_pb2.GradResponse]:  # type: ignore[override]
        """Grad calls over one stream, computed concurrently (up to the worker count), answered as they finish.
        At most ``max_open_streams`` streams are open at once (each holds a gRPC thread while open); each
        message arrives in its turn in the intake's stream lane and stays held there until answered."""
        cap = self.limits.max_open_streams
        with self._streams_lock:
            full = bool(cap) and self._streams >= cap
            if not full:
                self._streams += 1
        if full:
            f = Failure("RESOURCE_EXHAUSTED", f"{cap} GradStream calls are already open on this server "
                        f"(max_open_streams={cap}); close one, use unary Grad calls, or retry later")
            self.metrics.record("GradStream", f.code)
            self.fail("GradStream", f, context)
        try:
            yield from self._grad_stream(request_iterator, context)
        finally:
            with self._streams_lock:
                self._streams -= 1

    def _grad_stream(self, request_iterator: Iterator[Received], context: grpc.ServicerContext) -> Iterator[bytes | service_pb2.GradResponse]:
        """The answers of a stream: at most ``window`` messages are between being asked for and being
        answered, so the next message is asked of gRPC only once there is room for it. An answer waiting
        to be sent counts its bytes against ``max_queued_bytes`` in place of its request's."""
        results: queue.Queue[tuple[bytes | service_pb2.GradResponse, Callable[[], None]] | None] = queue.Queue()
        window = threading.Semaphore(self.pool.size * 2)
        sent = [0]

        def one(item: Received) -> None:
            """Answer one message of the stream: its response, or one carrying its failure as ``error``."""
            incoming: blobs.Lifted = item.message
            rid = incoming.message.request_id
            held = [0]

            def compute(call: Call) -> bytes:
                if item.refused is not None:
                    raise item.refused
                out = self._compute("grad", incoming, call, bounded=False)  # a stream's requests overlap: workers
                item.release()
                item.intake.hold(len(out), "the GradResponse", "read the stream's answers sooner, or ask for smaller results")
                held[0] = len(out)
                return out

            try:
                answer = self._observe(Call("GradStream", context, None, rid), compute,
                                       lambda f: service_pb2.GradResponse(request_id=rid, error=status_proto(f)))
            finally:
                item.release()
            results.put((answer, lambda: item.intake.release(held[0])))

        def read(executor: ThreadPoolExecutor) -> None:
            try:
                while True:
                    while not window.acquire(timeout=0.1):
                        if not context.is_active():
                            return
                    item = next(request_iterator, None)
                    if item is None:
                        return
                    sent[0] += 1
                    executor.submit(one, item)
            except Exception:  # the client went away; what was read is still answered
                pass
            finally:
                results.put(None)

        try:
            with ThreadPoolExecutor(max_workers=self.pool.size, thread_name_prefix="gradstream") as executor:
                reader = threading.Thread(target=read, args=(executor,), daemon=True)
                reader.start()
                done, expected = 0, None
                while expected is None or done < expected:
                    got = results.get()
                    if got is None:
                        expected = sent[0]
                        continue
                    done += 1
                    answer, release = got
                    try:
                        yield answer
                    finally:
                        release()
                        window.release()
                reader.join()
        finally:  # the call ended before every answer was sent: the computed ones are dropped
            while not results.empty():
                left = results.get_nowait()
                if left is not None:
                    left[1]()

    def ListOps(self, request: service_pb2.ListOpsRequest, context: grpc.ServicerContext) -> service_pb2.ListOpsResponse:
        """Every op of the engine (asked of a worker once, then cached)."""
        return self._serve("ListOps", context, lambda call: service_pb2.ListOpsResponse.FromString(self._op_catalog(call)[0]))

    def _op_catalog(self, call: Call) -> tuple[bytes, list[int]]:
        if self._ops is None:
            self._ops = self.pool.submit(Job("ops", None), call.deadline, call.is_active).payload
        return self._ops

    def ServerInfo(self, request: service_pb2.ServerInfoRequest, context: grpc.ServicerContext) -> service_pb2.ServerInfoResponse:
        """Versions, limits, worker count and request counters."""
        def info(call: Call) -> service_pb2.ServerInfoResponse:
            resp = service_pb2.ServerInfoResponse(
                server_version=_version("gradserve"),
                api_version=API_VERSION,
                worker_count=self.pool.size,
                supported_dtypes=[graph_pb2.DataType.ValueType(d) for d in self._op_catalog(call)[1]],
            )
            resp.component_versions["python"] = sys.version.split()[0]
            for dist in ("numpy", "grpcio", "protobuf"):
                resp.component_versions[dist] = _version(dist)
            for name in service_pb2.Limits.DESCRIPTOR.fields_by_name:
                setattr(resp.limits, name, getattr(self.limits, name))
            for method, code, n in self.metrics.snapshot():
                resp.request_counters.add(method=method, code=code, count=n)
            return resp

        return self._serve("ServerInfo", context, info)


def _request_id(incoming: blobs.Lifted) -> str:
    """The request id of a Grad or Run request, parsed or recognized (``GradientServicer.parse``)."""
    known: Known | None = incoming.known
    return known.request_id if known is not None else str(incoming.message.request_id)


TAILS_KEPT = 256
"""Response tails (``_tail``) kept, the most recently used: requests without an id of their own share one per network."""
TAIL_KEPT_ID_CHARS = 128
"""Only tails whose request id is at most this long are kept (a caller's id may be as long as a message: 256 long
ones kept would hold gigabytes after their calls)."""


def _ids(kind: str, network_id: str, request_id: str) -> bytes:
    """The serialized ids a Grad or Run response ends with (appended to its results: protobuf reads concatenated
    messages as one)."""
    return KINDS[kind].response(network_id=network_id, request_id=request_id).SerializeToString()


_kept_ids = functools.lru_cache(maxsize=TAILS_KEPT)(_ids)


def _tail(kind: str, network_id: str, request_id: str) -> bytes:
    """``_ids``, kept when the request id is short, so that the requests of a network without ids of their own do not
    build it each time."""
    return (_kept_ids if len(request_id) <= TAIL_KEPT_ID_CHARS else _ids)(kind, network_id, request_id)


def _onnx_graph(data: bytes, limits: Any) -> bytes:
    """The serialized network of an ONNX model's bytes, converted by the codec; a model that cannot be converted is
    INVALID_ARGUMENT naming its node, and a server installed without the onnx extra answers FAILED_PRECONDITION."""
    try:
        return codec.decode_onnx_model(data, limits.decoding()).SerializeToString(deterministic=True)
    except ImportError as exc:
        raise Failure("FAILED_PRECONDITION", f"onnx_model: this server cannot convert ONNX models ({exc})") from None
    except codec.WireError as exc:
        raise classify(exc) from None


def _graph(incoming: blobs.Lifted) -> bytes:
    """The request's graph, serialized: its received bytes, or when they are not plain (a graph field given
    twice, which protobuf merges) serialized again by protobuf."""
    found = _locate_graph(incoming)
    if found is not None:
        _, begin, end = found
        return bytes(incoming.raw[begin:end])
    return incoming.message.graph.SerializeToString(deterministic=True)


def _body(incoming: blobs.Lifted) -> bytes:
    """The bytes of a Grad or Run request a worker parses: the received ones, without the graph when it is inline
    (the worker gets the network by id), serialized again by protobuf when they are not plain."""
    request = incoming.message
    if not request.HasField("graph"):
        return incoming.raw
    found = _locate_graph(incoming)
    if found is not None:
        start, _, end = found
        view = memoryview(incoming.raw)
        return b"".join((view[:start], view[end:]))
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField("graph")
    return rest.SerializeToString()


def _locate_graph(incoming: blobs.Lifted) -> tuple[int, int, int] | None:
    """Where the graph field is in the request's received bytes (``blobs.locate``)."""
    return blobs.locate(incoming.raw, incoming.message.DESCRIPTOR.fields_by_name["graph"].number)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


NO_DEADLINE_SECONDS = 10 * 365 * 86400.0
"""A call whose deadline is further away than this (ten years) has none: grpc reports "no deadline" as
the far future."""
