"""User-defined derivatives, as MindSpore has them: ``Cell.bprop(self, *inputs, out, dout)``, the ``custom_vjp``
decorator with ``defbwd``, and the PyNative custom ``Function`` (``forward(ctx, ...)``/``backward(ctx, ...)``).

Inside a trace the forward is recorded inline and its outputs pass through a ``CustomVjp`` node whose gradient
is the bprop, traced into the network's library (named by its content, so it is part of the network's id and
travels with it to a server). The engine inlines the bprop when it differentiates the node, so reverse mode
uses the user's rule and higher orders differentiate the bprop's own graph; nothing flows back through the
forward's own operations, so Parameters used only there get zero gradients (as in MindSpore).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from gradserve.engine import flatten, unflatten

from . import dtype as mstype
from .dispatch import apply_op
from .tensor import Tensor
from .tracing import TraceFrame, current_frame, trace

Backward = Callable[[Sequence[Any], Sequence[Tensor], Any, Any], Any]
"""``backward(inputs, saved, out, dout)``: the user's gradients for ``inputs``, one per input."""


class _BpropCall:
    """The bprop as a function of flat Tensors ``(x..., saved..., out..., dout...)`` returning one gradient per x,
    checked against its input (count, Tensor, shape, dtype) with errors naming the Cell or function."""

    def __init__(self, label: str, inputs: Sequence[Any], n_saved: int, out: Any, backward: Backward, none_is_zero: bool) -> None:
        self.label, self.inputs, self.n_saved, self.out = label, list(inputs), n_saved, out
        self.backward, self.none_is_zero = backward, none_is_zero
        self.positions = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        self.n_out = len(flatten(_tree(out)))

    def input_names(self, n: int) -> list[str]:
        """Graph-input names of the bprop graph."""
        k, s = len(self.positions), self.n_saved
        return (
            [f"x{i}" for i in range(k)] + [f"saved{i}" for i in range(s)]
            + [f"out{i}" for i in range(self.n_out)] + [f"dout{i}" for i in range(self.n_out)]
        )

    def __call__(self, *flat: Tensor) -> tuple[Tensor, ...]:
        k, s, m = len(self.positions), self.n_saved, self.n_out
        inputs = list(self.inputs)
        for i, t in zip(self.positions, flat[:k]):
            inputs[i] = t
        saved = list(flat[k: k + s])
        out = unflatten(_tree(self.out), iter(flat[k + s: k + s + m]))
        dout = unflatten(_tree(self.out), iter(flat[k + s + m:]))
        return self._check(self.backward(inputs, saved, out, dout))

    def _check(self, grads: Any) -> tuple[Tensor, ...]:
        n = len(self.inputs)
        if isinstance(grads, Tensor) and n == 1:
            grads = (grads,)
        if not isinstance(grads, (tuple, list)) or len(grads) != n:
            got = f"{len(grads)} values" if isinstance(grads, (tuple, list)) else f"a {type(grads).__name__}"
            raise ValueError(f"{self.label} must return a tuple of {n} gradients, one per input of the forward; got {got}")
        checked = []
        for i in self.positions:
            g, x = grads[i], self.inputs[i]
            if g is None and self.none_is_zero:
                g = apply_op("ZerosLike", x)
            if not isinstance(g, Tensor):
                raise TypeError(f"{self.label}: gradient {i} must be a Tensor like input {i} ({x.dtype}{list(x.shape)}), got {type(g).__name__}")
            if g.shape != x.shape:
                raise ValueError(f"{self.label}: gradient {i} has shape {g.shape}, input {i} has shape {x.shape}")
            if g._array_dtype() != x._array_dtype():
                raise TypeError(f"{self.label}: gradient {i} has dtype {g.dtype}, input {i} has dtype {mstype.from_numpy(x._array_dtype())}")
            checked.append(g)
        return tuple(checked)


def _tree(out: Any) -> Any:
    """An output tree with tuples for lists (the shape unflatten rebuilds)."""
    return tuple(_tree(o) for o in out) if isinstance(out, (tuple, list)) else out


def apply_custom(
    label: str, forward: Callable[..., Any], inputs: Sequence[Any], backward: Backward,
    saved: Callable[[], list[Tensor]] = list, none_is_zero: bool = False,
) -> Any:
    """Inside a trace: ``forward(*inputs)`` recorded inline, its outputs through a CustomVjp node whose gradient is
    ``backward`` traced into the library."""
    frame = current_frame()
    assert frame is not None
    out = forward(*inputs)
    leaves = flatten(_tree(out))
    if not all(isinstance(t, Tensor) for t in leaves):
        raise TypeError(f"{label}: the forward of a custom derivative must return Tensors or tuples of Tensors")
    xs = [a for a in inputs if isinstance(a, Tensor)]
    if not xs:
        return out
    kept = saved()
    call = _BpropCall(label, inputs, len(kept), out, backward, none_is_zero)
    name = _library_bprop(frame, label, call, xs + kept + leaves + leaves)
    values = [frame.value_of(t) for t in xs + kept + leaves]
    outs = frame.builder.add_node(
        "CustomVjp", values, {"bprop": name, "n_inputs": len(xs), "n_saved": len(kept), "label": label}, name_hint=label,
    )
    return unflatten(_tree(out), iter(Tensor._symbolic(v, frame) for v in outs))


