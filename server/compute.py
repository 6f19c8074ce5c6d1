"""What a worker does with a job. A Grad or Run request goes through four steps, each returning a named
type: ``plan`` (the compiled ``Plan``, cached), ``args`` (the run's ``Args``: taken as they are when they
match the plan, else decoded by the codec), ``execute`` (result trees), ``encode`` (the ``Encoded`` response).

Runs in worker processes, and in the server process for plans small enough (``server.lane``). Large
tensors arrive as shared-memory buffers (their messages carry dtype and shape only) and large results
leave as arrays for the caller to ship the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from gradserve.engine import (
    OPS,
    EngineError,
    Graph,
    NotDifferentiableError,
    Program,
    compile_graph,
    flatten,
    signature_copy,
    unflatten,
)
from gradserve.engine.autodiff import inline
from gradserve.engine.errors import shown
from gradserve.proto import codec
from gradserve.v1 import graph_pb2, service_pb2

from .blobs import BLOB_MIN_BYTES, Where, around, data_header, frame_size, leaves_of, request_tensors
from .config import PROTOBUF_MAX_BYTES, Limits
from .errors import Failure
from .jsonlog import log


@dataclass
class WorkerState:
    """A worker's limits and cache: decoded networks by id and Plans (compiled programs) by ``plan_key``,
    in one ``cache.Cache`` bounded in bytes."""

    limits: Limits
    """The server's limits, as the codec reads them (``Limits.decoding``)."""
    cache: Any
    local_max_elements: int = 0
    """Plans whose runs touch at most this many elements may run in the server process (``Plan.local``; 0: none)."""
    local_max_flops: int = 0
    """Plans costing at most this many floating-point operations, and holding at most ``local_max_peak_bytes`` at
    once, may run in the server process when its lane is free (``Plan.bounded``; 0: none)."""
    local_max_peak_bytes: int = 0

    def network(self, network_id: str, raw: bytes) -> Graph:
        """The decoded network ``network_id`` (serialized as ``raw``), decoded and cached when not held."""
        g = self.cache.get(network_id)
        if g is None:
            g = load_network(raw, self.limits)
            self.cache.put(network_id, g, len(raw))
        return g


def worker_state(limits: Limits, cache: Any, local_max_elements: int, local_max_flops: int = 0,
                 local_max_peak_bytes: int = 0) -> WorkerState:
    """The state of a worker (or of the local lane) serving under the server's ``limits``."""
    return WorkerState(limits.decoding(), cache, local_max_elements, local_max_flops, local_max_peak_bytes)


LOCAL_MAX_NODES = 1000
"""A plan of more nodes never runs in the server process, which unpickles it (``import_plan``) and may have
to build it again (in time proportional to the nodes; a count, unlike a measured time, decides the same way
on a loaded machine)."""

LOCAL_MAX_NETWORK_BYTES = 64 << 10
"""A plan of a network serialized larger than this never runs in the server process, which decodes the
network for requests the codec must check (in time proportional to the whole network, however little of
it a plan runs)."""


class Kind(NamedTuple):
    """The messages of one kind of computing job."""

    request: Any
    response: Any
    fields: tuple[str, ...]
    """The response's TensorTree fields, in the order a plan's results fill them."""


KINDS = {
    "grad": Kind(service_pb2.GradRequest, service_pb2.GradResponse, ("gradients", "forward")),
    "run": Kind(service_pb2.RunRequest, service_pb2.RunResponse, ("outputs",)),
}


