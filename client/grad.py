"""ops.GradOperation and MindSpore 2.x's functional transforms (grad, value_and_grad, vjp, jvp, jacfwd, jacrev,
hessian): gradients of a Cell or function in MindSpore's return structures, composable in any order. Each
becomes one transform node over a traced library function; the engine holds every gradient rule."""
from __future__ import annotations

import functools
import types
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from gradserve.engine import Graph, Node, Value, flatten
from gradserve.engine.autodiff import grad_structure, inline

from . import dtype as mstype
from .backend import Backend, Call, GradFlags
from .backends import batch_splitter, get_backend
from .parameter import Parameter
from .runner import (
    BeforeWrites,
    apply_writes,
    forward_recorded,
    is_draw_counter,
    run_network,
    traced_for,
    values_before_writes,
    wrapped_leaves,
    writing_network_id,
)
from .streaming import stream_prepared
from .tensor import Tensor
from .tracing import (
    TENSOR,
    Traced,
    TraceFrame,
    check_inputs,
    current_frame,
    graph_name,
    label,
    skeleton_of,
    tensor_leaves,
    trace,
)
from .tracing import (
    rebuild as rebuild_tree,
)


class GradOperation:
    """``GradOperation(get_all=False, get_by_list=False, sens_param=False)``; ``grad_op(net[, weights])`` is the
    gradient function."""

    def __init__(self, get_all: bool = False, get_by_list: bool = False, sens_param: bool = False) -> None:
        for name, v in (("get_all", get_all), ("get_by_list", get_by_list), ("sens_param", sens_param)):
            if not isinstance(v, bool):
                raise TypeError(f"GradOperation: {name} must be a bool, got {v!r}")
        self.get_all, self.get_by_list, self.sens_param = get_all, get_by_list, sens_param

    def __call__(self, fn: Any, weights: Any = None) -> GradFunction:
        if not callable(fn):
            raise TypeError(f"GradOperation needs a Cell or a function, got {type(fn).__name__}")
        if not self.get_by_list:
            return GradFunction(self, fn, (), bare=False)
        if weights is None:
            # MindSpore (test_pynative_requires_grad_without_params): every Parameter of the Cell, frozen ones too
            own = tuple(fn.get_parameters()) if hasattr(fn, "get_parameters") else ()
            return GradFunction(self, fn, own, bare=False)
        if isinstance(weights, Parameter):
            return GradFunction(self, fn, (weights,), bare=True)
        if not isinstance(weights, (tuple, list)) or not all(isinstance(w, Parameter) for w in weights):
            raise TypeError(f"GradOperation weights must be a Parameter, a ParameterTuple or a list of Parameters, got {weights!r}")
        return GradFunction(self, fn, tuple(weights), bare=False)


