"""Graph decoding rejects every malformed network with one WireError naming the field (and node) at
fault; Grad/Run arguments are checked the same way; ListOps mirrors the op table."""
from __future__ import annotations

import struct
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from gradserve.engine import OPS, NotDifferentiableError, compile_graph
from gradserve.engine.optable import REQUIRED, defop
from gradserve.proto import codec
from gradserve.v1 import graph_pb2 as pb
from gradserve.v1 import service_pb2 as spb

F32, F64 = pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64


def f32(shape: list[int], *values: float) -> pb.Tensor:
    return pb.Tensor(dtype=F32, shape=shape, data=struct.pack(f"<{len(values)}f", *values))


def net() -> pb.Graph:
    """x:[2,3], y:[3,3], z:[1] -> MatMul(x * z, y), with its nodes listed out of order."""
    return pb.Graph(
        inputs=[pb.GraphInput(name="x", dtype=F32, shape=[2, 3]), pb.GraphInput(name="y", dtype=F32, shape=[3, 3])],
        parameters=[pb.Parameter(name="z", value=f32([1], 1.0))],
        nodes=[
            pb.Node(op="MatMul", inputs=["xz", "y"], outputs=["out"], name="matmul"),
            pb.Node(op="Mul", inputs=["x", "z"], outputs=["xz"], name="scale"),
        ],
        outputs=pb.ValueTree(value="out"),
    )


def chain(depth: int) -> pb.Graph:
    """A network whose main graph applies GradOperation to f{depth-1}, which applies it to f{depth-2}, ... f0 = sin."""
    g = pb.Graph()
    for k in range(depth + 1):
        f = g.library[f"f{k}"] if k < depth else g
        f.inputs.add(name="x", dtype=F64, shape=[])
        if k == 0:
            f.nodes.add(op="Sin", inputs=["x"], outputs=["y"])
        else:
            n = f.nodes.add(op="GradOperation", inputs=["x"], outputs=["y"])
            n.attrs["fn"].string_value = f"f{k - 1}"
        f.outputs.value = "y"
    return g


def test_valid_network_decodes_in_dependency_order() -> None:
    g = codec.decode_graph(net())
    assert [n.name for n in g.nodes] == ["scale", "matmul"]
    assert g.nodes[1].attrs == {"transpose_a": False, "transpose_b": False}
    assert [p.name for p in g.params] == ["z"] and g.params[0].requires_grad


Mutation = Callable[[pb.Graph], object]


def _set_attr(g: pb.Graph, i: int, key: str, **value: Any) -> None:
    g.nodes[i].attrs[key].CopyFrom(pb.AttrValue(**value))


CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown op lists close names", lambda g: setattr(g.nodes[0], "op", "Matmul"), "graph.nodes[0].op", "unknown op 'Matmul'; did you mean MatMul"),
    ("empty op", lambda g: setattr(g.nodes[0], "op", ""), "graph.nodes[0].op", "op is not set"),
    ("dangling input", lambda g: g.nodes[0].inputs.__setitem__(1, "w"), "graph.nodes[0].inputs[1]", "'w' is not defined"),
    ("duplicate output", lambda g: g.nodes[1].outputs.__setitem__(0, "x"), "graph.nodes[1].outputs[0]", "already defined by graph.inputs[0].name"),
    ("duplicate input", lambda g: setattr(g.inputs[1], "name", "x"), "graph.inputs[1].name", "already defined"),
    ("empty name", lambda g: setattr(g.inputs[1], "name", ""), "graph.inputs[1].name", "must not be empty"),
    ("wrong attr type", lambda g: _set_attr(g, 0, "transpose_a", int_value=1), 'graph.nodes[0].attrs["transpose_a"]', "bool_value must be set; got int_value"),
    ("attr without value", lambda g: _set_attr(g, 0, "transpose_a"), 'graph.nodes[0].attrs["transpose_a"]', "no value is set"),
    ("unknown attr", lambda g: _set_attr(g, 0, "transpose_c", bool_value=True), 'graph.nodes[0].attrs["transpose_c"]', "did you mean"),
    ("shape mismatch", lambda g: g.inputs[1].shape.__setitem__(0, 2), "graph.nodes[0]", "inner dimensions 3 and 2 differ"),
    ("dtype mismatch", lambda g: setattr(g.inputs[1], "dtype", F64), "graph.nodes[0]", "float32, float64"),
    ("input dtype unset", lambda g: setattr(g.inputs[0], "dtype", 0), "graph.inputs[0].dtype", "not set"),
    ("negative input dim", lambda g: g.inputs[0].shape.__setitem__(0, -2), "graph.inputs[0].shape[0]", "negative"),
    ("output count", lambda g: g.nodes[1].outputs.append("extra"), "graph.nodes[1]", "2 output names given"),
    ("param without value", lambda g: g.parameters[0].ClearField("value"), "graph.parameters[0].value", "no value"),
    ("param bad bytes", lambda g: setattr(g.parameters[0].value, "data", b"\0"), "graph.parameters[0].value.data", "has 1 bytes"),
    ("outputs unset", lambda g: g.ClearField("outputs"), "graph.outputs", "not set"),
    ("output unknown", lambda g: setattr(g.outputs, "value", "ouy"), "graph.outputs.value", "did you mean 'out'"),
    ("empty tree", lambda g: g.outputs.tuple.items.add(), "graph.outputs.tuple.items[0]", "neither value nor tuple"),
    (
        "cycle",
        lambda g: g.nodes[1].inputs.__setitem__(0, "out"),
        "graph.nodes[0]",
        "cycle (each reads the next): nodes[0] 'matmul' (MatMul) -> nodes[1] 'scale' (Mul) -> nodes[0]",
    ),
    ("self cycle", lambda g: g.nodes[0].inputs.__setitem__(0, "out"), "graph.nodes[0]", "cycle"),
    ("duplicate node name", lambda g: setattr(g.nodes[0], "name", "scale"), "graph.nodes[0]", "used twice"),
]


