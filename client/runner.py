"""Top-level calls: trace once per input signature and network state, cache the graph while its guards hold, and
run it on the current backend."""
from __future__ import annotations

import dataclasses
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from gradserve.engine import Graph

from . import epoch
from .backend import Backend
from .backends import get_backend
from .guards import GuardCheck
from .parameter import Parameter
from .state import State, StateWatch
from .tensor import Tensor
from .tracing import TENSOR, NeedsValues, Traced, TraceSession, check_inputs, current_frame, graph_name, rebuild, trace

MAX_PATHS = 16
"""Traced graphs kept per input signature (paths through Python control flow, states of attributes); the least
recently used one is dropped beyond it."""


@dataclass
class CacheEntry:
    """One traced graph, the parameter and attribute state it was traced with, the values its Python control flow
    read, nested traces' included (checked before reuse; ``None`` when it read none), and its id on each backend it
    was sent to. ``whole``: every graph input is a whole Tensor argument (none sits in a tuple, list or dict), so
    the inputs are picked without flattening."""

    traced: Traced
    param_state: tuple[Any, ...]
    state: State = field(default_factory=State)
    guards: GuardCheck | None = None
    network_ids: dict[Any, tuple[Backend, str]] = field(default_factory=dict)
    checked: int = -1
    """The epoch at which ``param_state`` last held: it cannot change before the epoch moves (client/epoch.py)."""

    def __post_init__(self) -> None:
        skeletons, positions = self.traced.arg_skeletons, self.traced.tensor_positions
        self.whole = all(skeletons[i] == TENSOR for i in positions) if skeletons else not positions

    def holds(self, args: Sequence[Any], state: State) -> bool:
        """True when this graph is what tracing ``args`` now would record."""
        if not self.state.same(state):
            return False
        if self.checked != epoch.value:
            if _param_state(self.traced.params) != self.param_state:
                return False
            self.checked = epoch.value
        return self.guards is None or self.guards.holds(self.inputs(args), self.param_values())

    def network_id(self, backend: Backend) -> str:
        """The graph's id on ``backend``, registering it on first use."""
        hit = self.network_ids.get(id(backend))
        if hit is None:
            hit = (backend, backend.register(self.traced.graph))
            self.network_ids[id(backend)] = hit
        return hit[1]

    def inputs(self, args: Sequence[Any]) -> list[np.ndarray]:
        """The arrays of the Tensor arguments, in graph-input order."""
        if self.whole:
            arrays = [args[i]._array for i in self.traced.tensor_positions]
            for a in arrays:
                if a is None:
                    break
            else:
                return arrays
        leaves = [args[i] for i in self.traced.tensor_positions] if self.whole else self.traced.input_leaves(args)
        return [t._array if t._array is not None else t._concrete("a network input") for t in leaves]

    def param_values(self) -> dict[str, np.ndarray]:
        """Current values of every parameter the graph reads, by name."""
        return {p.name: p.array() for p in self.traced.params}


class Declared:
    """The Parameters a network declares with one set of gradient weights, as of one epoch: its own (a Cell's,
    walked once) and the weights, with their part of the cache key."""

    def __init__(self, fn: Any, weights: Sequence[Parameter]) -> None:
        self.epoch = epoch.value
        own = list(fn.get_parameters()) if hasattr(fn, "get_parameters") else []
        known = {id(p) for p in own}
        self.params = own + [w for w in weights if id(w) not in known]
        self.param_state = _param_state(self.params)


class TraceCache:
    """The traced graphs of one network (Cell or function), keyed by input signature, most recently used first."""

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], list[CacheEntry]] = {}
        self.traces = 0
        self.declared: dict[tuple[int, ...], Declared] = {}
        self.state: StateWatch | None = None
        self.last: tuple[tuple[Any, ...], tuple[int, ...], int, CacheEntry] | None = None
        """The last entry found, with the signature, weight ids and epoch it was found for: a steady call whose three
        are the same looks at that entry first, without the key's hashing or the bucket's search."""


_CACHES: weakref.WeakKeyDictionary[Any, TraceCache] = weakref.WeakKeyDictionary()


def trace_count(fn: Any) -> int:
    """How many times ``fn`` (a Cell or function) has been traced by top-level calls."""
    cache = _CACHES.get(fn)
    return cache.traces if cache else 0


def _signature(args: Sequence[Any]) -> tuple[Any, ...]:
    """The cache key of the inputs: each Tensor's dtype and shape, the nesting of tuple, list and dict inputs, and
    the constants (scalars, strings, NumPy arrays by value) they hold."""
    return tuple(_arg_key(a) for a in args)