class GradFunction:
    """The gradient of one network; call it with the network's inputs (then sens, with ``sens_param``)."""

    def __init__(self, op: GradOperation, fn: Any, weights: tuple[Parameter, ...], bare: bool) -> None:
        self.op, self.fn, self.weights, self.bare = op, fn, weights, bare
        self.wrapped = fn
        """The function differentiated, whose non-Parameter state stands for this one's (client/state.py)."""
        self._last: tuple[Traced, GradFlags] | None = None
        self._steady: tuple[Any, Backend, str, GradFlags, Any] | None = None
        """The last prepared call's trace entry, backend, network id, flags and result function, when its network
        writes no Parameter and takes no sens: a call that finds the same entry on the same backend reuses them."""

    def input_names(self, n: int) -> list[str]:
        """Graph-input names when this gradient function is itself traced."""
        return [f"arg{i}" for i in range(n)]

    def flags(self, traced: Traced) -> GradFlags:
        """The flags and weight names this gradient function sends to a backend or a GradOperation node; the first
        input's gradient of a tuple or list input is asked for as the gradients of all the graph's inputs (kept
        for the last trace: the weights' names are part of its cache key)."""
        last = self._last
        if last is not None and last[0] is traced:
            return last[1]
        whole = not self.op.get_by_list and bool(traced.arg_skeletons) and traced.arg_skeletons[0] != TENSOR
        flags = GradFlags(self.op.get_all or whole, self.op.get_by_list, self.op.sens_param, tuple(w.name for w in self.weights))
        self._last = (traced, flags)
        return flags

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"gradient of {label(self.fn)}: pass inputs positionally (got keywords {sorted(kwargs)})")
        inputs, sens = args, None
        if self.op.sens_param:
            if not args:
                raise TypeError(f"GradOperation(sens_param=True) of {label(self.fn)}: pass the network's inputs followed by sens")
            inputs, sens = args[:-1], args[-1]
        check_inputs(self.fn, inputs)
        op = self.op
        if not (op.get_all or op.get_by_list or (inputs and (isinstance(inputs[0], Tensor) or tensor_leaves(inputs[0])))):
            return ()  # MindSpore: the first input is not a Tensor, so there is nothing to differentiate
        frame = current_frame()
        return self._run(inputs, sens) if frame is None else self._nested(frame, inputs, sens)

    def _run(self, inputs: Sequence[Any], sens: Any) -> Any:
        backend = get_backend()
        split = batch_splitter(backend)
        if split is not None:
            done, result = split(self, (*inputs, sens) if self.op.sens_param else tuple(inputs))
            if done:
                return result
        call, finish = self._prepare(backend, inputs, sens, write=True)
        return finish(backend.call(call))

    def _prepare(self, backend: Backend, inputs: Sequence[Any], sens: Any, write: bool = False,
                 read: BeforeWrites | None = None) -> tuple[Call, Any]:
        """The backend call for these inputs and the function giving the structured result from its output; with
        ``write``, a network that writes Parameters (BatchNorm's moving statistics) writes them once, as its forward
        inside MindSpore's gradient call does (unless that forward was just run and recorded: ``forward_recorded``);
        ``read`` gives what the network writes as a forward read it (``runner.BeforeWrites``), read in place of the
        current values."""
        entry = traced_for(self.fn, inputs, self.weights)
        steady = self._steady
        if steady is not None and steady[0] is entry and steady[1] is backend and read is None:
            return Call(steady[2], steady[3], entry.inputs(inputs), entry.param_values()), steady[4]
        traced = entry.traced
        recorded = forward_recorded(self.fn, inputs) if write and traced.writes else None
        if write and traced.writes and recorded is None:
            return self._prepare_writing(backend, traced, inputs, sens)
        read = recorded or read
        if read is not None and read.tensors:
            with read.tensors_as_read():
                entry = traced_for(self.fn, inputs, self.weights)
            traced = entry.traced
        arrays = entry.inputs(inputs)
        if self.op.sens_param:
            arrays += [s._concrete("sens") for s in self._flat_sens(sens, traced)]
        flags = self.flags(traced)
        params = {**entry.param_values(), **read.params} if read is not None else entry.param_values()
        call = Call(entry.network_id(backend), flags, arrays, params)
        finish = _first_gradient if not flags.get_all and not flags.get_by_list else (
            lambda out: self._structure(wrapped_leaves(out), traced))
        if not traced.writes and not self.op.sens_param and read is None:
            self._steady = (entry, backend, call.network_id, flags, finish)
        return call, finish

    def _prepare_writing(self, backend: Backend, traced: Traced, inputs: Sequence[Any], sens: Any) -> tuple[Call, Any]:
        """The call of one network holding a GradOperation node over the function and the function's written
        values (``_forward_writes``), run forward; its writes are set into their Parameters when it returns."""
        args = [*inputs, sens] if self.op.sens_param else list(inputs)
        # kept with the function, so a GradFunction made anew for every step (``grad_op(net)(x)``) reuses the trace
        cache = _reused(self.fn, "grad_operation")
        key = (len(inputs), self.op.get_all, self.op.get_by_list, self.op.sens_param, tuple(id(w) for w in self.weights))
        staged = cache.get(key)
        if staged is None:
            staged = cache[key] = _Staged(f"grad_{graph_name(self.fn)}", len(inputs), self._parameters, self._stage, True, self.fn)
        entry = traced_for(staged, args, self.weights)
        call = Call(writing_network_id(entry, backend), None, entry.inputs(args), entry.param_values())
        return call, lambda out: self._structure(apply_writes(entry.traced, out), traced)

    def _parameters(self) -> Iterator[Parameter]:
        """The Parameters of the function's Cell and the weights, which the staged network's trace cache watches."""
        own = list(self.fn.get_parameters()) if hasattr(self.fn, "get_parameters") else []
        return iter(own + [w for w in self.weights if all(w is not p for p in own)])

    def _stage(self, frame: TraceFrame, inputs: Sequence[Any], extra: Sequence[Any]) -> tuple[list[Tensor], Traced, list[Value], Any]:
        """``_emit`` for the staged network: ``extra`` holds sens when ``sens_param``."""
        leaves, traced, values = self._emit(frame, inputs, extra[0] if extra else None)
        return leaves, traced, values, None

    def prepare_call(self, backend: Backend, args: tuple[Any, ...], write: bool = False,
                     read: BeforeWrites | None = None) -> tuple[Call, Any]:
        """For streaming (``client/streaming.py``) and split batches (``client/parallel.py``): one call's arguments
        (then sens) as a backend call and its result's structure; with ``write``, the Parameters the network writes
        are set when the result is finished (as a direct call does); ``read`` as in ``_prepare``."""
        inputs, sens = (args[:-1], args[-1]) if self.op.sens_param else (args, None)
        check_inputs(self.fn, inputs)
        return self._prepare(backend, inputs, sens, write, read)

    def stream(self, batches: Iterable[Any], in_flight: int = 4) -> Iterator[Any]:
        """The gradient for each batch (a tuple of inputs, or one input) in order, up to ``in_flight`` at once; each
        result's Parameter writes are applied as it arrives (see ``streaming.stream``)."""
        return stream_prepared(functools.partial(self.prepare_call, write=True), batches, in_flight)

    def _nested(self, frame: TraceFrame, inputs: Sequence[Any], sens: Any) -> Any:
        """Inside a trace: trace the network into the library and apply a GradOperation node to it (the network's
        writes are dropped, a gradient inside a construct writes nothing, unless ``frame`` traces this gradient
        itself: ``_nested_writes``)."""
        leaves, traced, values = self._emit(frame, inputs, sens)
        _nested_writes(self, frame, traced, values)
        return self._structure(leaves, traced)

    def _emit(self, frame: TraceFrame, inputs: Sequence[Any], sens: Any) -> tuple[list[Tensor], Traced, list[Value]]:
        """Trace the network into the library and add a GradOperation node; returns the node's outputs, the traced
        network and the values of its inputs in ``frame``."""
        name = frame.session.fresh_name(graph_name(self.fn))
        traced = trace(self.fn, inputs, frame.session, name, self.weights)
        frame.session.library[name] = traced.graph
        flat_sens = self._flat_sens(sens, traced)
        values = [frame.value_of(t) for t in traced.input_leaves(inputs)]
        f = self.flags(traced)
        outs = frame.builder.op(
            "GradOperation", *values, *[frame.value_of(s) for s in flat_sens], fn=name, get_all=f.get_all,
            get_by_list=f.get_by_list, sens_param=f.sens_param, weights=f.weights,
        )
        return [Tensor._symbolic(v, frame) for v in outs], traced, values

    def _flat_sens(self, sens: Any, traced: Traced) -> list[Tensor]:
        """The sens leaves, one per Tensor output, checked against the network's outputs (structure, shape, dtype)."""
        if not self.op.sens_param:
            return []
        leaves = _sens_leaves(sens, traced.skeleton, "sens", label(self.fn))
        for (s, path), out in zip(leaves, flatten(traced.graph.outputs)):
            want = f"shape {tuple(out.shape)} and dtype {mstype.from_numpy(out.dtype)}"
            if not isinstance(s, Tensor):
                raise TypeError(f"gradient of {label(self.fn)}: {path} must be a Tensor with the output's {want}, got {type(s).__name__}")
            if s.shape != tuple(out.shape) or s._array_dtype() != out.dtype:
                raise ValueError(
                    f"gradient of {label(self.fn)}: {path} has shape {s.shape} and dtype {s.dtype}, "
                    f"but the network output it scales has {want}"
                )
        return [s for s, _ in leaves]

    def _structure(self, leaves: list[Tensor], traced: Traced) -> Any:
        """MindSpore's return structure from the flat gradient leaves (the engine's rule), each input's gradient
        in that input's structure."""
        if self.flags(traced).get_all:
            n_graph = len(traced.graph.inputs)
            grads_in, weights = traced.group_inputs(leaves[:n_graph]), leaves[n_graph:]
        elif self.op.get_by_list:
            grads_in, weights = [], leaves
        else:
            grads_in, weights = leaves[:1], []
        n_inputs = len(grads_in) if self.op.get_all else 0
        return grad_structure([*grads_in, *weights], n_inputs, self.op.get_all, self.op.get_by_list, self.bare)


