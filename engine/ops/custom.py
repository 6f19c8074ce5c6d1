"""CustomVjp: a user-defined derivative (MindSpore's ``Cell.bprop``, ``custom_vjp``, ``Function``).

The forward is traced inline with its nodes marked ``stop_gradient``; a CustomVjp node then passes the
forward's outputs through unchanged and carries the name of a library graph, the bprop. Its VJP rule
inlines that graph, so reverse mode uses the user's rule, and higher orders differentiate the bprop's
own nodes. Inputs are ``(x..., saved..., y...)``: ``n_inputs`` differentiable inputs, ``n_saved``
tensors the bprop reads (``ctx.save_for_backward``), and the forward outputs. The bprop graph takes
``(x..., saved..., out..., dout...)`` and returns one cotangent per x.
"""
from __future__ import annotations

from typing import Any, Sequence

from gradserve.engine.autodiff import inline
from gradserve.engine.errors import GraphError, ShapeError, shown
from gradserve.engine.ir import Graph, TensorType, Value, flatten
from gradserve.engine.ops.common import dense_cotangents
from gradserve.engine.optable import Attr, defop, view_cost


def _infer(types: list[TensorType], bprop: str, n_inputs: int, n_saved: int, label: str) -> tuple[TensorType, ...]:
    """The outputs are the forward's outputs: the inputs after the first ``n_inputs + n_saved``."""
    if n_inputs < 0 or n_saved < 0 or n_inputs + n_saved >= len(types):
        raise ShapeError(
            f"n_inputs={n_inputs} and n_saved={n_saved} must leave at least one forward output among {len(types)} inputs"
        )
    return tuple(types[n_inputs + n_saved:])


def _forward(*arrays: Any, bprop: str, n_inputs: int, n_saved: int, label: str) -> Any:
    outs = arrays[n_inputs + n_saved:]
    return outs[0] if len(outs) == 1 else tuple(outs)  # the executor stores a one-output step's result as it is


def call_graph(g: Graph, args: Sequence[Value]) -> list[Value]:
    """Copy ``g``'s nodes into the builder that owns ``args``, applied to them; the flat outputs. Nodes that carry
    a library graph (GradOperation, CustomVjp) stay nodes: the library is shared."""
    b = args[0].builder
    if b is None:
        raise GraphError(f"graph {shown(g.name)}: its arguments belong to a finished graph")
    return flatten(inline(b, g, args, expand_all=False))


def _vjp(g: Any, out: Any, *inputs: Value, bprop: str, n_inputs: int, n_saved: int, label: str) -> tuple[Any, ...]:
    """The user's bprop inlined: cotangents for the x inputs, none for the saved tensors and forward outputs."""
    b = inputs[0].builder
    who = f"the bprop of {shown(label or bprop)}"
    graph = b.library.get(bprop) if b is not None else None
    if graph is None:
        raise GraphError(f"{who}: library function {shown(bprop)} is missing")
    if not isinstance(out, tuple):  # reverse mode passes a one-output node its output and cotangent bare
        g, out = (g,), (out,)
    douts = dense_cotangents(g, out)
    args = list(inputs[: n_inputs + n_saved]) + list(out) + douts
    if len(graph.inputs) != len(args):
        raise GraphError(f"{who}: takes {len(graph.inputs)} inputs, the node gives it {len(args)}")
    grads = call_graph(graph, args)
    if len(grads) != n_inputs:
        raise GraphError(f"{who}: returns {len(grads)} gradients for {n_inputs} inputs")
    for i, (ct, x) in enumerate(zip(grads, inputs)):
        if ct.type != x.type:
            raise GraphError(f"{who}: gradient {i} is {ct.type}, its input is {x.type}")
    return tuple(grads) + (None,) * (len(inputs) - n_inputs)


defop(
    "CustomVjp",
    ("args*",),
    _infer,
    _forward,
    _vjp,
    attrs={
        "bprop": Attr("str", doc="library graph (x..., saved..., out..., dout...) -> one gradient per x"),
        "n_inputs": Attr("int", doc="how many leading inputs take the bprop's gradients"),
        "n_saved": Attr("int", 0, "how many inputs after them the bprop reads without differentiating them"),
        "label": Attr("str", "", "the Cell or function whose bprop this is, for messages"),
    },
    doc="Passes the forward's outputs (its last inputs) through; its gradient is the library graph `bprop`.",
    outputs=("outs*",),
    memory="maybe_view",
    cost=view_cost,
    calls=("bprop",),
    onnx=lambda c: [("Identity", (x,), (y,)) for x, y in zip(c.x[len(c.x) - len(c.y):], c.y)],
)