def _library_bprop(frame: TraceFrame, label: str, call: _BpropCall, examples: list[Tensor]) -> str:
    """Trace the bprop (once for every dout, so without values) into the library under a name holding its digest
    (so the network's id covers the bprop). The leading ``!`` sorts it before every traced function's name: a
    server decodes library functions in name order apart from GradOperation references, and a function under
    GradOperation is differentiated as it is decoded, which needs the bprops it reaches."""
    traced = trace(call, examples, frame.session, label, concrete=False)
    name = f"!{label}#{traced.graph.structural_hash()[:16]}"
    traced.graph.name = name
    frame.session.library.setdefault(name, traced.graph)
    return name


def has_bprop(cell: Any) -> bool:
    """True when the Cell's class defines ``bprop``."""
    return callable(getattr(type(cell), "bprop", None))


def call_in_trace(cell: Any, inputs: Sequence[Any]) -> Any:
    """A Cell called inside a trace: its construct, under its bprop when it defines one."""
    if not has_bprop(cell):
        return cell.construct(*inputs)
    return apply_custom(
        f"{type(cell).__name__}.bprop", cell.construct, inputs,
        lambda xs, saved, out, dout: cell.bprop(*xs, out, dout),
    )


class custom_vjp:
    """``@custom_vjp`` on a function, then ``fn.defbwd(bprop)`` with ``bprop(*inputs, out, dout)`` returning one
    gradient per input: the function's gradient is the bprop's (outside a trace it just runs)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.bwd: Callable[..., Any] | None = None

    def defbwd(self, bwd: Callable[..., Any]) -> Callable[..., Any]:
        """Set the backward function (also usable as a decorator)."""
        self.bwd = bwd
        return bwd

    def __call__(self, *args: Any) -> Any:
        bwd = self.bwd
        if bwd is None or current_frame() is None:
            return self.fn(*args)
        return apply_custom(
            f"{getattr(self.fn, '__qualname__', 'custom_vjp')}.bprop", self.fn, args,
            lambda xs, saved, out, dout: bwd(*xs, out, dout),
        )


class FunctionCtx:
    """The ``ctx`` of a custom Function: ``save_for_backward(*tensors)`` and ``saved_tensors``; other attributes
    set in ``forward`` are seen by ``backward`` (Tensors among them are passed to the bprop graph as inputs)."""

    def __init__(self) -> None:
        self.saved_tensors: tuple[Tensor, ...] = ()
        self.non_differentiable: tuple[Tensor, ...] = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors: Tensor) -> None:
        """Keep Tensors for ``backward``."""
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        """Accepted for MindSpore's API; those outputs' douts are what reaches them (zeros when none)."""
        self.non_differentiable = tensors

    def set_materialize_grads(self, value: bool) -> None:
        """Accepted for MindSpore's API; douts an output did not get are always zeros here."""
        self.materialize_grads = bool(value)

    def tensors(self) -> list[tuple[str | int, Tensor]]:
        """Every Tensor ``backward`` may read: the saved ones by position, then attributes by name."""
        found: list[tuple[str | int, Tensor]] = list(enumerate(self.saved_tensors))
        found += [(k, v) for k, v in vars(self).items() if isinstance(v, Tensor)]
        return found

    def replaced(self, values: Sequence[Tensor]) -> FunctionCtx:
        """A copy whose Tensors (in ``tensors()`` order) are ``values``."""
        ctx = FunctionCtx.__new__(FunctionCtx)
        ctx.__dict__.update(vars(self))
        keys = [k for k, _ in self.tensors()]
        saved = list(self.saved_tensors)
        for k, v in zip(keys, values):
            if isinstance(k, int):
                saved[k] = v
            else:
                setattr(ctx, k, v)
        ctx.saved_tensors = tuple(saved)
        return ctx


class Function:
    """MindSpore's PyNative custom function: subclass with static ``forward(ctx, *args)`` and ``backward(ctx,
    *douts)`` (one gradient per input; None for zeros), and call ``MyFunction.apply(*args)``."""

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("forward function should be customized.")

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        raise NotImplementedError("backward function should be customized.")

    @classmethod
    def apply(cls, *args: Any) -> Any:
        """Run ``forward``; inside a trace its gradient is ``backward``'s."""
        ctx = FunctionCtx()
        if current_frame() is None:
            return cls.forward(ctx, *args)

        def backward(xs: Sequence[Any], saved: Sequence[Tensor], out: Any, dout: Any) -> Any:
            douts = dout if isinstance(dout, tuple) else (dout,)
            return cls.backward(ctx.replaced(saved), *douts)

        return apply_custom(
            f"{cls.__qualname__}.backward", lambda *a: cls.forward(ctx, *a), args, backward,
            saved=lambda: [t for _, t in ctx.tensors()], none_is_zero=True,
        )