def _first_gradient(out: Any) -> Tensor:
    """The result of a gradient of the first input alone (``_structure``'s rule for that case): the one leaf, as a Tensor."""
    return Tensor._wrap(out) if type(out) is np.ndarray else wrapped_leaves(out)[0]


def _sens_leaves(sens: Any, skeleton: Any, path: str, who: str) -> list[tuple[Any, str]]:
    """The sens value for each Tensor output, with where it sits in ``sens``: sens has the outputs' structure (a
    tuple or list for a tuple or list, a dict with the same keys for a dict); what it holds at a constant output
    is not used."""
    if skeleton == TENSOR:
        return [(sens, path)]
    if skeleton[0] == "const":
        return []
    kind, keys, children = skeleton
    if kind is dict:
        if not isinstance(sens, dict) or set(sens) != set(keys):
            got = f"a dict with keys {sorted(map(str, sens))}" if isinstance(sens, dict) else f"a {type(sens).__name__}"
            raise TypeError(f"gradient of {who}: the network returns a dict with keys {list(keys)} here, so {path} must be a dict with the same keys; got {got}")
        return [leaf for k, c in zip(keys, children) for leaf in _sens_leaves(sens[k], c, f"{path}[{k!r}]", who)]
    if not isinstance(sens, (tuple, list)) or len(sens) != len(children):
        got = (
            "a single Tensor" if isinstance(sens, Tensor)
            else f"a {type(sens).__name__} of length {len(sens)}" if isinstance(sens, (tuple, list))
            else f"a {type(sens).__name__}"
        )
        raise TypeError(
            f"gradient of {who}: the network returns a {kind.__name__} of {len(children)} outputs, so {path} "
            f"must be a tuple of {len(children)} Tensors in the same structure; got {got}"
        )
    return [leaf for i, (s, c) in enumerate(zip(sens, children)) for leaf in _sens_leaves(s, c, f"{path}[{i}]", who)]


# ---- MindSpore 2.x functional transforms: grad, value_and_grad, vjp, jvp, jacfwd, jacrev, hessian ----


def _positions(grad_position: Any, what: str) -> tuple[int, ...]:
    """``grad_position`` (an int or a tuple of ints, each >= 0, no repeats) as a tuple."""
    pos = (grad_position,) if isinstance(grad_position, int) and not isinstance(grad_position, bool) else grad_position
    if not isinstance(pos, tuple) or not pos or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
        raise TypeError(f"{what}: grad_position must be an int or a non-empty tuple of ints, got {grad_position!r}")
    if any(p < 0 for p in pos):
        raise ValueError(f"{what}: grad_position must be >= 0, got {grad_position!r}")
    if len(set(pos)) != len(pos):
        raise ValueError(f"{what}: grad_position {grad_position!r} repeats a position")
    return pos