def _plain_signature(args: Sequence[Any]) -> tuple[Any, ...] | None:
    """``_signature`` of arguments that are all concrete Tensors (the common call, checked without more ado), else
    None."""
    key = []
    for a in args:
        arr = a._array if isinstance(a, Tensor) else None
        if arr is None:
            return None
        key.append(("T", arr.dtype, arr.shape))
    return tuple(key)


def _arg_key(a: Any) -> Any:
    if isinstance(a, Tensor):
        return ("T", a._array_dtype(), a.shape)
    if isinstance(a, (tuple, list)):
        return (type(a).__name__, tuple(_arg_key(x) for x in a))
    if isinstance(a, dict):
        return ("dict", tuple((k, _arg_key(x)) for k, x in a.items()))
    if isinstance(a, np.ndarray):
        return ("A", a.dtype.str, a.shape, a.tobytes())
    return ("S", type(a).__name__, _scalar_key(a))


def _scalar_key(a: Any) -> Any:
    """A Python scalar input as a cache key: floats by their bits, so 0.0 and -0.0 (and NaNs) get their own traces."""
    return np.asarray(a).tobytes() if isinstance(a, (float, np.floating)) else a


def _param_state(params: Sequence[Parameter]) -> tuple[Any, ...]:
    return tuple((p.name, id(p), p.shape, p._array_dtype().str, p.requires_grad) for p in params)


def traced_for(fn: Any, args: Sequence[Any], weights: Sequence[Parameter] = ()) -> CacheEntry:
    """The cached trace of ``fn`` for these inputs, tracing anew when the signature, the parameters, the network's
    non-Parameter state (Tensor and number attributes, closure and global Tensors) or a guarded value changed.

    A Cell's own parameters are always declared, so its forward calls and its gradients over them share a trace.
    While the epoch (client/epoch.py) stands still, the parameters and state found at the last call are reused:
    a steady call reads only what can change without moving it (closures, globals, list attributes)."""
    now = epoch.value
    signature = _plain_signature(args)
    if signature is None:
        check_inputs(fn, args)
        signature = _signature(args)
    cache = _CACHES.get(fn)
    if cache is None:
        cache = _CACHES.setdefault(fn, TraceCache())
    ids = tuple(map(id, weights)) if weights else ()
    last = cache.last
    if last is not None and last[2] == now and last[0] == signature and last[1] == ids:
        assert cache.state is not None, "a cache with a last entry watches its network's state"
        entry = last[3]
        state = cache.state.current(fn)
        if entry.state is state and entry.checked == now and entry.guards is None or entry.holds(args, state):
            return entry
    declared = cache.declared.get(ids)
    if declared is None or declared.epoch != now:
        if len(cache.declared) >= MAX_PATHS:
            cache.declared.clear()
        declared = cache.declared[ids] = Declared(fn, weights)
    if cache.state is None:
        cache.state = StateWatch(fn)
    state = cache.state.current(fn)
    key = (signature, declared.param_state)
    bucket = cache.entries.setdefault(key, [])
    for i, entry in enumerate(bucket):
        if entry.holds(args, state):
            if i:
                bucket.insert(0, bucket.pop(i))
            cache.last = (signature, ids, now, entry)
            return entry
    entry = _trace_entry(fn, args, declared.params, state)
    cache.traces += 1
    bucket.insert(0, entry)
    del bucket[MAX_PATHS:]
    cache.last = (signature, ids, now, entry)
    return entry


def _trace_entry(fn: Any, args: Sequence[Any], declared: Sequence[Parameter], state: State) -> CacheEntry:
    """Trace ``fn`` without values; if its Python code reads one, trace it again computing values, with guards."""
    try:
        traced = _held_writes(trace(fn, args, TraceSession(), graph_name(fn), declared), state)
        return CacheEntry(traced, _param_state(traced.params), state)
    except NeedsValues:
        pass
    session = TraceSession(concrete=True)
    traced = _held_writes(trace(fn, args, session, graph_name(fn), declared), state)
    guards = GuardCheck(traced.graph, session.guards) if session.guards else None
    return CacheEntry(traced, _param_state(traced.params), state, guards)


def _held_writes(traced: Traced, state: State) -> Traced:
    """``traced`` keeping the writes into Parameters and into the Tensors the network's state holds (watched, so the
    next call sees their new values); a Tensor the construct made itself and changed in place is gone after it."""
    held = {id(t) for t in state.tensors}
    kept = tuple((t, v) for t, v in traced.writes if isinstance(t, Parameter) or id(t) in held)
    return traced if len(kept) == len(traced.writes) else dataclasses.replace(traced, writes=kept)


def wrapped_leaves(tree: Any) -> list[Tensor]:
    """The leaves of a backend's output tree, left to right, each array wrapped as a Tensor (in one pass: a flat
    tuple of arrays, the usual result, is one loop)."""
    if not isinstance(tree, (tuple, list)):
        return [Tensor._wrap(np.asarray(tree))]
    wrap = Tensor._wrap
    out = []
    for t in tree:
        if type(t) is np.ndarray:
            out.append(wrap(t))
        else:
            out += wrapped_leaves(t)
    return out