@pytest.mark.parametrize(("mutate", "field", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_graph_names_the_field(mutate: Mutation, field: str, text: str) -> None:
    g = net()
    mutate(g)
    with pytest.raises(codec.WireError) as e:
        codec.decode_graph(pb.Graph.FromString(g.SerializeToString()))
    assert e.value.field == field, str(e.value)
    assert text in str(e.value)
    assert str(e.value).startswith(field) and not isinstance(e.value, codec.LimitError)


def test_node_errors_carry_the_node_label() -> None:
    g = net()
    g.nodes[0].op = "Matmul"
    with pytest.raises(codec.WireError) as e:
        codec.decode_graph(g)
    assert str(e.value).startswith("graph.nodes[0].op 'matmul' (Matmul): unknown op 'Matmul'")
    assert e.value.description.startswith("'matmul' (Matmul): ")


def test_library_errors() -> None:
    g = chain(2)
    g.library["f1"].nodes[0].attrs["fn"].string_value = "f00"
    with pytest.raises(codec.WireError, match=r"refers to function 'f00'.*did you mean 'f0'") as e:
        codec.decode_graph(g)
    assert e.value.field == 'graph.library["f1"].nodes[0].attrs["fn"]'

    g = chain(2)
    g.library["f0"].CopyFrom(g.library["f1"])
    g.library["f0"].nodes[0].attrs["fn"].string_value = "f1"
    with pytest.raises(codec.WireError, match="cycle: f0 -> f1 -> f0") as e:
        codec.decode_graph(g)
    assert e.value.field == 'graph.library["f0"]'

    g = chain(2)
    g.library["f1"].library["f0"].CopyFrom(g.library["f0"])
    with pytest.raises(codec.WireError, match="only the top-level graph") as e:
        codec.decode_graph(g)
    assert e.value.field == 'graph.library["f1"].library'

    g = chain(1)
    g.nodes[0].attrs["fn"].int_value = 3
    with pytest.raises(codec.WireError, match="string_value must be set") as e:
        codec.decode_graph(g)
    assert e.value.field == 'graph.nodes[0].attrs["fn"]'


def test_second_derivative_chain_decodes_and_runs() -> None:
    g = codec.decode_graph(chain(2))
    y = compile_graph(g)(np.array(3.1415926))
    assert y == pytest.approx(-np.sin(3.1415926), abs=1e-15)


def test_limits() -> None:
    with pytest.raises(codec.LimitError, match="nest 4 deep") as e:
        codec.decode_graph(chain(4), codec.Limits(max_nesting_depth=3))
    assert e.value.field == "graph"
    codec.decode_graph(chain(3), codec.Limits(max_nesting_depth=3))

    with pytest.raises(codec.LimitError, match="3 nodes") as e:
        codec.decode_graph(chain(2), codec.Limits(max_graph_nodes=2))
    assert e.value.field == "graph.nodes"

    with pytest.raises(codec.LimitError, match="expanding GradOperation") as e:
        codec.decode_graph(chain(3), codec.Limits(max_graph_nodes=8))
    assert e.value.field.endswith(".nodes[0]")

    g = net()
    t = g.outputs
    for _ in range(5):
        t = t.tuple.items.add()
    t.value = "out"
    with pytest.raises(codec.LimitError, match="deeper than the limit of 4") as e:
        codec.decode_graph(g, codec.Limits(max_nesting_depth=4))
    assert e.value.field == "graph.outputs" + ".tuple.items[0]" * 4

    g = net()
    n = g.nodes.add(op="BroadcastTo", inputs=["out"], outputs=["big"])
    n.attrs["shape"].ints.values.extend([1 << 20, 1 << 20, 2, 3])
    with pytest.raises(codec.LimitError, match="would be float32") as e:
        codec.decode_graph(g)
    assert e.value.field == "graph.nodes[2].outputs[0]"


@pytest.fixture
def no_grad_op() -> Iterator[str]:
    """A temporary op without a VJP rule."""
    name = "TestOnlyNoGrad"
    defop(name, ("x",), lambda t: t[0], lambda x: x, None, doc="identity without a gradient")
    try:
        yield name
    finally:
        del OPS[name]


def test_gradient_through_an_op_without_one_is_not_differentiable(no_grad_op: str) -> None:
    g = chain(1)
    g.library["f0"].nodes[0].op = no_grad_op
    with pytest.raises(NotDifferentiableError, match=r"^graph.nodes\[0\] \(GradOperation\): .*has no gradient"):
        codec.decode_graph(g)
    plain = chain(0)
    plain.nodes[0].op = no_grad_op
    with pytest.raises(NotDifferentiableError, match=r"^grad: .*has no gradient"):
        codec.apply_grad_operation(codec.decode_graph(plain), pb.GradOperation())


def _req(**kw: object) -> spb.GradRequest:
    x = f32([2, 3], 0.8, 0.6, 0.2, 1.8, 1.3, 1.1)
    y = f32([3, 3], 0.11, 3.3, 1.1, 1.1, 0.2, 1.4, 1.1, 2.2, 0.3)
    kw.setdefault("inputs", [x, y])
    return spb.GradRequest(**kw)  # type: ignore[arg-type]


CALL_CASES = [
    ("unknown weight", _req(grad=pb.GradOperation(get_by_list=True, weights=["q"])), "grad.weights[0]", "not a parameter"),
    ("weights without get_by_list", _req(grad=pb.GradOperation(weights=["z"])), "grad.weights", "get_by_list is false"),
    ("bare needs one weight", _req(grad=pb.GradOperation(get_by_list=True, bare_weight=True)), "grad.bare_weight", "exactly one"),
    ("input count", spb.GradRequest(inputs=[f32([1], 1.0)]), "inputs", "expected 2 tensors (x: float32[2,3], y: float32[3,3]), got 1"),
    ("input type", _req(inputs=[f32([6], *range(6)), f32([3, 3], *range(9))]), "inputs[0]", "'x' is declared float32[2,3], got float32[6]"),
    ("sens without flag", _req(sens=[f32([2, 3], *range(6))]), "sens", "sens_param is false"),
    ("missing sens", _req(grad=pb.GradOperation(sens_param=True)), "sens", "expected 1 tensors (sens: float32[2,3])"),
    ("unknown override", _req(parameters={"zz": f32([1], 2.0)}), 'parameters["zz"]', "did you mean 'z'"),
    ("override type", _req(parameters={"z": f32([2], 2.0, 3.0)}), 'parameters["z"]', "is float32[1], got float32[2]"),
]


@pytest.mark.parametrize(("req", "field", "text"), [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_bad_grad_calls_name_the_field(req: spb.GradRequest, field: str, text: str) -> None:
    with pytest.raises(codec.WireError) as e:
        codec.decode_grad_call(codec.decode_graph(net()), req)
    assert e.value.field == field and text in str(e.value), str(e.value)


def test_grad_and_run_calls() -> None:
    network = codec.decode_graph(net())
    req = _req(grad=codec.encode_grad_operation(get_by_list=True, weights="z"), parameters={"z": f32([1], 2.0)})
    call = codec.decode_grad_call(network, req)
    dz = compile_graph(call.graph)(*call.args, params=call.params)
    assert isinstance(dz, np.ndarray) and dz.shape == (1,) and dz[0] == pytest.approx(21.536, rel=1e-6)
    run = codec.decode_run_call(network, spb.RunRequest(inputs=req.inputs))
    out = compile_graph(run.graph)(*run.args, params=run.params)
    tree = codec.decode_tree(pb.TensorTree.FromString(codec.encode_tree((out, [out])).SerializeToString()))
    assert isinstance(tree, tuple) and isinstance(tree[1], tuple) and np.array_equal(tree[1][0], out)
    with pytest.raises(codec.LimitError):
        codec.decode_tree(codec.encode_tree(((out,),)), codec.Limits(max_nesting_depth=2))


def test_list_ops_mirrors_the_op_table() -> None:
    resp = spb.ListOpsResponse.FromString(codec.list_ops().SerializeToString())
    assert [o.name for o in resp.ops] == sorted(OPS)
    for o in resp.ops:
        opdef = OPS[o.name]
        assert o.differentiable == opdef.differentiable and o.doc == opdef.doc
        assert list(o.inputs) + ([o.variadic_input + "*"] if o.variadic_input else []) == list(opdef.inputs)
        assert [a.name for a in o.attrs] == list(opdef.attrs)
        for a in o.attrs:
            spec = opdef.attrs[a.name]
            assert spb.AttrKind.Name(a.kind) == f"ATTR_KIND_{spec.kind.upper()}"
            assert a.required == (spec.default is REQUIRED) and a.doc == spec.doc
            if not a.required and spec.default is not None:
                assert codec.decode_attr(a.default, spec.kind, codec.DEFAULT_LIMITS, "d") == spec.default
    grad = next(o for o in resp.ops if o.name == "GradOperation")
    assert grad.variadic_input == "args" and not grad.inputs and grad.differentiable


def test_list_ops_names_each_ops_outputs() -> None:
    """Another language learns from ListOps how many output names a node needs."""
    ops = {o.name: o for o in codec.list_ops().ops}
    assert list(ops["MatMul"].outputs) == ["y"] and not ops["MatMul"].variadic_output
    assert list(ops["LayerNorm"].outputs) == ["y", "mean", "rstd"]
    assert list(ops["SoftmaxCrossEntropyWithLogits"].outputs) == ["loss", "backprop"]
    assert not ops["Split"].outputs and ops["Split"].variadic_output == "pieces"
    assert not ops["GradOperation"].outputs and ops["GradOperation"].variadic_output == "grads"