def classify(exc: BaseException) -> Failure:
    """The status for an exception raised while serving one request; only bugs become INTERNAL."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, codec.WireError):
        code = "RESOURCE_EXHAUSTED" if isinstance(exc, codec.LimitError) else "INVALID_ARGUMENT"
        return Failure(code, str(exc), [(exc.field, exc.description)])
    if isinstance(exc, NotDifferentiableError):
        return Failure("UNIMPLEMENTED", str(exc))
    if isinstance(exc, EngineError):
        return Failure("INVALID_ARGUMENT", str(exc))
    if isinstance(exc, MemoryError):
        return Failure("RESOURCE_EXHAUSTED", "the worker ran out of memory computing this request")
    return Failure("INTERNAL", f"{type(exc).__name__}: {exc}")


def load_network(raw: bytes, limits: Limits) -> Graph:
    """Decode and check a serialized network."""
    return codec.decode_graph(graph_pb2.Graph.FromString(raw), limits, "graph")


@dataclass(frozen=True)
class _Spec:
    """What a tensor must look like on the wire to be taken without the codec's checks."""

    enum: int
    shape: tuple[int, ...]
    dims: list[int]
    """The shape as a list, which a Tensor's repeated ``shape`` field compares with directly."""
    nbytes: int
    dtype: np.dtype
    """Little-endian, as the wire carries it: the declared dtype object itself when it is, so that the arrays taken
    carry the program's own dtype, which its straight-line plan compares by identity (another object takes the full check)."""

    @classmethod
    def of(cls, v: Any) -> _Spec | None:
        """The spec of a declared value; None for bool (its bytes need checking, left to the codec)."""
        dt = np.dtype(v.dtype)
        if dt.kind == "b":
            return None
        little = dt.newbyteorder("<")
        return cls(codec.encode_dtype(dt), tuple(v.shape), list(v.shape), int(np.prod(v.shape, dtype=np.int64)) * dt.itemsize,
                   dt if little == dt else little)

    def take(self, t: Any) -> np.ndarray | None:
        """A read-only view of ``t``'s data when it matches exactly, else None."""
        if t.dtype != self.enum or t.shape != self.dims:
            return None
        data = t.data  # bytes, or a 1-D byte memoryview of shared memory
        if len(data) != self.nbytes:
            return None
        a = np.ndarray(self.shape, self.dtype, data)
        return a if a.dtype.isnative else a.astype(self.dtype.newbyteorder("="))


@dataclass
class Plan:
    """A compiled program for one (network, GradOperation, return_forward), and the exact input types
    it was built for. A request whose tensors match them exactly (the common case: the same call again)
    is decoded without the codec; anything else goes through the codec, which names what is wrong."""

    program: Program
    args: list[_Spec | None]
    """Inputs, then sensitivities when sens_param is set."""
    inputs: int
    """How many of ``args`` are inputs (the rest are sensitivities)."""
    params: dict[str, _Spec | None]
    result_bytes: int = 0
    """A lower bound on the response size: the serialized data fields of the result tensors (every leaf of the response's tree fields), known from the types."""
    largest: str = ""
    """The largest result tensor, described for an error message."""
    forward: bool = False
    """The program returns ``(gradients, forward outputs)`` (a Grad with return_forward)."""
    layout: Layout | None = None
    """How to serialize this plan's results without protobuf, once a first response showed it (one of at most
    ``TEMPLATE_MAX_BYTES`` apart from its large leaves' data)."""
    taught: bool = False
    """A response was offered to learn ``layout`` from (its results' types never change: one that gave none is not walked again)."""
    local: bool = False
    """Small enough to run in the server process: see ``WorkerState.local_max_elements`` (tiny) and
    ``WorkerState.local_max_flops`` (``bounded``)."""
    bounded: bool = False
    """Local but not tiny: run in the server process only when its lane is free, asking between steps whether
    the call has ended (tiny plans run at once, unchecked)."""
    held: int = 0
    """Bytes of the constants and parameters the program holds (what it costs a cache)."""
    exported: bytes = dataclasses.field(default=b"", repr=False)
    """``export_plan``'s bytes, made once."""
    unexportable: bool = False
    """``export_plan`` failed to pickle this plan: it stays in the workers, and exporting it is not tried again."""
    reading: Reading | None = None
    """How the local lane reads requests laid out as the first it ran was (``read``; taught by ``checked``)."""
    read_taught: bool = False
    """A request was offered to learn ``reading`` from (one that gave none is not walked again)."""

    def read(self, raw: bytes | None) -> Args | None:
        """The arguments of a run read straight from a request's bytes ``raw`` (when they hold all of it) by the plan's
        ``reading``: a request laid out as one whose tensors were taken and whose run ``check`` passed; else None."""
        reading = self.reading
        return reading.read(raw) if reading is not None and raw is not None else None

    def take(self, req: Tensors) -> Args | None:
        """The arrays of ``req`` when they match this plan's types exactly, or None when the codec must look at them."""
        ins, sens = req.inputs, req.sens
        if len(ins) != self.inputs or len(sens) != len(self.args) - self.inputs:
            return None
        args = []
        for spec, t in zip(self.args, itertools.chain(ins, sens)):
            a = spec.take(t) if spec is not None else None
            if a is None:
                return None
            args.append(a)
        params = {}
        given = req.parameters
        if given:
            for name in given:  # a protobuf map's items() is a generic Python view: indexing by key is faster
                spec = self.params.get(name)
                a = spec.take(given[name]) if spec is not None else None
                if a is None:
                    return None
                params[name] = a
        return Args(args, params)