def _weights(weights: Any, what: str) -> tuple[tuple[Parameter, ...], bool]:
    """The Parameters to differentiate and whether a single one was given bare (its gradient is then bare too)."""
    if weights is None:
        return (), False
    if isinstance(weights, Parameter):
        return (weights,), True
    if isinstance(weights, (tuple, list)) and all(isinstance(w, Parameter) for w in weights):
        return tuple(weights), False
    raise TypeError(f"{what}: weights must be a Parameter, a ParameterTuple or a list of Parameters, got {weights!r}")


def _aux(outputs: Any) -> Any:
    """MindSpore's aux value: the second output bare when there are two, else the outputs after the first."""
    return outputs[1] if len(outputs) == 2 else outputs[1:]


def _require_aux(skeleton: Any, what: str) -> None:
    """With ``has_aux`` the function returns a tuple of at least two outputs, the first a Tensor (the one
    differentiated); the others (aux) may be anything a network returns, constants included."""
    if skeleton == TENSOR or skeleton[0] is not tuple or len(skeleton[2]) < 2 or skeleton[2][0] != TENSOR:
        raise ValueError(f"{what}: with has_aux=True the function must return at least two outputs, the first a Tensor")


class _Transform:
    """A transform node over a function. Inside a trace it adds its node to the graph being traced; at top level it
    runs as one network (the function in its library, the node in its body) on the current backend, and the Python
    structure (aux, ids) is applied to the node's outputs afterwards."""

    op = ""
    writes = True
    """Whether a top-level call writes the Parameters the function writes (once per call, as its forward inside
    MindSpore's transform does)."""

    def __init__(self, fn: Any, weights: tuple[Parameter, ...] = ()) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__.lstrip('_')} needs a Cell or a function, got {type(fn).__name__}")
        self.fn, self.weights = fn, weights
        self.wrapped = fn
        """The function transformed, whose non-Parameter state stands for this one's (client/state.py)."""
        self.__name__ = f"{self.op.lower()}_{graph_name(fn)}"
        self._rebuilds: dict[int, tuple[Traced, Any, Any]] = {}
        """By id of a trace: the trace (held, so that its id stays its own), its structure builder and the function
        from a backend's output to the result."""
        self._staged: dict[int, _Staged] = {}

    def input_names(self, n: int) -> list[str]:
        """Graph-input names when this transform is itself traced."""
        return [f"arg{i}" for i in range(n)]

    def get_parameters(self) -> Any:
        """The Parameters the function's Cell owns and the weights: the trace cache watches them."""
        own = list(self.fn.get_parameters()) if hasattr(self.fn, "get_parameters") else []
        return iter(own + [w for w in self.weights if all(w is not p for p in own)])

    def _apply(self, args: Sequence[Any], extra: Sequence[Tensor], read: BeforeWrites | None = None) -> Any:
        """The structured result for ``args`` (the function's inputs) and ``extra`` (tangents or cotangents); ``read``
        gives Parameter values by name in place of the current ones at top level (``vjp_fn``: its forward's)."""
        frame = current_frame()
        if frame is not None:
            leaves, traced, values, rebuild = self._emit(frame, args, extra)
            if self.writes:
                _nested_writes(self, frame, traced, values)
            return rebuild(leaves)
        backend = get_backend()
        call, finish = self._prepare(backend, args, extra, write=self.writes, read=read)
        return finish(backend.call(call))

    def _prepare(self, backend: Backend, args: Sequence[Any], extra: Sequence[Tensor], write: bool = False,
                 read: BeforeWrites | None = None) -> tuple[Call, Any]:
        """The backend call of the staged network and the function giving the structured result from its output.
        With ``write``, when the function writes Parameters, the call runs the staged graph's copy that also outputs
        the written values (``runner.writing_network_id``), and they are set after it returns."""
        staged = self._staged.get(len(args))
        if staged is None:
            staged = _Staged(self.__name__, len(args), self.get_parameters, self._emit, True, self.fn)
            self._staged[len(args)] = staged
        every = [*args, *extra] if extra else args
        entry = traced_for(staged, every, self.weights)
        recorded = forward_recorded(self.fn, args) if write and entry.traced.writes else None
        read = recorded or read
        if read is not None and read.tensors:
            with read.tensors_as_read():
                entry = traced_for(staged, every, self.weights)
        hit = self._rebuilds.get(id(entry.traced))
        if hit is None:
            hit = self._kept(staged, entry.traced)
        inputs = entry.inputs(every)
        if write and entry.traced.writes and read is None:
            call = Call(writing_network_id(entry, backend), None, inputs, entry.param_values())
            return call, lambda out: hit[1](apply_writes(entry.traced, out))
        params = entry.param_values() if read is None else {**entry.param_values(), **read.params}
        return Call(entry.network_id(backend), None, inputs, params), hit[2]

    def _kept(self, staged: _Staged, traced: Traced) -> tuple[Traced, Any, Any]:
        """``_rebuilds``' entry for ``traced``, a trace of ``staged``, made from the structure builder made in that
        trace (``staged`` forgets it once it is kept here: when it is gone, another thread has kept it)."""
        made = next((staged.rebuilds[id(n)] for n in traced.graph.nodes if id(n) in staged.rebuilds), None)
        if made is None:
            return self._rebuilds[id(traced)]
        rebuild = made[1]
        hit = self._rebuilds.setdefault(id(traced), (traced, rebuild, lambda out: rebuild(wrapped_leaves(out))))
        staged.rebuilds.pop(id(made[0]), None)
        return hit

    def prepare_call(self, backend: Backend, args: tuple[Any, ...], write: bool = False,
                     read: BeforeWrites | None = None) -> tuple[Call, Any]:
        """For streaming and split batches: one call's arguments as a backend call and its result's structure
        (``write`` and ``read`` as in ``GradFunction.prepare_call``)."""
        return self._prepare(backend, args, (), write=write and self.writes, read=read)

    def stream(self, batches: Iterable[Any], in_flight: int = 4) -> Iterator[Any]:
        """The result for each batch (a tuple of arguments, or one argument) in order, up to ``in_flight`` at once;
        each result's Parameter writes are applied as it arrives."""
        return stream_prepared(functools.partial(self.prepare_call, write=True), batches, in_flight)

    def _emit(self, frame: TraceFrame, args: Sequence[Any], extra: Sequence[Tensor]) -> tuple[list[Tensor], Traced, list[Value], Any]:
        """Trace the function into the library and add the node; returns its outputs, the traced function, the
        values of its inputs in ``frame`` and the structure builder."""
        check_inputs(self.fn, args)
        name = frame.session.fresh_name(graph_name(self.fn))
        traced = trace(self.fn, args, frame.session, name, self.weights)
        frame.session.library[name] = traced.graph
        node_attrs = self._attrs(traced)
        values = [frame.value_of(t) for t in traced.input_leaves(args)]
        outs = frame.builder.op(self.op, *values, *[frame.value_of(t) for t in extra], fn=name, **node_attrs)
        return [Tensor._symbolic(v, frame) for v in outs], traced, values, self._structure(traced)

    def _graph_positions(self, traced: Traced, positions: Sequence[int]) -> tuple[int, ...]:
        """Argument positions as graph-input positions (every Tensor of a tuple or list argument); each must be a
        Tensor argument or a tuple or list of them."""
        for p in positions:
            if p not in traced.tensor_positions:
                raise TypeError(f"{label(self.fn)}: input {p} is differentiated but is not a Tensor")
        return tuple(traced.graph_positions(positions))

    def _attrs(self, traced: Traced) -> dict[str, Any]:
        """The node's attributes besides ``fn``, for the traced function."""
        raise NotImplementedError

    def _structure(self, traced: Traced) -> Any:
        """A function from the node's output Tensors to the Python result."""
        raise NotImplementedError