def run_network(fn: Any, args: Sequence[Any]) -> Any:
    """Call ``fn`` at top level: trace (once per signature) and run the graph on the current backend."""
    entry = traced_for(fn, args)
    backend = get_backend()
    if entry.traced.writes:
        note_forward(fn, args, entry.traced.writes)
        return run_writing(entry, backend, args)
    out = backend.run(entry.network_id(backend), entry.inputs(args), entry.param_values())
    return rebuild(entry.traced.skeleton, iter(wrapped_leaves(out)))


# ---- write-back: a Cell's assign-like side outputs (BatchNorm's moving statistics) ----


def assign_after_call(param: Parameter, value: Tensor) -> None:
    """Write ``value`` into ``param`` once the top-level call being traced has run (MindSpore's Assign in a
    construct). The value travels as an extra output of the call (a forward call, or a top-level gradient or
    transform call, whose program computes it with the forward pass, once per call), never as an output that
    gradients see; writes recorded in a trace nested inside a construct (a GradOperation or transform there) are
    dropped, those under a transform of a transform (``hessian``) are passed on (``grad._nested_writes``)."""
    frame = current_frame()
    if frame is None:
        _before_write(param)
        param.set_data(value.asnumpy())
        return
    if value.shape != param.shape or value._array_dtype() != param._array_dtype():
        raise ValueError(
            f"assign to Parameter {param.name!r}: value has shape {value.shape} and dtype {value.dtype}, "
            f"the parameter has shape {param.shape} and dtype {param.dtype}"
        )
    frame.writes.append((param, frame.value_of(value)))


def assign(variable: Parameter, value: Tensor) -> Tensor:
    """MindSpore's ``ops.assign``: ``value`` (same shape; cast to the Parameter's dtype when that loses nothing) becomes
    the Parameter's value, at once outside a trace, after the top-level call inside a construct (``assign_after_call``:
    reads of the Parameter later in the same construct still see its old value, use the returned one); returns the new
    value."""
    if not isinstance(variable, Parameter):
        raise TypeError(f"ops.assign: variable must be a Parameter, got {type(variable).__name__}")
    if not isinstance(value, Tensor):
        raise TypeError(f"ops.assign: value must be a Tensor, got {type(value).__name__}")
    want, got = variable._array_dtype(), value._array_dtype()
    if got != want:
        if np.promote_types(got, want) != want:
            raise TypeError(f"ops.assign: value of dtype {value.dtype} cannot be assigned to Parameter {variable.name!r} "
                            f"of dtype {variable.dtype} without losing precision (a Parameter keeps its dtype)")
        value = value.astype(variable.dtype)
    if value.shape != variable.shape:
        raise ValueError(f"ops.assign: value has shape {value.shape}, Parameter {variable.name!r} has shape {variable.shape}")
    assign_after_call(variable, value)
    return value


_DRAW_COUNTERS: dict[int, Parameter] = {}
"""The step counters of the random functions' call sites (``functional._site``, one per site), by id (each kept
alive here)."""


def draw_counter(name: str, start: int) -> Parameter:
    """A new step counter for a random function's call site: an int64 Parameter at ``start`` that no Cell registers.
    Unlike other writes, its write passes out of a transform nested in a construct (``grad._nested_writes``), so each
    top-level call moves it on even when the draw runs only inside a gradient there."""
    counter = Parameter(np.array(start, np.int64), name=name, requires_grad=False)
    _DRAW_COUNTERS[id(counter)] = counter
    return counter


def is_draw_counter(param: Tensor) -> bool:
    """True for a random function's step counter (``draw_counter``)."""
    return _DRAW_COUNTERS.get(id(param)) is param


def pending_value(param: Parameter) -> Tensor:
    """``param`` as the code traced so far would leave it: its last value written in this trace, else itself (so
    a layer called twice in one construct updates its statistics twice, as sequential Assigns do)."""
    frame = current_frame()
    if frame is None:
        return param
    hits = [v for p, v in frame.writes if p is param]
    return Tensor._symbolic(hits[-1], frame) if hits else param


def run_writing(entry: CacheEntry, backend: Backend, args: Sequence[Any]) -> Any:
    """Run a graph that writes Parameters: a copy of it with the written values as extra outputs (registered once
    per backend), whose extra outputs are set into their Parameters; returns the network's own outputs."""
    out = backend.run(writing_network_id(entry, backend), entry.inputs(args), entry.param_values())
    return rebuild(entry.traced.skeleton, iter(apply_writes(entry.traced, out)))