class Reading(NamedTuple):
    """How the local lane takes the arguments of a plan's run straight from a request's bytes, learned from the first
    request it ran (``learn_reading``): that request's Template, and for each of its slots the argument it is (a
    position, or a parameter's name) and the plan's own dtype object for it (as ``_Spec.take`` gives it)."""

    template: codec.Template
    places: tuple[int | str, ...]
    dtypes: tuple[np.dtype, ...]
    positional: int
    """How many of the places are positions."""

    def read(self, raw: bytes) -> Args | None:
        """The arguments in the request ``raw`` when its bytes outside its tensors' data are those of the request this
        was learned from (so that it parses as that one did, its tensors matching the plan), as read-only views of
        ``raw`` (copies when misaligned) carrying the plan's dtype objects (``codec.Template.read``); else None."""
        arrays = self.template.read(raw, self.dtypes)
        if arrays is None:
            return None
        positional: list[Any] = [None] * self.positional
        params = {}
        for a, place in zip(arrays, self.places):
            if isinstance(place, int):
                positional[place] = a
            else:
                params[place] = a
        return Args(positional, params)


def learn_reading(found: Plan, kind: str, raw: bytes) -> Reading | None:
    """The Reading of the request ``raw``, whose tensors ``found.take`` took as they were; None when its framing is not
    plain (``codec.Template.learn``), it holds tensors anywhere else (an inline graph's) or more than
    ``TEMPLATE_MAX_BYTES`` outside its tensors' data (a long request id: the plan would keep them, uncounted)."""
    template = codec.Template.learn(raw, KINDS[kind].request.DESCRIPTOR)
    if template is None or sum(map(len, template.pieces)) > TEMPLATE_MAX_BYTES:
        return None
    places: list[int | str] = []
    dtypes = []
    for slot in template.slots:
        place = _place(found, slot.path)
        if place is None:
            return None
        spec = found.args[place] if isinstance(place, int) else found.params.get(place)
        if spec is None:
            return None
        places.append(place)
        dtypes.append(spec.dtype)
    positions = sorted(p for p in places if isinstance(p, int))
    if positions != list(range(len(found.args))):
        return None
    return Reading(template, tuple(places), tuple(dtypes), len(positions))


def _place(found: Plan, path: tuple[Any, ...]) -> int | str | None:
    """The argument of ``found`` that the request tensor at ``path`` (a Template slot's) is: a position (inputs, then
    sensitivities) or a parameter's name; None for any other tensor."""
    if len(path) != 2:
        return None
    field, at = path
    if field == "inputs" and at < found.inputs:
        return int(at)
    if field == "sens" and at < len(found.args) - found.inputs:
        return found.inputs + at
    return at if field == "parameters" else None