class _Staged:
    """The flat outputs of one transform (or GradOperation) applied to its arguments: the network a top-level call
    runs. ``emit(frame, args, extra)`` adds the transform's node; the writes of the function it traced are recorded
    as this network's own (``_forward_writes``), so a top-level call can write them once. ``wrapped`` is the
    function (or Cell) traced, whose non-Parameter state the trace cache watches (client/state.py)."""

    def __init__(self, name: str, n_args: int, params: Callable[[], Iterator[Parameter]], emit: Callable[..., Any], writes: bool,
                 wrapped: Any) -> None:
        self.n_args, self.params, self.emit, self.writes, self.wrapped = n_args, params, emit, writes, wrapped
        self.__name__ = name
        self.rebuilds: dict[int, tuple[Node, Any]] = {}
        """By id of the transform's node in a trace not yet kept by its owner (``_Transform._kept``): that node (held,
        so that its id stays its own) and the structure builder made with it, found by the trace, not as the last one
        made (another thread's trace, or one made before the trace a call found in the cache)."""

    def input_names(self, n: int) -> list[str]:
        """Graph-input names: the function's arguments, then the tangents or cotangents."""
        return [f"arg{i}" for i in range(self.n_args)] + [f"v{i}" for i in range(n - self.n_args)]

    def get_parameters(self) -> Any:
        """The owner's Parameters, which the trace cache watches."""
        return self.params()

    def __call__(self, *args: Any) -> tuple[Tensor, ...]:
        frame = current_frame()
        if frame is None:
            raise AssertionError("a staged transform runs only while it is traced")
        leaves, traced, values, rebuild = self.emit(frame, args[: self.n_args], args[self.n_args:])
        node = frame.builder.nodes[-1]  # the transform's node, which emit adds last
        self.rebuilds[id(node)] = (node, rebuild)
        if self.writes:
            _forward_writes(frame, traced, values)
        return tuple(leaves)


