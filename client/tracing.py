"""Tracing: running a construct on symbolic Tensors to record an engine graph; when its Python code reads a Tensor's
value, tracing again with every value computed as it is recorded, each value read kept as a guard."""
from __future__ import annotations

import inspect
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gradserve.engine import Graph, GraphBuilder, GraphError, Value

from .errors import TracingError, user_location
from .guards import Guard, ValueBuilder
from .parameter import Parameter
from .tensor import Tensor

_LOCAL = threading.local()

STATIC_INPUTS = (bool, int, float, str, type(None))
"""Non-Tensor inputs a network may take; they are baked into the trace, not graph inputs, and get no gradient."""


def current_frame() -> TraceFrame | None:
    """The innermost trace in progress on this thread, if any."""
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


class NeedsValues(TracingError):
    """Python code read a Tensor's value in a trace made without values: the top-level trace starts again with them."""


class TraceSession:
    """State shared by one top-level trace and the nested traces of the GradOperations inside it. With ``concrete``,
    traces compute every value as they record it, and each value Python code reads becomes a guard."""

    def __init__(self, concrete: bool = False) -> None:
        self.library: dict[str, Graph] = {}
        self.params: dict[str, Parameter] = {}
        self._ids = itertools.count()
        self.concrete = concrete
        self.guards: list[Guard] = []

    def fresh_name(self, base: str) -> str:
        """A library graph name not used before in this session."""
        return f"{base}_{next(self._ids)}"


class TraceFrame:
    """One graph being recorded: its builder and the graph values of the concrete Tensors it has used."""

    def __init__(self, session: TraceSession, name: str, concrete: bool) -> None:
        self.session = session
        self.concrete = concrete
        self.builder: GraphBuilder = ValueBuilder(name, session.library) if concrete else GraphBuilder(name, session.library)
        self._consts: dict[int, tuple[Tensor, Value]] = {}
        self.guards: list[Guard] = []

    def read(self, t: Tensor, what: str) -> np.ndarray:
        """The value of ``t`` (traced in this frame) for Python code, recorded as a guard of the trace."""
        if not self.concrete:
            if self.session.concrete:
                raise TracingError(
                    f"Python code that depends on a Tensor's value ({what}) cannot run in {self.builder.name}, which is "
                    f"traced without values (a bprop or backward is traced once for every dout) -- at {user_location()}"
                )
            raise NeedsValues(what)
        arr = self.builder.arrays[id(t._value)]  # type: ignore[attr-defined]
        guard = Guard(t._value, arr)  # type: ignore[arg-type]
        self.guards.append(guard)
        self.session.guards.append(guard)
        return arr

    def value_of(self, t: Tensor) -> Value:
        """The graph value for ``t``: its symbolic value, a parameter (by name), or a constant."""
        if t.is_traced:
            if t._frame is not self:
                raise TracingError(
                    f"a Tensor traced in another function is used here (a construct may use only its own inputs, "
                    f"parameters and constants; pass the Tensor as an argument) -- at {user_location()}"
                )
            return t._value  # type: ignore[return-value]
        if isinstance(t, Parameter):
            return self._param(t)
        hit = self._consts.get(id(t))
        if hit is None:
            hit = (t, self.builder.const(t._array))
            self._consts[id(t)] = hit
        return hit[1]

    def _param(self, p: Parameter) -> Value:
        known = self.session.params.setdefault(p.name, p)
        if known is not p:
            raise TracingError(f"two different Parameters are both named {p.name!r}; parameter names must be unique in a network")
        if self.builder.has_param(p.name):
            return self.builder.get_param(p.name)
        try:
            return self.builder.param(p.name, p.array(), p.requires_grad)
        except GraphError:
            raise TracingError(f"Parameter {p.name!r} has the same name as an input of {self.builder.name}; rename one") from None


@dataclass
class Traced:
    """A traced network: its graph, which arguments became graph inputs, the Parameters it reads, and the values
    of its own graph that Python code read (guards)."""

    graph: Graph
    tensor_positions: tuple[int, ...]
    params: tuple[Parameter, ...]
    guards: tuple[Guard, ...] = ()


def label(fn: Any) -> str:
    """How messages name a network: ``Net.construct`` or a function's qualified name."""
    if hasattr(fn, "construct"):
        return f"{type(fn).__name__}.construct"
    return getattr(fn, "__qualname__", type(fn).__name__)