def _plan(network: Graph, called: Graph, sens: bool, graph: Graph, names: tuple[str, ...], forward: bool) -> Plan:
    """The plan compiling ``graph``, which runs ``called`` (the network or its gradient) and adds the forward
    outputs when ``forward``."""
    declared = list(network.inputs) + (list(called.inputs[len(network.inputs):]) if sens else [])
    program = compile_graph(graph)
    outputs: Any = program.source.outputs
    trees = list(outputs) if forward else [outputs]
    total, largest, size = 0, "", -1
    for tree, name in zip(trees, names):
        for i, v in enumerate(flatten(tree)):
            n = int(np.prod(v.shape, dtype=object)) * np.dtype(v.dtype).itemsize
            total += len(data_header(n)) + n  # at least its data field is in the response
            if n > size:
                size, largest = n, f"{name} leaf {i}, {v.type}, {n} bytes"
    held = sum(n.attrs["value"].nbytes for n in program.graph.nodes if n.op == "Const")
    held += sum(np.asarray(p.data).nbytes for p in program.graph.params)
    return Plan(program, [_Spec.of(v) for v in declared], len(network.inputs),
                {p.name: _Spec.of(p.value) for p in network.params}, total, largest, forward, held=held)


def check_result_size(plan: Plan, response: str, limit: int) -> None:
    """Refuse (RESOURCE_EXHAUSTED) a result whose tensors alone would exceed the response size limit."""
    limit = min(limit, PROTOBUF_MAX_BYTES) if limit else PROTOBUF_MAX_BYTES
    if plan.result_bytes > limit:
        what = "max_message_bytes limit" if limit != PROTOBUF_MAX_BYTES else "2 GiB protobuf message limit"
        raise Failure(
            "RESOURCE_EXHAUSTED",
            f"the {response} would be {plan.result_bytes} bytes, over the {what} of {limit}; its result tensors alone "
            f"take that much (largest: {plan.largest}), so nothing was computed; ask for smaller or fewer results",
            [(plan.largest.partition(" ")[0], f"the result tensors take {plan.result_bytes} bytes, over {limit}")],
        )


def check_cost(plan: Plan, peak_limit: int, flops_limit: int) -> None:
    """Refuse (RESOURCE_EXHAUSTED) a plan whose run would hold more tensor bytes at once, or cost more
    floating-point operations, than the limits allow; both are known from shapes before it runs."""
    program = plan.program
    if peak_limit and program.peak_bytes > peak_limit:
        raise Failure("RESOURCE_EXHAUSTED", f"running this request would hold {program.peak_bytes} bytes of tensors at once, "
                      f"over the max_request_peak_bytes limit of {peak_limit}; nothing was computed; use smaller tensors")
    if flops_limit and program.flops > flops_limit:
        raise Failure("RESOURCE_EXHAUSTED", f"running this request would cost {program.flops} floating-point operations, "
                      f"over the max_request_flops limit of {flops_limit}; nothing was computed; use smaller tensors")


def plan_key(kind: str, req: Any, network_id: str) -> tuple:
    """The cache key of the plan a Grad or Run request runs: its network, GradOperation and return_forward."""
    if kind == "grad":
        return network_id, req.grad.SerializeToString(deterministic=True), req.return_forward
    return network_id, None, False


class Request(NamedTuple):
    """A Grad or Run job as a worker receives it: the request's bytes, which it parses once, and what the
    server already knows about them."""

    body: bytes
    """The serialized request without its graph and the data of its large tensors (as received)."""
    places: list[Where]
    """Where each of the job's shared-memory buffers belongs (``blobs.Lifted.places``)."""
    key: tuple
    """Its ``plan_key``."""
    export: bool = True
    """Send the plan with the answer if it is local (False: the local lane holds it already)."""


