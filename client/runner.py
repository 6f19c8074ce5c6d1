"""Top-level calls: trace once per input signature, cache the graph, and run it on the current backend."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .backend import Backend
from .context import get_backend
from .parameter import Parameter
from .tensor import Tensor
from .tracing import Traced, TraceSession, check_inputs, graph_name, trace


@dataclass
class CacheEntry:
    """One traced graph, the parameter state it was traced with, and its id on each backend it was sent to."""

    traced: Traced
    param_state: tuple[Any, ...]
    network_ids: dict[int, tuple[Backend, str]] = field(default_factory=dict)

    def network_id(self, backend: Backend) -> str:
        """The graph's id on ``backend``, registering it on first use."""
        hit = self.network_ids.get(id(backend))
        if hit is None:
            hit = (backend, backend.register(self.traced.graph))
            self.network_ids[id(backend)] = hit
        return hit[1]

    def inputs(self, args: Sequence[Any]) -> list[np.ndarray]:
        """The arrays of the Tensor arguments, in graph-input order."""
        return [args[i]._concrete("a network input") for i in self.traced.tensor_positions]

    def param_values(self) -> dict[str, np.ndarray]:
        """Current values of every parameter the graph reads, by name."""
        return {p.name: p.array() for p in self.traced.params}


class TraceCache:
    """The traced graphs of one network (Cell or function), keyed by input signature."""

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], CacheEntry] = {}
        self.traces = 0


_CACHES: "weakref.WeakKeyDictionary[Any, TraceCache]" = weakref.WeakKeyDictionary()


def trace_count(fn: Any) -> int:
    """How many times ``fn`` (a Cell or function) has been traced by top-level calls."""
    cache = _CACHES.get(fn)
    return cache.traces if cache else 0


def _signature(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        ("T", a._array_dtype().str, a.shape) if isinstance(a, Tensor) else ("S", type(a).__name__, _scalar_key(a))
        for a in args
    )


def _scalar_key(a: Any) -> Any:
    """A Python scalar input as a cache key: floats by their bits, so 0.0 and -0.0 (and NaNs) get their own traces."""
    return np.asarray(a).tobytes() if isinstance(a, (float, np.floating)) else a


def _param_state(params: Sequence[Parameter]) -> tuple[Any, ...]:
    return tuple((p.name, id(p), p.shape, p._array_dtype().str, p.requires_grad) for p in params)


def traced_for(fn: Any, args: Sequence[Any], weights: Sequence[Parameter] = ()) -> CacheEntry:
    """The cached trace of ``fn`` for these inputs, tracing anew when the signature or parameters changed.

    A Cell's own parameters are always declared, so its forward calls and its gradients over them share a trace."""
    check_inputs(fn, args)
    own = list(fn.get_parameters()) if hasattr(fn, "get_parameters") else []
    known = {id(p) for p in own}
    declared = own + [w for w in weights if id(w) not in known]
    key = (_signature(args), _param_state(declared))
    cache = _CACHES.setdefault(fn, TraceCache())
    entry = cache.entries.get(key)
    if entry is None or _param_state(entry.traced.params) != entry.param_state:
        traced = trace(fn, args, TraceSession(), graph_name(fn), declared)
        cache.traces += 1
        entry = CacheEntry(traced, _param_state(traced.params))
        cache.entries[key] = entry
    return entry


def to_tensors(tree: Any) -> Any:
    """A backend's output tree with every array wrapped as a Tensor."""
    if isinstance(tree, (tuple, list)):
        return tuple(to_tensors(t) for t in tree)
    return Tensor._wrap(np.asarray(tree))


def run_network(fn: Any, args: Sequence[Any]) -> Any:
    """Call ``fn`` at top level: trace (once per signature) and run the graph on the current backend."""
    entry = traced_for(fn, args)
    backend = get_backend()
    out = backend.run(entry.network_id(backend), entry.inputs(args), entry.param_values())
    return to_tensors(out)
