"""What a worker does with a job: decode with the codec, compile (cached), run the engine, encode.

Runs only in worker processes. Large tensors arrive as shared-memory buffers (their messages carry
dtype and shape only) and large results leave as arrays for the caller to ship the same way.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import codec
from ..engine import EngineError, Graph, GraphBuilder, NotDifferentiableError, Program, compile_graph, flatten, unflatten
from ..engine.autodiff import inline
from ..v1 import graph_pb2, service_pb2
from .blobs import BLOB_MIN_BYTES, Where, data_header, leaves_of, request_tensors
from .config import PROTOBUF_MAX_BYTES, Limits
from .errors import Failure


@dataclass
class WorkerState:
    """A worker's limits and caches: decoded networks by id, Plans (compiled programs) by (id, call shape)."""

    limits: codec.Limits
    networks: Any
    programs: Any
    max_message_bytes: int = 0
    """The largest response message (0: protobuf's own 2 GiB limit); results over it are refused before computing."""


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
    nbytes: int
    dtype: np.dtype
    """Little-endian, as the wire carries it."""

    @classmethod
    def of(cls, v: Any) -> "_Spec | None":
        """The spec of a declared value; None for bool (its bytes need checking, left to the codec)."""
        dt = np.dtype(v.dtype)
        if dt.kind == "b":
            return None
        return cls(codec.encode_dtype(dt), tuple(v.shape), int(np.prod(v.shape, dtype=np.int64)) * dt.itemsize,
                   dt.newbyteorder("<"))

    def take(self, t: Any) -> np.ndarray | None:
        """A read-only view of ``t``'s data when it matches exactly, else None."""
        if t.dtype != self.enum or tuple(t.shape) != self.shape:
            return None
        data = t.data  # bytes, or a 1-D byte memoryview of shared memory
        if len(data) != self.nbytes:
            return None
        a = np.frombuffer(data, self.dtype).reshape(self.shape)
        return a if a.dtype.isnative else a.astype(self.dtype.newbyteorder("="))


@dataclass
class Plan:
    """A compiled program for one (network, GradOperation, return_forward), and the exact input types
    it was built for. A request whose tensors match them exactly (the common case: the same call again)
    is decoded without the codec; anything else goes through the codec, which names what is wrong."""

    program: Program
    args: list[_Spec | None]
    """Inputs, then sensitivities when sens_param is set."""
    sens: bool
    params: dict[str, _Spec | None]
    result_bytes: int = 0
    """A lower bound on the response size: the serialized data fields of the result tensors (every leaf of the response's tree fields), known from the types."""
    largest: str = ""
    """The largest result tensor, described for an error message."""

    def take(self, req: Any) -> tuple[list[np.ndarray], dict[str, np.ndarray]] | None:
        """(positional arrays, parameter overrides) of ``req``, or None when the codec must look at it."""
        ins, sens = req.inputs, getattr(req, "sens", ())
        if len(ins) + (len(sens) if self.sens else 0) != len(self.args) or (sens and not self.sens):
            return None
        args = []
        for spec, t in zip(self.args, itertools.chain(ins, sens)):
            a = spec.take(t) if spec is not None else None
            if a is None:
                return None
            args.append(a)
        params = {}
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
    return Plan(program, [_Spec.of(v) for v in declared], sens, {p.name: _Spec.of(p.value) for p in network.params},
                total, largest)


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


def handle(state: WorkerState, kind: str, payload: Any, blobs: list[memoryview], network_id: str) -> tuple[Any, list[np.ndarray]]:
    """Run one job; returns a small answer and the large arrays to ship back."""
    if kind == "load":
        g = load_network(payload, state.limits)
        nid = codec.network_id(g)
        state.networks.put(nid, g)
        return nid, []
    if kind == "ops":
        return (codec.list_ops().SerializeToString(), codec.supported_dtypes()), []
    raw, places = payload
    network = state.networks.get(network_id)
    if kind == "grad":
        req: Any = service_pb2.GradRequest.FromString(raw)
        forward, sens = req.return_forward, req.grad.sens_param
        key: tuple = (network_id, req.grad.SerializeToString(deterministic=True), forward)
        names: tuple[str, ...] = ("gradients", "forward")
        resp: Any = service_pb2.GradResponse()
    elif kind == "run":
        req = service_pb2.RunRequest.FromString(raw)
        forward, sens, key, names, resp = False, False, (network_id, None, False), ("outputs",), service_pb2.RunResponse()
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    view = _with_blobs(req, places, blobs)
    plan = state.programs.get(key)
    taken = plan.take(view) if plan is not None else None
    if taken is None:
        if kind == "grad":
            call = codec.decode_grad_call(network, view, state.limits)
        else:
            call = codec.decode_run_call(network, view, state.limits)
        if plan is None:
            plan = _plan(network, call, sens, _with_forward(network, call.graph) if forward else call.graph, names, forward)
            state.programs.put(key, plan)
        taken = call.args, call.params
    check_result_size(plan, type(resp).__name__, state.max_message_bytes)
    args, params = taken
    result = plan.program(*args, params=params)
    trees = list(result) if forward else [result]
    return _encode(trees, names, resp)


def _with_forward(network: Graph, gradient: Graph) -> Graph:
    """One graph returning ``(gradients, forward outputs)``; compiling it merges the shared forward part."""
    b = GraphBuilder(gradient.name, gradient.library)
    args = [b.input(v.name, v.dtype, v.shape) for v in gradient.inputs]
    for p in gradient.params:
        b.param(p.name, p.data, p.requires_grad)
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
