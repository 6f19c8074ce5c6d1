"""The remote backend: runs traced networks on gradserve servers over gRPC.

A target is ``host:port``, a comma-separated list of them, or any gRPC URI (``dns:///name:port``,
``ipv4:a:p,b:q``). Each listed item gets its own channel: this client rotates its calls over them,
registers each network once through each of them and then sends inputs and changed weights, and on UNAVAILABLE
moves the call to the next one (backing off once all have failed, for up to ``retry_seconds`` in all,
so that a call rides out a server's restart; every Gradient call is idempotent). A single item
naming several addresses (a ``dns:///`` name) is balanced by gRPC's ``round_robin`` inside its
channel, where this client cannot tell which server answers: there a NOT_FOUND (a server that never
saw the network, or was restarted) is retried with the graph inline, which registers it on whichever
server takes the call, and the next calls on that channel send it inline too until the rotation has
passed every address.

A network is known by its structure: its id leaves out the values of its parameters, and it is registered
once per server with the values it was traced with. Each Grad or Run call then carries, as parameter
overrides, every parameter whose value differs from those registered values (compared once per new array, until it
has differed once: from then on each new array of it is sent, the registered array itself never), so the server's
compiled plan stays the same while the weights change, and a parameter never changed is never sent again.

Unary calls of one layout (the same network, flags, and types of inputs and overrides) are written and read by the
codec's templates: the first request is serialized by protobuf and cut around its tensors' data, so that the next
ones are one join of those pieces and the arrays; a response's tensors are read at the offsets its first one had
(after a check that every other byte is the same), as read-only arrays, as parsing would give them.
"""
from __future__ import annotations

import json
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from gradserve.engine import EngineError, Graph, NotDifferentiableError
from gradserve.proto import codec
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

from .backend import Backend, Call, GradFlags, OutputTree
from .context import call_timeout, open_channel, retry_seconds

RECONNECT_BACKOFF_MS = 1000
"""The longest a channel that failed to connect waits before trying again by itself, so a restarted server is seen soon."""
CHANNEL_OPTIONS = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS // 4),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ("grpc.use_local_subchannel_pool", 1),
)
"""Each channel has its own connections (gRPC shares them among channels of equal options by default), so a server is
judged reachable by this channel's attempts, never by another's refusal from before the server started."""
INITIAL_BACKOFF = 0.05
MAX_BACKOFF = 1.0
"""Seconds slept after a round in which every channel answered UNAVAILABLE: doubling from one to the other, jittered."""
DOWN_SECONDS = 1.0
"""How long a channel that answered UNAVAILABLE is tried only after the others."""
FORWARD_ONLY = graph_pb2.GradOperation(get_by_list=True)
"""The GradOperation of a Run sent on a GradStream (which carries only GradRequests): no weights, so no gradient is
computed, and ``return_forward`` brings the outputs."""
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
"""gRPC status codes by their number, for the ``error`` of a GradStream response."""
SERVICE = service_pb2.DESCRIPTOR.services_by_name["Gradient"].full_name
RESULTS: dict[str, tuple[Any, str]] = {"Grad": (service_pb2.GradResponse, "gradients"), "Run": (service_pb2.RunResponse, "outputs")}
"""By method: the response type and its result tree's field."""
URI_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
"""gRPC target schemes; a target in one of them is a single channel even when it holds commas."""


