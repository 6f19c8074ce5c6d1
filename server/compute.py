"""What a worker does with a job: decode with the codec, compile (cached), run the engine, encode.

Runs only in worker processes. Large tensors arrive as shared-memory buffers (their messages carry
dtype and shape only) and large results leave as arrays for the caller to ship the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import codec
from ..engine import EngineError, Graph, GraphBuilder, NotDifferentiableError, Program, compile_graph, flatten, unflatten
from ..engine.autodiff import inline
from ..v1 import graph_pb2, service_pb2
from .blobs import BLOB_MIN_BYTES, Where, leaves_of, request_tensors
from .config import Limits
from .errors import Failure


@dataclass
class WorkerState:
    """A worker's limits and caches: decoded networks by id, compiled programs by (id, call shape)."""

    limits: codec.Limits
    networks: Any
    programs: Any


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
        req = service_pb2.GradRequest.FromString(raw)
        call = codec.decode_grad_call(network, _with_blobs(req, places, blobs), state.limits)
        key = (network_id, req.grad.SerializeToString(deterministic=True), req.return_forward)
        prog = _program(state, key, lambda: _with_forward(network, call.graph) if req.return_forward else call.graph)
        result = prog(*call.args, params=call.params)
        trees = list(result) if req.return_forward else [result]
        resp, arrays = _encode(trees, ("gradients", "forward"), service_pb2.GradResponse())
    elif kind == "run":
        req = service_pb2.RunRequest.FromString(raw)
        call = codec.decode_run_call(network, _with_blobs(req, places, blobs), state.limits)
        prog = _program(state, (network_id, None, False), lambda: call.graph)
        resp, arrays = _encode([prog(*call.args, params=call.params)], ("outputs",), service_pb2.RunResponse())
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    return resp, arrays


def _program(state: WorkerState, key: tuple, graph: Any) -> Program:
    prog = state.programs.get(key)
    if prog is None:
        prog = compile_graph(graph())
        state.programs.put(key, prog)
    return prog


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
        if (name, key) in by_place:
            t = SimpleNamespace(dtype=t.dtype, shape=t.shape, data=by_place[(name, key)])
        if name == "parameters":
            fields[name][key] = t
        else:
            fields[name].append(t)
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
    tensors = leaves_of(resp, names)
    for i, a in zip(big, arrays):
        tensors[i].shape[:] = a.shape
    return (resp.SerializeToString(), big), arrays