class Tensors(NamedTuple):
    """The tensor fields of a Grad or Run request as the codec and ``Plan.take`` read them: the request's
    own messages, except that a tensor whose data travelled in shared memory is a ``Blob``."""

    grad: Any
    """The GradOperation message (None for a Run)."""
    inputs: Sequence[Any]
    sens: Sequence[Any]
    parameters: Mapping[str, Any]

    @classmethod
    def of(cls, req: Any, places: Sequence[Where] = (), buffers: Sequence[memoryview] = ()) -> Tensors:
        """The tensors of ``req``, with ``buffers[i]`` as the data of the stripped tensor at ``places[i]``."""
        if not places:
            if isinstance(req, service_pb2.GradRequest):
                return cls(req.grad, req.inputs, req.sens, req.parameters)
            return cls(None, req.inputs, (), req.parameters)
        by_place = dict(zip(places, buffers))
        fields: dict[str, Any] = {"inputs": [], "sens": [], "parameters": {}}
        for (name, key), t in request_tensors(req):
            held = by_place.get((name, key))
            tensor = t if held is None else Blob(t.dtype, t.shape, held)
            if name == "parameters":
                fields[name][key] = tensor
            else:
                fields[name].append(tensor)
        return cls(req.grad if isinstance(req, service_pb2.GradRequest) else None, **fields)


class Blob(NamedTuple):
    """A request tensor whose data is a shared-memory buffer (read as a Tensor message is)."""

    dtype: int
    shape: Any
    """The message's repeated shape field."""
    data: memoryview


class Args(NamedTuple):
    """What one run of a plan is given."""

    positional: list[np.ndarray]
    """Inputs, then sensitivities when sens_param is set."""
    params: dict[str, np.ndarray]
    """Parameter overrides by name."""


class Encoded(NamedTuple):
    """A serialized response cut around the data of its large leaves, and those leaves' arrays: the response
    is ``blobs.splice(parts, frames)``, each frame the ``data_header`` and bytes of one array."""

    parts: list[bytes]
    """``len(arrays) + 1`` pieces (one, the whole response, when there is no large leaf)."""
    arrays: list[np.ndarray]
    """The large leaves, in leaf order."""


class Answer(NamedTuple):
    """A worker's answer to a Grad or Run job (the large leaves' arrays travel apart, in shared memory)."""

    parts: list[bytes]
    """As in ``Encoded``."""
    plan: bytes
    """The plan (``export_plan``) when it is small enough for the local lane (``Plan.local``) and pickles, else empty."""


def plan(state: WorkerState, kind: str, req: Any, network_id: str, key: tuple) -> Plan:
    """Step 1: the plan of a Grad or Run request ``req`` (its ``plan_key`` is ``key``) on the network
    ``network_id``, which ``state`` holds: cached, else built and cached."""
    found = state.cache.get(key)
    if found is not None:
        return found
    network = state.cache.get(network_id)
    forward = kind == "grad" and req.return_forward
    sens = kind == "grad" and req.grad.sens_param
    graph = codec.apply_grad_operation(network, req.grad, "grad") if kind == "grad" else network
    built = _plan(network, graph, sens, _with_forward(network, graph) if forward else graph, KINDS[kind].fields, forward)
    built.local, built.bounded = _locality(state, built.program, state.cache.held(network_id))
    state.cache.put(key, built, built.held)
    return built


def _locality(state: WorkerState, program: Program, network_bytes: int) -> tuple[bool, bool]:
    """(local, bounded) of a plan running ``program`` on a network of ``network_bytes`` serialized: tiny when its
    runs touch at most ``local_max_elements`` elements and its network is small; bounded when its cost and peak
    memory are within ``local_max_flops`` and ``local_max_peak_bytes`` and so is its network. A
    ``local_max_elements`` of 0 keeps every plan in the workers."""
    if not state.local_max_elements or len(program.graph.nodes) > LOCAL_MAX_NODES:
        return False, False
    if program.elements <= state.local_max_elements and network_bytes <= LOCAL_MAX_NETWORK_BYTES:
        return True, False
    bounded = (0 < state.local_max_flops and program.flops <= state.local_max_flops
               and 0 < state.local_max_peak_bytes and max(program.peak_bytes, network_bytes) <= state.local_max_peak_bytes)
    return bounded, bounded


