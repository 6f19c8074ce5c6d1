"""What a worker does with a job: decode with the codec, compile (cached), run the engine, encode.

Runs in worker processes, and in the server process for plans small enough (``server.lane``). Large
tensors arrive as shared-memory buffers (their messages carry dtype and shape only) and large results
leave as arrays for the caller to ship the same way.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from ..engine import EngineError, Graph, NotDifferentiableError, Program, compile_graph, flatten, signature_copy, unflatten
from ..engine.autodiff import inline
from ..proto import codec
from ..v1 import graph_pb2, service_pb2
from .blobs import BLOB_MIN_BYTES, Where, data_header, leaves_of, pieces, request_tensors
from .config import PROTOBUF_MAX_BYTES, Limits
from .errors import Failure


@dataclass
class WorkerState:
    """A worker's limits and cache: decoded networks by id and Plans (compiled programs) by ``plan_key``,
    in one ``worker.Cache`` bounded in bytes."""

    limits: codec.Limits
    cache: Any
    max_message_bytes: int = 0
    """The largest response message (0: protobuf's own 2 GiB limit); results over it are refused before computing."""
    local_max_elements: int = 0
    """Plans whose runs touch at most this many elements may run in the server process (``Plan.local``; 0: none)."""
    max_peak_bytes: int = 0
    """Plans whose runs hold more tensor bytes at once are refused before running (0: no limit)."""
    max_flops: int = 0
    """Plans whose runs cost more floating-point operations are refused before running (0: no limit)."""

    def network(self, network_id: str, raw: bytes) -> Graph:
        """The decoded network ``network_id`` (serialized as ``raw``), decoded and cached when not held."""
        g = self.cache.get(network_id)
        if g is None:
            g = load_network(raw, self.limits)
            self.cache.put(network_id, g, len(raw))
        return g


def worker_state(limits: Limits, cache: Any, local_max_elements: int) -> WorkerState:
    """The state of a worker (or of the local lane) serving under the server's ``limits``."""
    return WorkerState(codec_limits(limits), cache, limits.max_message_bytes, local_max_elements,
                       limits.max_request_peak_bytes, limits.max_request_flops)


LOCAL_MAX_NODES = 1000
"""A plan of more nodes never runs in the server process, which builds it again to run it (building takes
time in proportion to the nodes; a count, unlike a measured time, decides the same way on a loaded machine)."""

MESSAGES: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    "grad": (service_pb2.GradRequest, service_pb2.GradResponse, ("gradients", "forward")),
    "run": (service_pb2.RunRequest, service_pb2.RunResponse, ("outputs",)),
}
"""Request type, response type and the response's TensorTree fields, by job kind."""


def codec_limits(limits: Limits) -> codec.Limits:
    """The codec's view of the server limits."""
    return codec.Limits(
        max_tensor_elements=limits.max_tensor_elements or 1 << 62,
        max_tensor_rank=limits.max_tensor_rank or 1 << 30,
        max_graph_nodes=limits.max_graph_nodes or 1 << 62,
        max_nesting_depth=limits.max_nesting_depth or 1 << 30,
    )


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


def load_network(raw: bytes, limits: codec.Limits) -> Graph:
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
    """Little-endian, as the wire carries it."""

    @classmethod
    def of(cls, v: Any) -> "_Spec | None":
        """The spec of a declared value; None for bool (its bytes need checking, left to the codec)."""
        dt = np.dtype(v.dtype)
        if dt.kind == "b":
            return None
        return cls(codec.encode_dtype(dt), tuple(v.shape), list(v.shape), int(np.prod(v.shape, dtype=np.int64)) * dt.itemsize,
                   dt.newbyteorder("<"))

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
    template: "Template | None" = None
    """How to serialize this plan's results without protobuf, once a first response showed it (small results only)."""
    local: bool = False
    """Small enough to run in the server process: see ``WorkerState.local_max_elements``."""
    held: int = 0
    """Bytes of the constants and parameters the program holds (what it costs a cache)."""

    def take(self, req: Any) -> tuple[list[np.ndarray], dict[str, np.ndarray]] | None:
        """(positional arrays, parameter overrides) of ``req``, or None when the codec must look at it."""
        ins, sens = req.inputs, getattr(req, "sens", ())
        if len(ins) != self.inputs or len(sens) != len(self.args) - self.inputs:
            return None
        args = []
        for spec, t in zip(self.args, itertools.chain(ins, sens)):
            a = spec.take(t) if spec is not None else None
            if a is None:
                return None
            args.append(a)
        params = {}
        if req.parameters:
            for name, t in req.parameters.items():
                spec = self.params.get(name)
                a = spec.take(t) if spec is not None else None
                if a is None:
                    return None
                params[name] = a
        return args, params


def _plan(network: Graph, call: codec.Call, sens: bool, graph: Graph, names: tuple[str, ...], forward: bool) -> Plan:
    declared = list(network.inputs) + (list(call.graph.inputs[len(network.inputs):]) if sens else [])
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


