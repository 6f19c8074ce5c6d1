"""Transform nodes: ops that carry a library graph (attribute ``fn``) and stand for a transform of it.

Each entry's ``expand(library, attrs)`` returns the transformed graph; lowering inlines it in place of
the node (inner nodes first), so a composed transform is one network whose nodes nest through the
library. Outputs are the transformed graph's flattened output tree.
"""
from __future__ import annotations

from typing import Any, Callable

from gradserve.engine.autodiff import grad_operation, shared_param, vjp
from gradserve.engine.builder import GraphBuilder
from gradserve.engine.errors import GraphError, shown, shown_names
from gradserve.engine.forward import jacobian, jvp
from gradserve.engine.ir import Graph, TensorType
from gradserve.engine.optable import Attr, defop

Expand = Callable[[dict[str, Graph], dict[str, Any]], Graph]

FN = Attr("str", doc="name of the library graph to transform")
POSITIONS = Attr("ints", (0,), "indices of the inputs to differentiate")


def _function(library: dict[str, Graph], fn: str) -> Graph:
    if fn not in library:
        raise GraphError(f"refers to function {shown(fn)}, which is not in the library {shown_names(sorted(library))}")
    return library[fn]


def _infer(expand: Expand, op: str) -> Callable[..., tuple[TensorType, ...]]:
    """Output types of a transform node: the flattened outputs of its expansion, whose inputs must match the
    node's; the expansion's parameters are declared in the enclosing graph, shared by name."""

    def infer(types: list[TensorType], builder: GraphBuilder, **attrs: Any) -> tuple[TensorType, ...]:
        """The node's output types, from the transformed library graph."""
        sub = expand(builder.library, attrs)
        want = [v.type for v in sub.inputs]
        if types != want:
            raise GraphError(
                f"function {shown(attrs['fn'])} under {op} takes inputs {[str(t) for t in want]}, got {[str(t) for t in types]}"
            )
        for p in sub.params:
            shared_param(builder, p.name, p.data, p.requires_grad)
        return tuple(v.type for v in sub.flat_outputs)

    return infer


def _not_executable(*_: Any, **__: Any) -> Any:
    raise AssertionError("transform nodes are expanded by lowering and never executed")


def transform(name: str, expand: Expand, attrs: dict[str, Attr], doc: str, outputs: str) -> None:
    """Register a transform op: variadic inputs, outputs counted by its expansion, expanded before running."""
    defop(
        name, ("args*",), _infer(expand, name), _not_executable, None, attrs={"fn": FN, **attrs}, doc=doc,
        outputs=(f"{outputs}*",), expand=expand, calls=("fn",), public=False,
    )


def _grad_operation(library: dict[str, Graph], attrs: dict[str, Any]) -> Graph:
    flags = {k: attrs[k] for k in ("get_all", "get_by_list", "sens_param", "weights")}
    return grad_operation(_function(library, attrs["fn"]), **flags)


def _used(attrs: dict[str, Any]) -> int | None:
    return 1 if attrs["has_aux"] else None


transform(
    "GradOperation",
    _grad_operation,
    {
        "get_all": Attr("bool", False, "gradients for all inputs"),
        "get_by_list": Attr("bool", False, "gradients for the listed weights"),
        "sens_param": Attr("bool", False, "the last inputs are output sensitivities, one per output leaf"),
        "weights": Attr("strs", (), "parameter names for get_by_list"),
    },
    "Applies MindSpore's GradOperation to a library graph; outputs are the flattened gradient tree.",
    "grads",
)
transform(
    "Grad",
    lambda lib, a: vjp(_function(lib, a["fn"]), a["positions"], a["weights"], False, _used(a)),
    {
        "positions": POSITIONS,
        "weights": Attr("strs", (), "parameter names to differentiate"),
        "has_aux": Attr("bool", False, "only the first output leaf is differentiated (the others are aux values)"),
    },
    "Gradient of the sum of fn's output leaves (the first leaf only with has_aux); outputs: fn's output leaves, "
    "then the gradients of the inputs at positions, then of the weights.",
    "values_and_grads",
)
transform(
    "Vjp",
    lambda lib, a: vjp(_function(lib, a["fn"]), a["positions"], a["weights"], True, _used(a)),
    {
        "positions": POSITIONS,
        "weights": Attr("strs", (), "parameter names to differentiate"),
        "has_aux": Attr("bool", False, "only the first output leaf takes a cotangent (the others are aux values)"),
    },
    "Vector-Jacobian product; inputs: fn's inputs, then one cotangent per differentiated output leaf; outputs: "
    "fn's output leaves, then the gradients of the inputs at positions, then of the weights.",
    "values_and_grads",
)
transform(
    "Jvp",
    lambda lib, a: jvp(_function(lib, a["fn"]), a["positions"]),
    {"positions": POSITIONS},
    "Jacobian-vector product (forward mode); inputs: fn's inputs, then one tangent per input at positions; "
    "outputs: fn's output leaves, then their tangents.",
    "values_and_tangents",
)
transform(
    "Jacobian",
    lambda lib, a: jacobian(_function(lib, a["fn"]), a["positions"], a["mode"]),
    {"positions": POSITIONS, "mode": Attr("str", "forward", "forward (one JVP per input element) or reverse (one VJP per output element)")},
    "Jacobians of fn; outputs: fn's output leaves, then d out_i / d x_j (shape out_i.shape + x_j.shape) for each "
    "output leaf i and then each position j.",
    "values_and_jacobians",
)