def _decoded(state: WorkerState, kind: str, tensors: Tensors, network: Graph) -> Args:
    """The arrays of a request's ``tensors`` decoded by the codec, which names what is wrong."""
    request: Any = tensors  # the codec reads only the fields Tensors has
    call = (codec.decode_grad_call if kind == "grad" else codec.decode_run_call)(network, request, state.limits)
    return Args(call.args, call.params)


def check(state: WorkerState, kind: str, found: Plan) -> None:
    """Refuse (RESOURCE_EXHAUSTED) a plan whose run or response would exceed the limits, before it runs."""
    limits = state.limits
    check_result_size(found, KINDS[kind].response.__name__, limits.max_message_bytes)
    check_cost(found, limits.max_request_peak_bytes, limits.max_request_flops)


def execute(found: Plan, given: Args, interrupt: Callable[[], bool] | None = None) -> list[Any]:
    """Step 3: run the plan (asking ``interrupt()`` between steps whether to stop); one result tree per tree
    field of the response (``Kind.fields``)."""
    result = found.program.run(given.positional, given.params, interrupt)
    return list(result) if found.forward else [result]


def encode(found: Plan, kind: str, trees: list[Any]) -> Encoded:
    """Step 4: the response holding ``trees``: joined by the plan's Template when it has one that fits, else built
    with protobuf (teaching the plan its Template when the response is small apart from its large leaves' data)."""
    layout = found.layout
    if layout is not None and (chunks := _chunks(layout, trees)) is not None:
        return _cut(chunks, layout.framed) if layout.framed else Encoded([b"".join(chunks)], [])
    return _protobuf(found, kind, trees)


def pieces(found: Plan, kind: str, trees: list[Any]) -> list[Any]:
    """Step 4 in the server process (the local lane): the response holding ``trees`` as the bytes and C-contiguous
    arrays whose join it is, so that it is copied once, uncut: the Template's chunks when it fits, else ``encode``'s
    parts with each large leaf's frame between them."""
    layout = found.layout
    if layout is not None and (chunks := _chunks(layout, trees)) is not None:
        return chunks
    encoded = _protobuf(found, kind, trees)
    out: list[Any] = [encoded.parts[0]]
    for a, part in zip(encoded.arrays, encoded.parts[1:]):
        out += (data_header(a.nbytes), np.ascontiguousarray(a), part)
    return out


def _chunks(layout: Layout, trees: list[Any]) -> list[Any] | None:
    """The chunks of ``layout``'s Template joining into the response holding ``trees`` (``codec.Template.chunks``), or
    None when they do not fit it."""
    leaves = [a for tree in trees for a in flatten(tree)]
    return layout.template.chunks(leaves if layout.order is None else [leaves[i] for i in layout.order])


def _protobuf(found: Plan, kind: str, trees: list[Any]) -> Encoded:
    """The response holding ``trees`` built with protobuf, teaching the plan its Layout from the first one small
    enough apart from its large leaves' data."""
    response, names = KINDS[kind].response(), KINDS[kind].fields
    encoded = _encode(trees, names, response)
    if not found.taught and sum(map(len, encoded.parts)) <= TEMPLATE_MAX_BYTES:
        found.layout, found.taught = _learn(encoded, KINDS[kind]), True
    return encoded


def handle(state: WorkerState, kind: str, payload: Any, buffers: list[memoryview], network_id: str,
           interrupt: Callable[[], bool] | None = None) -> tuple[Any, list[np.ndarray]]:
    """Run one job (asking ``interrupt()`` between the steps of a run whether to stop); returns a small
    answer and the large arrays to ship back."""
    if kind == "load":
        g = load_network(payload, state.limits)
        nid = codec.network_id(g)
        state.cache.put(nid, g, len(payload))
        return nid, []
    if kind == "ops":
        return (codec.list_ops().SerializeToString(), codec.supported_dtypes()), []
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job: Request = payload
    req = KINDS[kind].request.FromString(job.body)
    found, encoded = run(state, kind, req, Tensors.of(req, job.places, buffers), network_id, job.key, interrupt)
    return Answer(encoded.parts, export_plan(found) if found.local and job.export else b""), encoded.arrays