def _forward_writes(frame: TraceFrame, traced: Traced, values: Sequence[Value], draws_only: bool = False) -> None:
    """Record the Parameter writes of ``traced`` (a function in the library, applied to ``values``) as writes of
    ``frame``: the written values are computed in ``frame``'s graph by a copy of the function's nodes they need,
    which the compiler merges with the forward pass the transform's node expands to, so one program computes both.
    Writes of transforms nested in the function are not in ``traced.writes`` (dropped, as in any nested trace) except
    their random functions' step counters (``draws_only``: those ``frame`` does not write already)."""
    writes = [w for w in traced.writes if not draws_only or (is_draw_counter(w[0]) and all(p is not w[0] for p, _ in frame.writes))]
    if not writes:
        return
    g = traced.graph
    wanted = Graph(g.inputs, g.params, g.nodes, tuple(v for _, v in writes), g.library, g.name).pruned()
    for (param, _), v in zip(writes, flatten(inline(frame.builder, wanted, values, expand_all=False))):
        frame.writes.append((param, v))


def _nested_writes(transform: Any, frame: TraceFrame, traced: Traced, values: Sequence[Value]) -> None:
    """A transform traced as the function of another (``hessian``'s jacrev under jacfwd, grad of grad) passes its
    function's writes on (``_forward_writes``): no user code runs between the two, so the top-level call writes once,
    as one of the function itself does (a Dropout's step moves on, a new mask each call). Inside any other traced
    function the writes are dropped, except the step counters of the random functions (``ops.standard_normal``...)
    it calls, which ``frame`` does not move itself: a gradient inside a jit step (the DCGAN tutorial's) draws new
    values at every step, as MindSpore's does."""
    _forward_writes(frame, traced, values, draws_only=frame.fn is not transform)


def _splitter(traced: Traced) -> Callable[[list[Tensor]], tuple[Any, list[Tensor]]]:
    """``split(leaves)``: the function's outputs rebuilt (in their structure) from the first leaves, and the leaves
    after them (their count found once per trace, not per call)."""
    n = len(flatten(traced.graph.outputs))

    def split(leaves: list[Tensor]) -> tuple[Any, list[Tensor]]:
        return rebuild_tree(traced.skeleton, iter(leaves[:n])), leaves[n:]

    return split


class _GradFn(_Transform):
    """``grad`` / ``value_and_grad``: a Grad node; MindSpore's structure of inputs' and weights' gradients."""

    op = "Grad"

    def __init__(self, fn: Any, grad_position: Any, weights: Any, has_aux: bool, return_ids: bool, value: bool) -> None:
        what = "value_and_grad" if value else "grad"
        if grad_position is None and weights is None:
            raise ValueError(f"{what}: grad_position and weights can not both be None")
        for name, flag in (("has_aux", has_aux), ("return_ids", return_ids)):
            if not isinstance(flag, bool):
                raise TypeError(f"{what}: {name} must be a bool, got {flag!r}")
        ws, self.bare_weight = _weights(weights, what)
        super().__init__(fn, ws)
        self.positions = None if grad_position is None else _positions(grad_position, what)
        self.has_aux, self.return_ids, self.value = has_aux, return_ids, value

    def __call__(self, *args: Any) -> Any:
        split = batch_splitter(get_backend()) if current_frame() is None else None
        if split is not None:
            done, result = split(self, args)
            if done:
                return result
        return self._apply(args, ())

    def _attrs(self, traced: Traced) -> dict[str, Any]:
        if self.has_aux:
            _require_aux(traced.skeleton, f"grad of {label(self.fn)}")
        positions = self._graph_positions(traced, self.positions or ())
        return {"positions": positions, "weights": tuple(w.name for w in self.weights), "has_aux": self.has_aux}

    def _structure(self, traced: Traced) -> Any:
        split = _splitter(traced)
        n = len(traced.graph_positions(self.positions or ()))

        def rebuild(leaves: list[Tensor]) -> Any:
            out, grads = split(leaves)
            gi: list[Any] = traced.group_inputs(grads[:n], self.positions or ())
            gw: list[Any] = list(grads[n:])
            if self.return_ids:
                gi = [(p, g) for p, g in zip(self.positions or (), gi)]
                gw = [(w.name, g) for w, g in zip(self.weights, gw)]
            part_i = gi[0] if len(gi) == 1 else tuple(gi)
            part_w = gw[0] if self.bare_weight else tuple(gw)
            if self.positions is None:
                gradient: Any = part_w
            else:
                gradient = (part_i, part_w) if self.weights else part_i
            if self.value:
                return out, gradient
            return (gradient, out[1:]) if self.has_aux else gradient

        return rebuild


def grad(fn: Any, grad_position: Any = 0, weights: Any = None, has_aux: bool = False, return_ids: bool = False) -> Any:
    """MindSpore's ``grad``: the gradient function of ``fn`` with respect to the inputs at ``grad_position`` and
    ``weights``. One position (an int or a 1-tuple) gives a bare gradient, several a tuple; with both, the pair
    ``(inputs' gradients, weights' gradients)``; ``has_aux`` returns ``(gradient, outputs[1:])``."""
    return _GradFn(fn, grad_position, weights, has_aux, return_ids, value=False)


def value_and_grad(fn: Any, grad_position: Any = 0, weights: Any = None, has_aux: bool = False, return_ids: bool = False) -> Any:
    """MindSpore's ``value_and_grad``: like :func:`grad`, returning ``(fn's outputs, gradient)``."""
    return _GradFn(fn, grad_position, weights, has_aux, return_ids, value=True)