class RemoteError(RuntimeError):
    """A server's answer other than OK, for codes that have no engine counterpart."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


def split_target(target: str) -> list[str]:
    """The channel targets in ``target``: each item of a comma-separated list, or one gRPC URI."""
    if target.partition(":")[0] in URI_SCHEMES:
        return [target]
    return [item.strip() for item in target.split(",") if item.strip()]


def address_count(target: str) -> int:
    """How many addresses a channel target names now (a host name is resolved), at least 1."""
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return len(rest.split(","))
    if scheme == "dns":
        name = rest[2:].partition("/")[2] if rest.startswith("//") else rest
    elif scheme in URI_SCHEMES:
        return 1
    else:
        name = target
    host, _, port = name.rpartition(":") if name.rfind(":") > name.rfind("]") else (name, "", "443")
    try:
        return max(1, len({info[4] for info in socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)}))
    except (OSError, UnicodeError):
        return 1


@dataclass
class _Network:
    """A network as this client registers it: its wire form with the parameter values it was registered with,
    its server id once a server has answered, the last array seen of each parameter and whether it is an override,
    and its calls' request templates and result readers."""

    inputs: int
    message: graph_pb2.Graph
    registered: dict[str, np.ndarray]
    server_id: str = ""
    seen: dict[str, tuple[np.ndarray, bool]] = field(default_factory=dict)
    """By parameter name: the array last passed and whether it differs from the registered value."""
    templates: dict[tuple[Any, ...], tuple[codec.Template, list[int]]] = field(default_factory=dict)
    """By method, network id, flags, input count and override names (``_request``'s key): the Template of the last
    request of those learned, and per slot the array it takes (``_picks``); one per key, relearned when the types change."""
    readers: dict[tuple[str, GradFlags | None], codec.TreeReader] = field(default_factory=dict)
    """By method and flags: the reader of the responses' result tree."""

    def overrides(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each parameter in ``params`` whose value differs from the registered one, by name. Once a parameter's value
        has differed (in training, from the first step on), each new array of it is taken as differing without
        comparing values: only the registered array itself is not sent again."""
        out = {}
        for name, a in params.items():
            seen = self.seen.get(name)
            if seen is None or seen[0] is not a:
                base = self.registered.get(name)
                if base is None:
                    differs = True
                elif seen is not None and seen[1]:
                    differs = a is not base
                else:
                    differs = a is not base and not _equal(a, base)
                seen = self.seen[name] = (a, differs)
            if seen[1]:
                out[name] = a
        return out

    def reader(self, method: str, flags: GradFlags | None) -> codec.TreeReader:
        """The reader of the result tree of ``method`` responses (Grad with ``flags``, or Run)."""
        found = self.readers.get((method, flags))
        if found is None:
            response, tree = RESULTS[method]
            found = self.readers.setdefault((method, flags), codec.TreeReader(response, tree))
        return found


def _equal(a: np.ndarray, base: np.ndarray) -> bool:
    """Whether ``a`` holds the same dtype, shape and values as ``base``, bit for bit (-0.0 is not the registered 0.0:
    ``1 / w`` tells them apart); a first element that differs (in training, nearly always) answers at once, without
    comparing the whole arrays."""
    if a.dtype != base.dtype or a.shape != base.shape:
        return False
    if a.size == 0:
        return True
    if a.item(0) != base.item(0):
        return False
    bits = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else None
    return np.array_equal(a, base) if bits is None else np.array_equal(a.view(bits), base.view(bits))


def structure_id(message: graph_pb2.Graph, names: set[str]) -> str:
    """The id of the network ``message`` apart from the values (not the types) of its parameters ``names``."""
    bare = graph_pb2.Graph()
    bare.CopyFrom(message)
    for g in (bare, *bare.library.values()):
        for p in g.parameters:
            if p.name in names:
                p.value.ClearField("data")
    return codec.message_id(bare)


@dataclass
class _Route:
    """One channel and what this client knows of the server(s) behind it."""

    target: str
    channel: grpc.Channel
    stub: service_pb2_grpc.GradientStub
    registered: set[str] = field(default_factory=set)
    """The networks (by local id) registered through this channel."""
    inline: dict[str, int] = field(default_factory=dict)
    """How many more calls for each network (by local id) send its graph inline."""
    down_until: float = 0.0
    senders: dict[str, Callable[[Any, float | None], bytes]] = field(default_factory=dict)
    """By method: the call that sends a request serialized once (``sender``)."""

    def sender(self, method: str) -> Callable[[Any, float | None], bytes]:
        """``method`` as ``call(request, timeout)`` giving the serialized response: ``request`` is serialized already
        (bytes) or a message, serialized once; its REQUEST_BYTES_HEADER is the length of those bytes (``ByteSize``
        would encode the whole message a second time)."""
        send = self.senders.get(method)
        if send is None:
            raw = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)

            def send(request: Any, timeout: float | None) -> bytes:
                data = request if type(request) is bytes else request.SerializeToString()
                return raw(data, timeout=timeout, metadata=((codec.REQUEST_BYTES_HEADER, str(len(data))),))

            self.senders[method] = send
        return send


class RemoteBackend(Backend):
    """Runs networks on the gradserve server(s) at ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._routes = []
        for item in split_target(target):
            channel = open_channel(item, CHANNEL_OPTIONS)
            self._routes.append(_Route(item, channel, service_pb2_grpc.GradientStub(channel)))
        if not self._routes:
            raise ValueError(f"target {target!r} names no server")
        self._turn = 0
        self._networks: dict[str, _Network] = {}
        self._lock = threading.Lock()

    def register(self, graph: Graph) -> str:
        """Register ``graph`` on one server now (the others on first use); returns this client's id for it."""
        message = codec.encode_graph(graph)
        local_id = structure_id(message, {p.name for p in graph.params})
        with self._lock:
            net = self._networks.get(local_id)
        if net is None:
            net = _Network(len(graph.inputs), message, {p.name: p.data for p in graph.params})
            self._failover(lambda route, deadline: self._register(route, local_id, net, deadline), advance=False)
            with self._lock:
                self._networks.setdefault(local_id, net)
        return local_id

    def run(self, network_id: str, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]) -> OutputTree:
        """Forward outputs from a server."""
        return self._call(None, Call(network_id, None, inputs, params))

    def grad(
        self, network_id: str, flags: GradFlags, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray]
    ) -> OutputTree:
        """GradOperation computed by a server."""
        return self._call(None, Call(network_id, flags, inputs, params))

    def call(self, call: Call) -> OutputTree:
        """``call`` as prepared (Run or Grad by its flags), sent as it is."""
        return self._call(None, call)

    def replicas(self) -> int:
        """The servers this client reaches: one per listed target, every address of a ``dns:///`` name."""
        return sum(address_count(route.target) for route in self._routes)

    def call_on(self, replica: int, call: Call) -> OutputTree:
        """``call`` on the channel of replica ``replica`` first, failing over to the others on UNAVAILABLE, and on
        CANCELLED too (its server stopped while computing it: every call is idempotent)."""
        n = len(self._routes)
        for k in range(n - 1):
            try:
                return self._call((replica + k) % n, call)
            except RemoteError as exc:
                if exc.code != grpc.StatusCode.CANCELLED:
                    raise
                self._routes[(replica + k) % n].down_until = time.monotonic() + DOWN_SECONDS
        return self._call((replica + n - 1) % n, call)

    def _call(self, start: int | None, call: Call) -> OutputTree:
        """``call`` through ``_failover`` from channel ``start`` (None: the next in rotation)."""
        method = "Run" if call.flags is None else "Grad"
        with self._lock:
            net = self._networks[call.network_id]
            overrides = net.overrides(call.params)
        raw = self._failover(lambda route, deadline: self._send(
            route, call.network_id, net, method, lambda **at: self._request(net, method, call, overrides, **at),
            deadline), start=start)
        return _parsed(method, net.reader(method, call.flags), raw)

    def _request(self, net: _Network, method: str, call: Call, overrides: dict[str, np.ndarray],
                 network_id: str | None = None, graph: graph_pb2.Graph | None = None) -> bytes:
        """The serialized request of a unary ``call`` with parameter ``overrides``, by ``network_id`` or with ``graph``
        inline: joined by the layout's Template when it has one, else serialized by protobuf (and by ``network_id``,
        cut into the layout's Template)."""
        key = (method, network_id, call.flags, len(call.inputs), tuple(overrides))
        if network_id is not None:
            found = net.templates.get(key)
            if found is not None:
                data = found[0].join(_arrays(call.inputs, overrides, found[1]))
                if data is not None:
                    return data
        if call.flags is None:
            message: Any = service_pb2.RunRequest()
            for a in call.inputs:
                codec.encode_tensor(a, message.inputs.add())
        else:
            message = self._grad_message(call)
        data = _addressed(message, overrides, network_id, graph).SerializeToString(deterministic=True)
        if network_id is not None:
            template = codec.Template.learn(data, type(message).DESCRIPTOR)
            picks = None if template is None else _picks(template, len(call.inputs) if call.flags is None else net.inputs,
                                                         len(call.inputs), list(overrides))
            if template is not None and picks is not None and template.join(_arrays(call.inputs, overrides, picks)) == data:
                net.templates[key] = (template, picks)
        return data

    def _grad_message(self, call: Call) -> service_pb2.GradRequest:
        """The GradRequest of ``call`` (a Run as a forward-only Grad, for a GradStream) without its network, each
        tensor encoded in place."""
        flags = call.flags
        if flags is None:
            request = service_pb2.GradRequest(grad=FORWARD_ONLY, return_forward=True)
            n = len(call.inputs)
        else:
            request = service_pb2.GradRequest(
                grad=codec.encode_grad_operation(flags.get_all, flags.get_by_list, flags.sens_param, flags.weights))
            n = self._networks[call.network_id].inputs
        for i, a in enumerate(call.inputs):
            codec.encode_tensor(a, (request.inputs if i < n else request.sens).add())
        return request

    def _grad_request(self, call: Call) -> Callable[..., service_pb2.GradRequest]:
        """``make(network_id=... or graph=..., parameters=..., request_id=...)``: a new GradRequest of ``call`` for
        each request of a GradStream (each waits in a queue until sent)."""
        base = self._grad_message(call)

        def make(**net: Any) -> service_pb2.GradRequest:
            request = service_pb2.GradRequest()
            request.CopyFrom(base)
            return _addressed(request, **net)

        return make

    def stream(self, calls: Iterable[Call], in_flight: int) -> Iterator[OutputTree]:
        """The result of each call in order, from up to ``in_flight`` requests at a time on one GradStream."""
        return _Stream(self, iter(calls), in_flight).results()

    def close(self) -> None:
        """Close the channels."""
        for route in self._routes:
            route.channel.close()

    def _send(self, route: _Route, local_id: str, net: _Network, method: str, make: Callable[..., Any],
              deadline: float | None) -> bytes:
        """One call through ``route`` by ``deadline`` of the request ``make(network_id=...)`` or ``make(graph=...)``,
        giving the serialized response: registering first if it has not seen the network, inline when asked to."""
        call = route.sender(method)
        with self._lock:
            inline = route.inline.get(local_id, 0)
            if inline:
                route.inline[local_id] = inline - 1
            known = local_id in route.registered
        if inline:
            return self._send_inline(route, local_id, net, method, call, make, deadline)
        if not known:
            self._register(route, local_id, net, deadline)
        try:
            return call(make(network_id=net.server_id), _left(deadline))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        more = address_count(route.target) - 1
        if more:
            with self._lock:
                route.inline[local_id] = more
        return self._send_inline(route, local_id, net, method, call, make, deadline)

    def _send_inline(self, route: _Route, local_id: str, net: _Network, method: str, call: Any, make: Callable[..., Any],
                     deadline: float | None) -> bytes:
        """The call with the graph itself, which also registers it on the server that takes it."""
        raw = call(make(graph=net.message), _left(deadline))
        with self._lock:
            net.server_id = _parsed(method, RESULTS[method][0].FromString, raw).network_id
            route.registered.add(local_id)
        return raw

    def _register(self, route: _Route, local_id: str, net: _Network, deadline: float | None) -> None:
        """RegisterNetwork through ``route``."""
        raw = route.sender("RegisterNetwork")(service_pb2.RegisterNetworkRequest(graph=net.message), _left(deadline))
        resp = _parsed("RegisterNetwork", service_pb2.RegisterNetworkResponse.FromString, raw)
        with self._lock:
            net.server_id = resp.network_id
            route.registered.add(local_id)

    def _failover(self, attempt: Callable[[_Route, float | None], Any], advance: bool = True,
                  start: int | None = None) -> Any:
        """``attempt(route, deadline)`` on the channels in rotation from ``start`` (default: the next turn; lately
        failed ones last) until one is not UNAVAILABLE, rounds apart by a jittered backoff, for at most
        ``retry_seconds`` and never past ``timeout``."""
        if start is None:
            with self._lock:  # advance=False (registering) starts where the next call will, which then finds it there
                start = self._turn % len(self._routes)
                self._turn += advance
        retry, timeout = retry_seconds(), call_timeout()
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        give_up = now + retry if deadline is None else min(now + retry, deadline)
        delay = INITIAL_BACKOFF
        while True:
            routes = self._routes
            order = routes if len(routes) == 1 else sorted(routes[start:] + routes[:start], key=lambda r: r.down_until > now)
            for route in order:
                try:
                    return attempt(route, deadline)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise _translate(exc) from None
                    route.down_until = time.monotonic() + DOWN_SECONDS
                    last = exc
            now = time.monotonic()
            if now >= give_up:
                if deadline is not None and now >= deadline:
                    raise RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"the call's timeout of {timeout:g} s passed while no server was reachable: {last.details()}")
                raise RemoteError(last.code(), f"{last.details()} (no server took the call in {retry:g} s of retrying; "
                                               "set_context(retry_seconds=...) or GRADSERVE_RETRY_SECONDS sets how long)")
            time.sleep(min(give_up - now, delay * random.uniform(0.5, 1.0)))
            delay = min(2 * delay, MAX_BACKOFF)
            now = time.monotonic()