def run(state: WorkerState, kind: str, req: Any, tensors: Tensors, network_id: str, key: tuple,
        interrupt: Callable[[], bool] | None = None, found: Plan | None = None) -> tuple[Plan, Encoded]:
    """Compute a Grad or Run request ``req`` (``tensors``: its tensors, some in shared memory) on the network
    ``network_id``, which ``state`` holds; ``key`` is its ``plan_key``, ``found`` its plan when the caller holds it
    (else built or taken from the cache). Returns its plan and response."""
    network = state.cache.get(network_id)  # held here: caching the plan may drop it from the cache
    if found is None:
        found = plan(state, kind, req, network_id, key)
    return found, encode(found, kind, execute(found, checked(state, kind, found, tensors, network), interrupt))


def checked(state: WorkerState, kind: str, found: Plan, tensors: Tensors, network: Graph, raw: bytes | None = None) -> Args:
    """Step 2: the arrays of a request's ``tensors`` for a run of ``found`` on ``network`` (taken as they are when they
    match the plan's types exactly, else decoded by the codec, which names what is wrong), once ``check`` has passed
    the run. ``raw``, the request's bytes when they hold all of it (the local lane's), teaches the plan its ``reading``
    when its tensors were taken as they are, so that ``Plan.read`` reads later requests laid out as it is."""
    taken = found.take(tensors)
    given = taken if taken is not None else _decoded(state, kind, tensors, network)
    check(state, kind, found)
    if taken is not None and raw is not None and not found.read_taught:
        found.reading, found.read_taught = learn_reading(found, kind, raw), True
    return given


ERROR_LOG_CHARS = 500
"""How much of a pickling error's text ``export_plan`` logs (it may echo a caller-chosen graph name)."""


def export_plan(found: Plan) -> bytes:
    """``found`` pickled for the server process, which runs it as it is (``import_plan``) instead of building
    it again; made once per plan. Op forward functions are pickled by op name (many are lambdas). Empty when
    pickling fails: the lane is only a shortcut, so the plan stays in the workers, the failure is logged as a
    warning and this worker does not pickle the plan again (``Plan.unexportable``)."""
    if not found.exported and not found.unexportable:
        out = io.BytesIO()
        try:
            _PlanPickler(out, pickle.HIGHEST_PROTOCOL).dump(dataclasses.replace(found, exported=b""))
        except Exception as exc:  # any failure (PicklingError, RecursionError, ...) only costs the shortcut
            found.unexportable = True
            log("plan_not_exported", level="warning", graph=shown(found.program.graph.name),
                error=f"{type(exc).__name__}: {exc}"[:ERROR_LOG_CHARS])
            return b""
        found.exported = out.getvalue()
    return found.exported


def import_plan(data: bytes) -> Plan:
    """A plan ``export_plan`` made (in a worker of this server: the same code and op table)."""
    found = pickle.loads(data)
    assert isinstance(found, Plan)
    return found


@functools.cache
def _forwards() -> dict[int, str]:
    """The op of each forward function of the op table, by the function's id."""
    return {id(opdef.forward): name for name, opdef in OPS.items()}


def _forward(name: str) -> Any:
    """The forward function of op ``name`` (how ``_PlanPickler`` pickles it)."""
    return OPS[name].forward


class _PlanPickler(pickle.Pickler):
    """Pickles the op table's forward functions as references to their op."""

    def reducer_override(self, obj: Any) -> Any:
        name = _forwards().get(id(obj))
        if name is not None and OPS[name].forward is obj:
            return _forward, (name,)
        return NotImplemented


TEMPLATE_MAX_BYTES = 1 << 20
"""Responses up to this size, apart from their large leaves' data, teach their plan a Template."""


