"""Tracing: running a construct on symbolic Tensors to record an engine graph; when its Python code reads a Tensor's
value, tracing again with every value computed as it is recorded, each value read kept as a guard."""
from __future__ import annotations

import inspect
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gradserve.engine import Graph, GraphBuilder, GraphError, Value

from .errors import TracingError, user_location
from .guards import Guard, Origin, ValueBuilder
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

    def __init__(self, session: TraceSession, name: str, concrete: bool, origin: Origin | None = None, fn: Any = None) -> None:
        self.session = session
        self.fn = fn
        """The function (or Cell) this frame traces."""
        self.concrete = concrete
        self.builder: GraphBuilder = ValueBuilder(name, session.library) if concrete else GraphBuilder(name, session.library)
        self._consts: dict[int, tuple[Tensor, Value]] = {}
        self.origin = origin or Origin()
        self.writes: list[tuple[Tensor, Value]] = []
        self._rebound: dict[int, tuple[Tensor, np.ndarray | None, int]] = {}

    def rebind(self, t: Tensor, new: Tensor) -> None:
        """An in-place change (item assignment) of ``t`` in this trace: ``t`` stands for ``new`` from now on. A Tensor
        with a value (a Cell's attribute, a closure's) holds it again when the trace ends, and its last value in the
        trace becomes a write (``finish_writes``), set into it after a top-level call runs, as MindSpore's in-place
        write leaves the attribute holding the new value for later calls."""
        if not t.is_traced and id(t) not in self._rebound:
            self._rebound[id(t)] = (t, t._array, t._version)
        t._become(new)

    def finish_writes(self) -> None:
        """Record the value each Tensor changed in place by this trace holds at its end as a write of the trace."""
        for t, _, _ in self._rebound.values():
            if t.is_traced and t._frame is self:
                self.writes.append((t, t._value))  # type: ignore[arg-type]

    def restore(self) -> None:
        """Give every Tensor this trace changed in place its value from before the trace."""
        for t, array, version in self._rebound.values():
            t._restore(array, version)

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
        self.session.guards.append(Guard(t._value, arr, self.origin))  # type: ignore[arg-type]
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


TENSOR = ("tensor",)
"""The skeleton of a Tensor leaf; a container is ``(type, keys, children)`` and any other leaf ``("const", value)``."""


@dataclass
class Traced:
    """A traced network: its graph, which arguments hold graph inputs (``tensor_positions``: a Tensor, or a tuple,
    list or dict whose Tensors are flattened into consecutive inputs), the Parameters it reads, and the structure of
    its arguments and of what it returned (``skeleton``: containers, dict keys and non-Tensor leaves; the graph's
    outputs are its Tensor leaves, nested as tuples). The values Python code read are the session's guards."""

    graph: Graph
    tensor_positions: tuple[int, ...]
    params: tuple[Parameter, ...]
    arg_skeletons: tuple[Any, ...] = ()
    skeleton: Any = TENSOR
    writes: tuple[tuple[Tensor, Value], ...] = ()
    """(Parameter or Tensor, value of the graph) pairs a top-level call writes into them after it ran (runner.py): a
    Parameter's Assign, or the last value of a Tensor the network holds that its code changed in place."""

    def input_leaves(self, args: Sequence[Any]) -> list[Tensor]:
        """The Tensors of ``args`` in graph-input order."""
        return [leaf for i in self.tensor_positions for leaf in tensor_leaves(args[i])]

    def group_inputs(self, leaves: Sequence[Any], positions: Sequence[int] | None = None) -> list[Any]:
        """Per-input values (gradients) from one value per graph input of the arguments at ``positions`` (default:
        ``tensor_positions``), in order: each gets its argument's structure back (a tuple, list or dict for a tuple,
        list or dict), without the constants it held."""
        it = iter(leaves)
        chosen = self.tensor_positions if positions is None else positions
        return [rebuild(grad_skeleton(self.arg_skeletons[p]), it) for p in chosen]

    def graph_positions(self, positions: Sequence[int]) -> list[int]:
        """The graph inputs of the arguments at ``positions`` (each one in ``tensor_positions``)."""
        starts = list(itertools.accumulate((count_leaves(self.arg_skeletons[i]) for i in self.tensor_positions), initial=0))
        out: list[int] = []
        for p in positions:
            k = self.tensor_positions.index(p)
            out += range(starts[k], starts[k + 1])
        return out