def _tensors(xs: Any, what: str) -> tuple[Tensor, ...]:
    if isinstance(xs, Tensor):
        return (xs,)
    if isinstance(xs, (tuple, list)) and all(isinstance(x, Tensor) for x in xs):
        return tuple(xs)
    raise TypeError(f"{what} must be a Tensor or a tuple or list of Tensors, got {type(xs).__name__}")


class _JvpFn(_Transform):
    """``jvp``: a Jvp node over all inputs."""

    op = "Jvp"

    def __init__(self, fn: Any, has_aux: bool) -> None:
        super().__init__(fn)
        self.has_aux = has_aux

    def _attrs(self, traced: Traced) -> dict[str, Any]:
        if self.has_aux:
            _require_aux(traced.skeleton, f"jvp of {label(self.fn)}")
        return {"positions": tuple(range(len(traced.graph.inputs)))}

    def _structure(self, traced: Traced) -> Any:
        split = _splitter(traced)

        def rebuild(leaves: list[Tensor]) -> Any:
            out, tangents = split(leaves)
            dots = rebuild_tree(traced.skeleton, iter(tangents))
            if self.has_aux:
                return out[0], dots[0], _aux(out)
            return out, dots

        return rebuild


def _reused(fn: Any, kind: str) -> dict[Any, Any]:
    """The transform objects ``jvp`` or ``vjp`` made for ``fn``, kept in ``fn``'s own ``__dict__`` so that repeated
    calls reuse their traces and the objects die with ``fn`` (a throwaway dict when ``fn`` has no ``__dict__``)."""
    try:
        return vars(fn).setdefault(f"_gradserve_{kind}", {})  # type: ignore[no-any-return]
    except TypeError:
        return {}


def jvp(fn: Any, inputs: Any, v: Any, has_aux: bool = False) -> Any:
    """MindSpore's ``jvp``: ``(fn(*inputs), J v)`` by forward mode, or ``(outputs[0], its jvp, aux)`` with ``has_aux``."""
    xs, vs = _tensors(inputs, "jvp: inputs"), _tensors(v, "jvp: v")
    if len(xs) != len(vs):
        raise ValueError(f"jvp of {label(fn)}: {len(xs)} inputs but {len(vs)} tangents in v")
    for i, (x, t) in enumerate(zip(xs, vs)):
        if x.shape != t.shape or x._array_dtype() != t._array_dtype():
            raise ValueError(f"jvp of {label(fn)}: v[{i}] has shape {t.shape} and dtype {t.dtype}, input {i} has {x.shape} and {x.dtype}")
    cache = _reused(fn, "jvp")
    if has_aux not in cache:
        cache[has_aux] = _JvpFn(fn, has_aux)
    return cache[has_aux]._apply(xs, vs)


class _VjpFn(_Transform):
    """``vjp``'s vjp_fn: a Vjp node over all inputs (and the weights), cotangents for the differentiated outputs."""

    op = "Vjp"
    writes = False  # vjp() ran the forward (and its writes) already; vjp_fn only pulls cotangents back

    def __init__(self, fn: Any, weights: tuple[Parameter, ...], has_aux: bool) -> None:
        super().__init__(fn, weights)
        self.has_aux = has_aux

    def _attrs(self, traced: Traced) -> dict[str, Any]:
        return {
            "positions": tuple(range(len(traced.graph.inputs))), "weights": tuple(w.name for w in self.weights),
            "has_aux": self.has_aux,
        }

    def _structure(self, traced: Traced) -> Any:
        split = _splitter(traced)

        def rebuild(leaves: list[Tensor]) -> Any:
            _, grads = split(leaves)
            n = len(traced.graph.inputs)
            gi = tuple(traced.group_inputs(grads[:n]))
            return (gi, tuple(grads[n:])) if self.weights else gi

        return rebuild


class VjpFunction:
    """The ``vjp_fn`` that :func:`vjp` returns: call it with cotangents in the structure of the (differentiated)
    outputs: one Tensor for a Tensor, a tuple or list for a tuple or list, a dict with the same keys for a dict
    (nested alike; what sits at a constant output is not used), or, as MindSpore also takes them, the cotangents of
    a tuple output as separate arguments."""

    def __init__(self, transform: _VjpFn, inputs: tuple[Any, ...], outputs: Any, read: BeforeWrites) -> None:
        self.transform, self.inputs, self.outputs, self.read = transform, inputs, outputs, read
        self.skeleton = skeleton_of(outputs[0] if transform.has_aux else outputs)

    def __call__(self, *v: Any) -> Any:
        who = f"vjp_fn of {label(self.transform.fn)}"
        sens = v[0] if len(v) == 1 else v
        leaves = _sens_leaves(sens, self.skeleton, "v", who)
        want = tensor_leaves(self.outputs[0] if self.transform.has_aux else self.outputs)
        for (c, path), o in zip(leaves, want):
            if not isinstance(c, Tensor):
                raise TypeError(f"{who}: {path} must be a Tensor like the output it belongs to ({o.dtype}{list(o.shape)}), got {type(c).__name__}")
            if c.shape != o.shape or c._array_dtype() != o._array_dtype():
                raise ValueError(f"{who}: {path} has shape {c.shape} and dtype {c.dtype}, its output has {o.shape} and {o.dtype}")
        with self.read.tensors_as_read():
            return self.transform._apply(self.inputs, [c for c, _ in leaves], self.read)