class Layout(NamedTuple):
    """How a plan's responses are written once the first showed it: the codec's Template of the first, and what the
    server adds to it (its leaves in the template's slot order, the slots whose data travels as a frame)."""

    template: codec.Template
    order: list[int] | None
    """The leaf (numbered across the tree fields) of each slot, when the slots are in another order (``blobs.around``
    writes a tree field with a frame after those without); None when in leaf order."""
    framed: tuple[tuple[int, int], ...]
    """The slots whose data travels as a frame (``BLOB_MIN_BYTES`` or more), in order, with their ``data_header``'s length."""


def _learn(encoded: Encoded, kind: Kind) -> Layout | None:
    """The Layout of the ``kind`` response that ``encoded`` cuts, its Template learned from the response's bytes with
    the large leaves' data left zero (``np.zeros``: a large buffer is pages never written), so that it is not copied."""
    if not encoded.arrays:
        template = codec.Template.learn(encoded.parts[0], kind.response.DESCRIPTOR)
    else:
        whole = np.zeros(sum(map(len, encoded.parts)) + sum(frame_size(a.nbytes) for a in encoded.arrays), np.uint8)
        at = 0
        for part, n in zip(encoded.parts, [a.nbytes for a in encoded.arrays] + [0]):
            head = part + data_header(n) if n else part
            whole[at:at + len(head)] = np.frombuffer(head, np.uint8)
            at += len(head) + n
        template = codec.Template.learn(whole.data, kind.response.DESCRIPTOR)
    if template is None:
        return None
    slots = template.slots
    by_leaf = sorted(range(len(slots)), key=lambda k: kind.fields.index(slots[k].path[0]))  # stable: pre-order kept
    order = [0] * len(slots)
    for leaf, k in enumerate(by_leaf):
        order[k] = leaf
    framed = tuple((k, len(data_header(s.nbytes))) for k, s in enumerate(slots) if s.nbytes >= BLOB_MIN_BYTES)
    return Layout(template, None if by_leaf == list(range(len(slots))) else order, framed)


def _cut(chunks: list[Any], framed: tuple[tuple[int, int], ...]) -> Encoded:
    """The response that a Template's ``chunks`` are, cut as ``_encode`` cuts it: the data of each ``framed`` slot
    leaves as an array, with the data header that ends the piece before it (its frame holds that)."""
    parts, frames, done = [], [], 0
    for i, header in framed:
        piece = chunks[2 * i]
        chunks[2 * i] = piece[:len(piece) - header]
        parts.append(b"".join(chunks[done:2 * i + 1]))
        frames.append(chunks[2 * i + 1])
        done = 2 * i + 2
    parts.append(b"".join(chunks[done:]))
    return Encoded(parts, frames)


def _with_forward(network: Graph, gradient: Graph) -> Graph:
    """One graph returning ``(gradients, forward outputs)``; compiling it merges the shared forward part."""
    b, args = signature_copy(gradient)
    return b.build((inline(b, gradient, args), inline(b, network, args[: len(network.inputs)])))


def _encode(trees: list[Any], names: tuple[str, ...], resp: Any) -> Encoded:
    """Fill ``resp``'s tree fields and serialize it; large leaves get dtype and shape only, and their arrays
    are returned for the caller to ship as frames between the pieces."""
    big: list[int] = []
    arrays: list[np.ndarray] = []
    k = 0
    for tree, name in zip(trees, names):
        leaves = []
        for a in map(np.asarray, flatten(tree)):
            if a.nbytes >= BLOB_MIN_BYTES:
                big.append(k)
                arrays.append(a)
                a = a.reshape(-1)[:0]
            leaves.append(a)
            k += 1
        codec.encode_tree(unflatten(tree, iter(leaves)), getattr(resp, name))
    if big:
        tensors = leaves_of(resp, names)
        for i, a in zip(big, arrays):
            tensors[i].shape[:] = a.shape
    return Encoded(around(resp, names, big, [frame_size(a.nbytes) for a in arrays]), arrays)
