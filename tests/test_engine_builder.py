"""engine/builder.py: GraphBuilder checks each node as it is added, so bad graphs fail at build time,
before any array exists, with errors naming the op, the node and the shapes."""
from __future__ import annotations

import pytest

from gradserve.engine import GraphBuilder, GraphError, ShapeError


def test_shape_error_names_op_node_and_shapes() -> None:
    g = GraphBuilder("bad")
    a, b = g.input("a", "float32", (2, 3)), g.input("b", "float32", (4, 5))
    with pytest.raises(ShapeError, match=r"MatMul 'matmul_3': inner dimensions 3 and 4 differ for shapes \(2, 3\) and \(4, 5\)"):
        g.add_node("MatMul", [a, b], name="matmul_3")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda g, x: g.op("MatMull", x, x), r"unknown op 'MatMull'; did you mean MatMul"),
        (lambda g, x: g.op("Sin", x, x), r"Sin 'sin_0': takes 1 inputs \(x\), got 2"),
        (lambda g, x: g.op("ReduceSum", x, axes=(0,)), r"unknown attribute\(s\) \['axes'\]"),
        (lambda g, x: g.op("ReduceSum", x, keep_dims=1), r"attribute 'keep_dims' must be bool"),
        (lambda g, x: g.op("Reshape", x), r"missing required attribute 'shape'"),
        (lambda g, x: g.op("Add", x, GraphBuilder("other").input("y", "float32", (2,))), r"input 'y' is not defined in graph 'g'"),
        (lambda g, x: g.input("x", "float32", (1,)), r"value name 'x' is defined twice"),
        (lambda g, x: g.op("Sin", g.op("Cast", x, dtype="int32")), r"x must be a float dtype, got int32"),
    ],
)
def test_bad_graphs_fail_at_build_time(build, message: str) -> None:  # type: ignore[no-untyped-def]
    g = GraphBuilder("g")
    x = g.input("x", "float32", (2,))
    with pytest.raises(GraphError, match=message):
        build(g, x)