def writing_network_id(entry: CacheEntry, backend: Backend) -> str:
    """The id on ``backend`` of the copy of ``entry``'s graph whose outputs are ``(outputs, written values)``,
    registered on first use."""
    key = ("writes", id(backend))
    hit = entry.network_ids.get(key)
    if hit is None:
        g, traced = entry.traced.graph, entry.traced
        outputs = (g.outputs, tuple(v for _, v in traced.writes))
        hit = (backend, backend.register(Graph(g.inputs, g.params, g.nodes, outputs, g.library, g.name)))
        entry.network_ids[key] = hit
    return hit[1]


def apply_writes(traced: Traced, out: Any) -> list[Tensor]:
    """Set the written values (the last outputs of a writing graph's run) into their Parameters; returns the flat
    outputs before them (the network's own)."""
    flat = wrapped_leaves(out)
    n = len(flat) - len(traced.writes)
    for (target, _), t in zip(traced.writes, flat[n:]):
        _before_write(target)
        if isinstance(target, Parameter):
            target.set_data(t.asnumpy())
        else:
            _write_tensor(target, t)
    return flat[:n]


def _write_tensor(target: Tensor, new: Tensor) -> None:
    """A Tensor the network holds takes the value its code left it holding (an in-place change in the construct);
    its ``version`` moves only when the value changed, so the next call traces again with the new value only then."""
    old = target._array
    arr = new._concrete("a written value").astype(target._array_dtype(), copy=False)
    if old is None or old.shape != arr.shape or old.tobytes() != arr.tobytes():
        target._become(Tensor._wrap(arr))


_LOGS = threading.local()


class BeforeWrites:
    """What the Parameters and Tensors written back inside a ``values_before_writes`` block held before their first
    write there: ``params`` by name (values to pass for them), ``tensors`` with their versions."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.tensors: dict[int, tuple[Tensor, np.ndarray, int]] = {}

    def note(self, target: Tensor) -> None:
        """Keep ``target``'s value, unless one from before an earlier write is kept."""
        if isinstance(target, Parameter):
            self.params.setdefault(target.name, target.array())
        elif id(target) not in self.tensors and target._array is not None:
            self.tensors[id(target)] = (target, target._array, target._version)

    @contextmanager
    def tensors_as_read(self) -> Iterator[None]:
        """Inside the block, the written Tensors hold their values from before the writes again (a trace made then
        bakes in what the forward read), and their current values after it."""
        now = [(t, t._array, t._version) for t, _, _ in self.tensors.values()]
        for t, before, version in self.tensors.values():
            t._restore(before, version)
        try:
            yield
        finally:
            for t, current, version in now:
                t._restore(current, version)


@contextmanager
def values_before_writes() -> Iterator[BeforeWrites]:
    """Collect what each Parameter and Tensor held before its first write-back inside the block: ``vjp`` keeps it so
    that its ``vjp_fn`` reads what its forward read (a Dropout's step, so the same mask; a buffer the construct
    changed in place)."""
    log = BeforeWrites()
    stack = _LOGS.__dict__.setdefault("stack", [])
    stack.append(log)
    try:
        yield log
    finally:
        stack.pop()


def in_vjp_forward() -> bool:
    """Whether this thread is inside a ``values_before_writes`` block: ``vjp``'s forward call."""
    return bool(getattr(_LOGS, "stack", ()))


def _before_write(target: Tensor) -> None:
    for log in getattr(_LOGS, "stack", ()):
        log.note(target)


def note_forward(fn: Any, args: Sequence[Any], writes: Sequence[tuple[Tensor, Any]] = ()) -> None:
    """Remember a top-level forward call of a Cell with ``set_grad()`` on: MindSpore's PyNative records it, and the
    gradient call that follows on the same Cell and the same input objects reuses that forward instead of running
    (and writing) again (``forward_recorded``); what the forward read of the Parameters and Tensors it writes is kept
    for that gradient (a Dropout's step counter: the gradient's mask is the forward's; a buffer its code changes)."""
    if getattr(fn, "requires_grad", False) is True and hasattr(fn, "construct"):
        before = BeforeWrites()
        for target, _ in writes:
            before.note(target)
        _RECORDED[fn] = (tuple(args), before)


def forward_recorded(fn: Any, args: Sequence[Any]) -> BeforeWrites | None:
    """When the last top-level forward call of ``fn`` was recorded by ``note_forward`` with these very input objects
    (once): what that forward read of the Parameters and Tensors it wrote, which the gradient call then reads too,
    writing nothing, as MindSpore's ``check_run`` reuses that forward; else None."""
    seen = _RECORDED.pop(fn, None)
    if seen is None or len(seen[0]) != len(args) or not all(a is b for a, b in zip(seen[0], args)):
        return None
    return seen[1]


_RECORDED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], BeforeWrites]] = weakref.WeakKeyDictionary()