def _addressed(request: Any, parameters: Mapping[str, np.ndarray], network_id: str | None = None,
               graph: graph_pb2.Graph | None = None, request_id: str | None = None) -> Any:
    """``request`` (its inputs encoded in place, once) for one attempt: by ``network_id`` or with ``graph`` inline,
    ``parameters`` encoded as overrides, and ``request_id`` (a GradStream's)."""
    if graph is not None:
        request.graph.CopyFrom(graph)
    else:
        request.network_id = network_id
    request.parameters.clear()
    for name, a in parameters.items():
        codec.encode_tensor(a, request.parameters[name])
    if request_id is not None:
        request.request_id = request_id
    return request


def _picks(template: codec.Template, inputs: int, count: int, names: list[str]) -> list[int] | None:
    """For each slot of a request's ``template``, the index of its array in ``[*call.inputs, *overrides.values()]``
    (the first ``inputs`` of the call's ``count`` inputs are the network's, the rest sens; ``names`` the overrides'
    names in order); None when a slot is none of them."""
    picks = []
    for path in template.paths:
        if len(path) != 2:
            return None
        kind, key = path
        if kind == "inputs" and key < inputs:
            picks.append(key)
        elif kind == "sens":
            picks.append(inputs + key)
        elif kind == "parameters" and key in names:
            picks.append(count + names.index(key))
        else:
            return None
    return picks