def handle(state: WorkerState, kind: str, payload: Any, blobs: list[memoryview], network_id: str,
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
    if kind not in MESSAGES:
        raise ValueError(f"unknown job kind {kind!r}")
    raw, places = payload
    req = MESSAGES[kind][0].FromString(raw)
    return run(state, kind, req, _with_blobs(req, places, blobs), network_id, plan_key(kind, req, network_id), interrupt)


def run(state: WorkerState, kind: str, req: Any, view: Any, network_id: str, key: tuple,
        interrupt: Callable[[], bool] | None = None) -> tuple[tuple[bytes, list[int], bool], list[np.ndarray]]:
    """Compute a Grad or Run request ``req`` (``view``: the same with shared-memory buffers standing in for
    its stripped tensors) on the network ``network_id``, which ``state`` holds; ``key`` is its ``plan_key``.
    Returns (the serialized response with large leaves' data left out, their leaf numbers, whether the plan
    is ``local``) and those leaves' arrays."""
    _, response, names = MESSAGES[kind]
    plan = state.cache.get(key)
    taken = plan.take(view) if plan is not None else None
    if taken is None:
        network = state.cache.get(network_id)
        if kind == "grad":
            call = codec.decode_grad_call(network, view, state.limits)
        else:
            call = codec.decode_run_call(network, view, state.limits)
        if plan is None:
            forward, sens = kind == "grad" and req.return_forward, kind == "grad" and req.grad.sens_param
            plan = _plan(network, call, sens, _with_forward(network, call.graph) if forward else call.graph, names, forward)
            plan.local = (0 < state.local_max_elements and plan.program.elements <= state.local_max_elements
                          and len(plan.program.graph.nodes) <= LOCAL_MAX_NODES)
            state.cache.put(key, plan, plan.held)
    check_result_size(plan, response.__name__, state.max_message_bytes)
    check_cost(plan, state.max_peak_bytes, state.max_flops)
    # Plan.take checked every type; the codec checked against the network, the program checks again
    if taken is None:
        result = plan.program(*call.args, params=call.params, interrupt=interrupt)
    else:
        result = plan.program.run(*taken, interrupt=interrupt)
    trees = list(result) if plan.forward else [result]
    if plan.template is not None:
        body = plan.template.fill([np.asarray(a) for tree in trees for a in flatten(tree)])
        if body is not None:
            return (body, [], plan.local), []
    message = response()
    (body, big), arrays = _encode(trees, names, message)
    if plan.template is None and not big and len(body) <= TEMPLATE_MAX_BYTES:
        plan.template = Template.of(message, names)
    return (body, big, plan.local), arrays


TEMPLATE_MAX_BYTES = 1 << 20
"""Responses up to this size teach their plan a Template."""


@dataclass(frozen=True)
class Template:
    """A serialized response cut around its leaves' data: a result of the same types is answered by one
    join of these pieces and the arrays' bytes, with no message built (a tiny gradient's largest cost)."""

    types: list[tuple[np.dtype, tuple[int, ...]]]
    """The dtype and shape of each leaf, in leaf order."""
    pieces: list[bytes]
    """What comes before each leaf's bytes (ending with that leaf's data key and length), then what follows the last."""

    @classmethod
    def of(cls, response: Any, names: tuple[str, ...]) -> "Template | None":
        """The template of ``response`` (every leaf's data set; they are cleared), or None on a big-endian machine."""
        if sys.byteorder != "little":
            return None
        tensors = leaves_of(response, names)
        types = [(codec.decode_dtype(t.dtype, "result"), tuple(t.shape)) for t in tensors]
        sizes = [len(t.data) for t in tensors]
        frames = [data_header(n) + t.data for n, t in zip(sizes, tensors)]
        for t in tensors:
            t.ClearField("data")
        cut: list[bytes] = []
        before: list[bytes] = []  # what comes before each leaf's bytes
        for piece in pieces(response, names, list(range(len(frames))), frames):
            k = len(before)
            if k < len(frames) and piece is frames[k]:
                before.append(b"".join(cut) + data_header(sizes[k]))
                cut = []
            else:
                cut.append(bytes(piece))
        return cls(types, before + [b"".join(cut)])

    def fill(self, arrays: list[np.ndarray]) -> bytes | None:
        """The response holding ``arrays`` as its leaves; None unless they have the template's types."""
        if len(arrays) != len(self.types):
            return None
        parts: list[bytes] = []
        for (dtype, shape), piece, a in zip(self.types, self.pieces, arrays):
            if a.dtype != dtype or a.shape != shape:
                return None
            parts += (piece, a.tobytes())
        parts.append(self.pieces[-1])
        return b"".join(parts)


def _with_forward(network: Graph, gradient: Graph) -> Graph:
    """One graph returning ``(gradients, forward outputs)``; compiling it merges the shared forward part."""
    b, args = signature_copy(gradient)
    return b.build((inline(b, gradient, args), inline(b, network, args[: len(network.inputs)])))


def _with_blobs(req: Any, places: list[Where], blobs: list[memoryview]) -> Any:
    """The request as the codec reads it, with shared-memory buffers standing in for stripped data."""
    if not places:
        return req
    by_place = dict(zip(places, blobs))
    fields: dict[str, Any] = {"inputs": [], "sens": [], "parameters": {}}
    for (name, key), t in request_tensors(req):
        held = by_place.get((name, key))
        tensor = t if held is None else SimpleNamespace(dtype=t.dtype, shape=t.shape, data=held)
        if name == "parameters":
            fields[name][key] = tensor
        else:
            fields[name].append(tensor)
    return SimpleNamespace(grad=getattr(req, "grad", None), **fields)


def _encode(trees: list[Any], names: tuple[str, ...], resp: Any) -> tuple[tuple[bytes, list[int]], list[np.ndarray]]:
    """Fill ``resp``'s tree fields; large leaves get dtype and shape only and are returned as arrays,
    with their leaf numbers (counted across ``names``) in the answer."""
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
    return (resp.SerializeToString(), big), arrays
