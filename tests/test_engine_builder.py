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


def test_python_scalars_are_one_const_node_per_value_and_dtype() -> None:
    import numpy as np

    from gradserve.engine import compile_graph

    g = GraphBuilder("consts")
    x = g.input("x", "float32", (3,))
    y = (1 - x) * (1 - x * x) + (x * 1.0 + x * -0.0) + (x * 0.0)
    c32 = [n for n in g.nodes if n.op == "Const"]
    assert len([n for n in c32 if n.attrs["value"] == 1]) == 2  # int 1 and float 1.0 are kept apart
    assert len(c32) == 4  # 1, 1.0, -0.0, 0.0
    assert [np.signbit(n.attrs["value"]) for n in c32 if n.attrs["value"] == 0] == [True, False]
    assert g.const(2, "float64") is not g.const(2, "float32")
    xs = np.array([0.5, -1.0, 2.0], np.float32)
    np.testing.assert_allclose(compile_graph(g.build(y))(xs), (1 - xs) * (1 - xs * xs) + xs, rtol=1e-6)


def test_inference_is_remembered_only_for_equal_types_and_attributes() -> None:
    g = GraphBuilder("infer")
    a = g.input("a", "float32", (2, 3))
    b = g.input("b", "float32", (2, 3))
    assert g.op("MatMul", a, b, transpose_b=True).shape == (2, 2)
    assert g.op("MatMul", a, b, transpose_a=True).shape == (3, 3)
    with pytest.raises(ShapeError, match="inner dimensions 3 and 2"):
        g.op("MatMul", a, b)
    assert g.op("ReduceSum", a, axis=(1,), keep_dims=True).shape == (2, 1)
    assert g.op("ReduceSum", a, axis=(1,), keep_dims=False).shape == (2,)
    with pytest.raises(GraphError, match="keep_dims"):
        g.op("ReduceSum", a, axis=(1,), keep_dims=1)


def test_names_ending_in_thousands_of_digits_are_names_like_any_other() -> None:
    digits = "7" * 5000  # more than Python converts to an int by default
    g = GraphBuilder("long")
    x = g.input("x", "float32", (2,))
    y = g.add_node("Tanh", [x], name=f"tanh_{digits}", output_names=[f"%{digits}"])[0]
    z = g.add_node("Sin", [y], name_hint=f"sin_{digits}")[0]
    graph = g.build(z)
    assert [n.name for n in graph.nodes] == [f"tanh_{digits}", f"sin_{digits}"]
    assert (y.name, z.name) == (f"%{digits}", "%0")
    with pytest.raises(GraphError, match=r"node name 'tanh_7+'\.\.\. \(5005 characters\) is used twice"):
        g2 = GraphBuilder("twice")
        x2 = g2.input("x", "float32", (2,))
        g2.add_node("Tanh", [x2], name=f"tanh_{digits}")
        g2.add_node("Tanh", [x2], name=f"tanh_{digits}")