def _vjp_forward(fn: Any, inputs: tuple[Any, ...]) -> Any:
    """``vjp``'s forward call. At top level a plain function (``def`` or lambda) runs traced as a Cell's construct
    does, not op by op: its random draws (``ops.randn``...) are then the ops that ``vjp_fn``'s trace of it also makes,
    and ``vjp_fn`` reads their step counters at the values this call read, so the gradient uses the forward's draws.
    Anything else runs as called: a Cell or a transform runs its own graph, and a method of a plain object or a
    partial runs eagerly (a trace of it would be kept for the first object, whose attributes nothing watches; an
    eager draw in it is refused, ``functional._drawn``)."""
    if current_frame() is None and isinstance(fn, types.FunctionType):
        return run_network(fn, inputs)
    return fn(*inputs)


def vjp(fn: Any, *inputs: Any, weights: Any = None, has_aux: bool = False) -> Any:
    """MindSpore's ``vjp``: ``(fn(*inputs), vjp_fn)``, or ``(outputs[0], vjp_fn, aux)`` with ``has_aux``; ``vjp_fn(v)``
    (``v`` in the outputs' structure) returns the gradients of all Tensor inputs as a tuple, a tuple, list or dict
    input's in its structure (and of ``weights``, as ``(inputs', weights')``)."""
    check_inputs(fn, inputs)
    if not any(tensor_leaves(a) for a in inputs):
        raise TypeError(f"vjp of {label(fn)}: no input is a Tensor (or holds one)")
    ws, _ = _weights(weights, "vjp")
    with values_before_writes() as read:  # what the forward writes, as it read it (a Dropout's step, a buffer)
        out = _vjp_forward(fn, inputs)
    if has_aux:
        _require_aux(skeleton_of(out), f"vjp of {label(fn)}")
    cache = _reused(fn, "vjp")
    key = (has_aux, tuple(id(w) for w in ws))
    if key not in cache:
        cache[key] = _VjpFn(fn, ws, has_aux)
    vjp_fn = VjpFunction(cache[key], inputs, out, read)
    if has_aux:
        return out[0], vjp_fn, _aux(out)
    return out, vjp_fn


class _JacFn(_Transform):
    """``jacfwd`` / ``jacrev``: a Jacobian node; MindSpore's structure over outputs and positions."""

    op = "Jacobian"

    def __init__(self, fn: Any, grad_position: Any, has_aux: bool, mode: str) -> None:
        super().__init__(fn)
        what = "jacfwd" if mode == "forward" else "jacrev"
        if not isinstance(has_aux, bool):
            raise TypeError(f"{what}: has_aux must be a bool, got {has_aux!r}")
        self.positions, self.has_aux, self.mode = _positions(grad_position, what), has_aux, mode
        self.__name__ = f"{what}_{graph_name(fn)}"

    def __call__(self, *args: Any) -> Any:
        return self._apply(args, ())

    def _attrs(self, traced: Traced) -> dict[str, Any]:
        if self.has_aux:
            _require_aux(traced.skeleton, f"jacobian of {label(self.fn)}")
        return {"positions": self._graph_positions(traced, self.positions), "mode": self.mode}

    def _structure(self, traced: Traced) -> Any:
        split = _splitter(traced)

        def rebuild(leaves: list[Tensor]) -> Any:
            out, jacs = split(leaves)
            n_graph = len(traced.graph_positions(self.positions))
            n_out = 1 if self.has_aux else len(jacs) // n_graph
            # d out_i / d position j, each position's Jacobians in its argument's structure (a tuple, list or dict
            # argument gives one Jacobian per Tensor it holds), then MindSpore's nesting: one bare, several outputs
            # or several positions a flat tuple, both a tuple (per output) of tuples (per position)
            res = [p for i in range(n_out) for p in traced.group_inputs(jacs[i * n_graph:(i + 1) * n_graph], self.positions)]
            n_in = len(self.positions)
            if len(res) == 1:
                jac: Any = res[0]
            elif n_in == 1 or n_out == 1:
                jac = tuple(res)
            else:
                jac = tuple(tuple(res[i * n_in:(i + 1) * n_in]) for i in range(n_out))
            return (jac, _aux(out)) if self.has_aux else jac

        return rebuild


def jacfwd(fn: Any, grad_position: Any = 0, has_aux: bool = False) -> Any:
    """MindSpore's ``jacfwd``: the Jacobian function of ``fn`` by forward mode (one JVP per input element)."""
    return _JacFn(fn, grad_position, has_aux, "forward")


def jacrev(fn: Any, grad_position: Any = 0, has_aux: bool = False) -> Any:
    """MindSpore's ``jacrev``: the Jacobian function of ``fn`` by reverse mode (one VJP per output element)."""
    return _JacFn(fn, grad_position, has_aux, "reverse")


def hessian(fn: Any, grad_position: Any = 0) -> Any:
    """The Hessian function of a scalar ``fn`` (JAX's semantics; MindSpore has none): ``jacfwd(jacrev(fn))``."""
    return jacfwd(jacrev(fn, grad_position), grad_position)