def skeleton_of(tree: Any) -> Any:
    """The structure of a value: Tensor leaves, tuples, lists and dicts (by key, in order), other leaves as constants."""
    if isinstance(tree, Tensor):
        return TENSOR
    if isinstance(tree, dict):
        return (dict, tuple(tree), tuple(skeleton_of(v) for v in tree.values()))
    if isinstance(tree, (tuple, list)):
        return (type(tree) if type(tree) in (tuple, list) else tuple, None, tuple(skeleton_of(v) for v in tree))
    return ("const", tree)


def tensor_leaves(tree: Any) -> list[Any]:
    """The Tensor leaves of a value, left to right (dicts in key order)."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in tensor_leaves(t)]
    return []


def count_leaves(skeleton: Any) -> int:
    """How many Tensor leaves a skeleton has."""
    if skeleton == TENSOR:
        return 1
    if skeleton[0] == "const":
        return 0
    return sum(count_leaves(c) for c in skeleton[2])


def rebuild(skeleton: Any, leaves: Iterator[Any]) -> Any:
    """A value of ``skeleton``'s structure, its Tensor leaves taken in order from ``leaves``."""
    if skeleton == TENSOR:
        return next(leaves)
    if skeleton[0] == "const":
        return skeleton[1]
    kind, keys, children = skeleton
    items = [rebuild(c, leaves) for c in children]
    return dict(zip(keys, items)) if kind is dict else kind(items)


def graph_tree(skeleton: Any, leaves: Iterator[Any]) -> Any:
    """The graph's output tree for a skeleton: a Tensor leaf alone, else nested tuples of the parts holding Tensors."""
    if skeleton == TENSOR:
        return next(leaves)
    return tuple(graph_tree(c, leaves) for c in skeleton[2] if count_leaves(c))


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


CONSTANTS = (*STATIC_INPUTS, np.ndarray, np.generic)
"""What a tuple, list or dict input may hold besides Tensors (and containers): constants of the trace, no gradient."""


def check_inputs(fn: Any, args: Sequence[Any]) -> None:
    """A TypeError naming the first argument that is neither a Tensor, a Python scalar/None, nor a (nested) tuple,
    list or dict of Tensors and constants (Python numbers, strings, None, NumPy arrays)."""
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            continue
        if isinstance(a, (tuple, list, dict)):
            bad = next((x for x in _container_leaves(a) if not isinstance(x, (Tensor, *CONSTANTS))), None)
            if bad is None:
                continue
            raise TypeError(
                f"{label(fn)}: input {i} is a {type(a).__name__} holding a {type(bad).__module__}.{type(bad).__qualname__}; "
                f"a tuple, list or dict input may hold Tensors, Python numbers, strings, None and NumPy arrays "
                f"(and tuples, lists or dicts of them)"
            )
        if not isinstance(a, STATIC_INPUTS):
            raise TypeError(
                f"{label(fn)}: input {i} is a {type(a).__module__}.{type(a).__qualname__}; pass a Tensor "
                f"(e.g. Tensor(value)), a tuple, list or dict of Tensors, or a Python number or None"
            )


def _container_leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _container_leaves(t)]
    return [tree]