def _arrays(inputs: Sequence[np.ndarray], overrides: Mapping[str, np.ndarray], picks: list[int]) -> list[np.ndarray]:
    """The arrays of a call in its request template's slot order (``_picks``)."""
    arrays = [*inputs, *overrides.values()]
    return [arrays[j] for j in picks]


def _parsed(method: str, parse: Callable[[bytes], Any], raw: bytes) -> Any:
    """``parse(raw)`` of a ``method`` response; bytes that do not parse are a RemoteError INTERNAL, as when gRPC
    parsed responses itself."""
    try:
        return parse(raw)
    except DecodeError as exc:
        raise RemoteError(grpc.StatusCode.INTERNAL, f"the server's {method} response does not parse: {exc}") from None


def _left(deadline: float | None) -> float | None:
    """Seconds from now until ``deadline`` (None: no deadline), as a call's timeout."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _translate(exc: grpc.RpcError) -> Exception:
    """A server's error as the engine's exception where one matches, else a RemoteError."""
    return _error(exc.code(), exc.details())


def _error(code: grpc.StatusCode, details: str) -> Exception:
    """The exception for a failed call's status code and message."""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotDifferentiableError(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return EngineError(details)
    return RemoteError(code, details)


class _Stream:
    """One GradStream over which ``calls`` are sent, at most ``in_flight`` ahead of the results given back in order.

    Each request carries its position as ``request_id``; answers may come in any order and wait until their turn.
    A request the server answers NOT_FOUND (restarted, or evicted) is sent again with its graph inline. A failed
    request raises at its own position, after the results before it; so does an error preparing a call (tracing),
    which ``calls`` raises when it is read. A stream broken by UNAVAILABLE (its server stopped) is opened again on
    the next channel and every unanswered request sent again (each is idempotent), backing off once every channel
    has failed, until ``retry_seconds`` pass without a result. The context's ``timeout`` does not apply: a stream
    lasts as long as its batches."""

    def __init__(self, backend: RemoteBackend, calls: Iterator[Call], in_flight: int) -> None:
        self.backend, self.calls, self.in_flight = backend, calls, in_flight
        self.sent: dict[int, tuple[Call, Callable[..., service_pb2.GradRequest], dict[str, np.ndarray]]] = {}
        self.answers: dict[int, service_pb2.GradResponse] = {}
        self.failed: tuple[int, BaseException] | None = None
        self.read = 0
        self.exhausted = False
        with backend._lock:
            self.turn = backend._turn
            backend._turn += 1

    def results(self) -> Iterator[OutputTree]:
        """The results in order (a generator: closing it cancels the stream)."""
        given = 0
        failing_since: float | None = None
        failures = 0
        while True:
            route = self.backend._routes[self.turn % len(self.backend._routes)]
            requests: queue.Queue[service_pb2.GradRequest | None] = queue.Queue()
            responses = route.stub.GradStream(iter(requests.get, None))
            try:
                for i in sorted(self.sent):
                    if i >= given and i not in self.answers:
                        requests.put(self._request(route, i, inline=False))
                while True:
                    self._fill(route, requests, given)
                    if given == self.read:
                        if self.failed is not None:
                            raise self.failed[1]
                        return
                    while given not in self.answers:
                        self._take(route, requests, next(responses))
                    yield self._result(given)
                    given += 1
                    failing_since, failures = None, 0
            except grpc.RpcError as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if exc.code() != grpc.StatusCode.UNAVAILABLE or now - failing_since >= retry_seconds():
                    raise _translate(exc) from None
                route.down_until = now + DOWN_SECONDS
                self.turn += 1
                failures += 1
                if failures >= len(self.backend._routes):  # every channel failed: back off as unary calls do
                    time.sleep(min(MAX_BACKOFF, INITIAL_BACKOFF * 2 ** (failures - len(self.backend._routes)))
                               * random.uniform(0.5, 1.0))
            finally:
                requests.put(None)
                responses.cancel()

    def _fill(self, route: _Route, requests: queue.Queue[Any], given: int) -> None:
        """Read and send calls until ``in_flight`` are ahead of the results given, or the calls end (or fail)."""
        while not self.exhausted and self.failed is None and self.read - given < self.in_flight:
            try:
                call = next(self.calls)
            except StopIteration:
                self.exhausted = True
                return
            except Exception as exc:  # preparing this call failed: it is raised at its own position
                self.failed = (self.read, exc)
                return
            i = self.read
            self.read += 1
            with self.backend._lock:
                overrides = self.backend._networks[call.network_id].overrides(call.params)
            self.sent[i] = (call, self.backend._grad_request(call), overrides)
            requests.put(self._request(route, i, inline=False))

    def _request(self, route: _Route, i: int, inline: bool) -> service_pb2.GradRequest:
        """Request ``i`` for ``route`` (registering its network there first unless ``inline``)."""
        call, make, overrides = self.sent[i]
        net = self.backend._networks[call.network_id]
        if inline:
            return make(graph=net.message, parameters=overrides, request_id=str(i))
        with self.backend._lock:
            known = call.network_id in route.registered
        if not known:
            self.backend._register(route, call.network_id, net, None)
        return make(network_id=net.server_id, parameters=overrides, request_id=str(i))

    def _take(self, route: _Route, requests: queue.Queue[Any], resp: service_pb2.GradResponse) -> None:
        """Keep an answer until its turn; a NOT_FOUND one is asked again with the graph inline."""
        i = int(resp.request_id)
        if resp.HasField("error") and STATUS_CODES.get(resp.error.code) == grpc.StatusCode.NOT_FOUND:
            requests.put(self._request(route, i, inline=True))
            return
        self.answers[i] = resp

    def _result(self, i: int) -> OutputTree:
        """The result of call ``i`` (raising its error)."""
        resp = self.answers.pop(i)
        call = self.sent.pop(i)[0]
        if resp.HasField("error"):
            raise _error(STATUS_CODES.get(resp.error.code, grpc.StatusCode.UNKNOWN), resp.error.message)
        return codec.decode_tree(resp.forward if call.flags is None else resp.gradients)