def graph_name(fn: Any) -> str:
    """The name a network's traced graph gets: the Cell's class name or the function's name."""
    return type(fn).__name__ if hasattr(fn, "construct") else getattr(fn, "__name__", type(fn).__name__)


def input_names(fn: Any, n: int) -> list[str]:
    """Names for ``n`` positional inputs of ``fn``; a TypeError naming the network if it takes another number."""
    custom = getattr(fn, "input_names", None)
    if custom is not None:
        return custom(n)
    target: Callable[..., Any] = getattr(fn, "construct", fn)
    sig = inspect.signature(target)
    try:
        sig.bind(*range(n))
    except TypeError:
        params = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise TypeError(f"{label(fn)} takes {len(params)} inputs ({', '.join(params)}), got {n}") from None
    names: list[str] = []
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}_{k}" for k in range(n - len(names))]
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(names) < n:
            names.append(p.name)
    return names


def check_inputs(fn: Any, args: Sequence[Any]) -> None:
    """A TypeError naming the first argument that is neither a Tensor nor a Python scalar/None."""
    for i, a in enumerate(args):
        if not isinstance(a, (Tensor, *STATIC_INPUTS)):
            raise TypeError(
                f"{label(fn)}: input {i} is a {type(a).__module__}.{type(a).__qualname__}; pass a Tensor "
                f"(e.g. Tensor(value)), or a Python number or None"
            )


def known_value(t: Tensor) -> np.ndarray | None:
    """The value of ``t`` if it is known: its array, or its traced value in a frame that computes values."""
    if not t.is_traced:
        return t._array
    frame = t._frame
    return frame.builder.arrays.get(id(t._value)) if frame is not None and frame.concrete else None  # type: ignore[attr-defined]


def active(frame: TraceFrame) -> bool:
    """True while ``frame`` is being recorded on this thread."""
    return any(f is frame for f in getattr(_LOCAL, "stack", ()))


def trace(
    fn: Any, args: Sequence[Any], session: TraceSession, name: str, declare: Sequence[Parameter] = (),
    concrete: bool | None = None,
) -> Traced:
    """Record ``fn(*args)`` as a graph: Tensor arguments become inputs; ``declare`` parameters are in it even if unused.

    The graph computes its values as it is recorded when the session does and every argument's value is known
    (``concrete=False`` forbids it: bprops are traced once for every dout)."""
    check_inputs(fn, args)
    names = input_names(fn, len(args))
    values = [known_value(a) if isinstance(a, Tensor) else None for a in args]
    if concrete is None:
        concrete = session.concrete and all(v is not None for v, a in zip(values, args) if isinstance(a, Tensor))
    frame = TraceFrame(session, name, concrete)
    call_args = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            v = frame.builder.input(names[i], a._array_dtype(), a.shape)
            if concrete:
                frame.builder.arrays[id(v)] = values[i]  # type: ignore[attr-defined]
            a = Tensor._symbolic(v, frame)
        call_args.append(a)
    stack = _LOCAL.__dict__.setdefault("stack", [])
    stack.append(frame)
    try:
        out = fn(*call_args)
        for p in declare:
            frame.value_of(p)
        outputs = _output_tree(fn, frame, out)
    finally:
        stack.pop()
    graph = frame.builder.build(outputs)
    positions = tuple(i for i, a in enumerate(args) if isinstance(a, Tensor))
    return Traced(graph, positions, tuple(session.params[p.name] for p in graph.params), tuple(frame.guards))


_plain_concrete = Tensor._concrete


def _concrete(self: Tensor, what: str) -> np.ndarray:
    """A Tensor's value for Python code: inside a trace, its traced value, recorded as a guard."""
    frame = self._frame
    if self._array is None and frame is not None and active(frame):
        return frame.read(self, what)
    return _plain_concrete(self, what)


# Python code that reads a traced Tensor's value (``if``, ``int()``, ``range()``, ``asnumpy()``) reaches Tensor._concrete.
Tensor._concrete = _concrete  # type: ignore[method-assign]


def _output_tree(fn: Any, frame: TraceFrame, out: Any) -> Any:
    if isinstance(out, Tensor):
        return frame.value_of(out)
    if isinstance(out, (tuple, list)):
        return tuple(_output_tree(fn, frame, o) for o in out)
    raise TypeError(f"{label(fn)} returned a {type(out).__name__}; a network must return Tensors or (nested) tuples of Tensors")