def grad_skeleton(skeleton: Any) -> Any:
    """The structure of an input's gradient: its containers with the constant leaves dropped (they get no gradient,
    as non-Tensor inputs get none at top level)."""
    if skeleton == TENSOR or skeleton[0] == "const":
        return skeleton
    kind, keys, children = skeleton
    kept = [(k, c) for k, c in zip(keys or [None] * len(children), children) if c == TENSOR or c[0] != "const"]
    return (kind, tuple(k for k, _ in kept) if kind is dict else None, tuple(grad_skeleton(c) for _, c in kept))


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
    leaves = [tensor_leaves(a) if isinstance(a, (Tensor, tuple, list, dict)) else [] for a in args]
    values = [[known_value(t) for t in ts] for ts in leaves]
    if concrete is None:
        concrete = session.concrete and all(v is not None for vs in values for v in vs)
    parent = current_frame()
    origin = None
    if concrete and parent is not None and parent.session is session:
        origin = Origin(parent.origin, tuple(parent.value_of(t) for ts in leaves for t in ts))
    frame = TraceFrame(session, name, concrete, origin, fn)
    call_args = []
    for i, a in enumerate(args):
        if leaves[i]:
            symbolic = []
            for k, (t, known) in enumerate(zip(leaves[i], values[i])):
                v = frame.builder.input(names[i] if isinstance(a, Tensor) else f"{names[i]}_{k}", t._array_dtype(), t.shape)
                if concrete:
                    frame.builder.arrays[id(v)] = known  # type: ignore[attr-defined]
                symbolic.append(Tensor._symbolic(v, frame))
            a = rebuild(skeleton_of(a), iter(symbolic))
        call_args.append(a)
    stack = _LOCAL.__dict__.setdefault("stack", [])
    stack.append(frame)
    try:
        out = fn(*call_args)
        for p in declare:
            frame.value_of(p)
        skeleton = _output_skeleton(fn, out)
        outputs = graph_tree(skeleton, iter([frame.value_of(t) for t in tensor_leaves(out)]))
        frame.finish_writes()
    finally:
        stack.pop()
        frame.restore()
    graph = frame.builder.build(outputs)
    frame.origin.graph = graph
    positions = tuple(i for i in range(len(args)) if leaves[i])
    return Traced(
        graph, positions, tuple(session.params[p.name] for p in graph.params),
        tuple(skeleton_of(a) for a in args), skeleton, tuple(frame.writes),
    )


_plain_concrete = Tensor._concrete


def _concrete(self: Tensor, what: str) -> np.ndarray:
    """A Tensor's value for Python code: inside a trace, its traced value, recorded as a guard."""
    frame = self._frame
    if self._array is None and frame is not None and active(frame):
        return frame.read(self, what)
    return _plain_concrete(self, what)


# Python code that reads a traced Tensor's value (``if``, ``int()``, ``range()``, ``asnumpy()``) reaches Tensor._concrete.
Tensor._concrete = _concrete  # type: ignore[method-assign]


def _output_skeleton(fn: Any, out: Any) -> Any:
    """The structure of what a network returned: a Tensor, or Tensors in (nested) tuples, lists and dicts with Python
    numbers, strings and None as constant leaves."""
    skeleton = skeleton_of(out)
    bad = next((c for c in _consts(skeleton) if not isinstance(c, STATIC_INPUTS)), None)
    if bad is not None:
        raise TypeError(
            f"{label(fn)} returned a {type(bad).__module__}.{type(bad).__qualname__} among its outputs; a network "
            f"returns Tensors, and Python numbers, strings or None, in tuples, lists or dicts"
        )
    if skeleton[0] == "const":
        raise TypeError(
            f"{label(fn)} returned a {type(out).__name__}; a network must return a Tensor or a tuple, list or dict "
            f"(of Tensors, Python numbers, strings or None)"
        )
    return skeleton


def _consts(skeleton: Any) -> list[Any]:
    if skeleton == TENSOR:
        return []
    if skeleton[0] == "const":
        return [skeleton[1]]
    return [c for child in skeleton[2] for c in _consts(child)]
