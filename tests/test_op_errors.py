"""Bad shapes, dtypes, attributes and arity fail when the node is added, with the engine's errors
and messages that name the op, the node and the shapes at fault."""
from __future__ import annotations

from typing import Any

import pytest

from gradserve.engine import DTypeError, GraphBuilder, GraphError, ShapeError

F32, F64, I32, B = "float32", "float64", "int32", "bool"
SL = dict(begin=(0,), end=(1,), strides=(1,))

# (op, [(dtype, shape) per input], attrs, error, fragments the message must contain besides op and node)
CASES: list[tuple[str, list[tuple[str, tuple[int, ...]]], dict[str, Any], type[Exception], list[str]]] = [
    ("Add", [(F32, (2, 3)), (F32, (4,))], {}, ShapeError, ["(2, 3) and (4,) do not broadcast", "'x0': f32[2,3]"]),
    ("Add", [(F32, (2,)), (F64, (2,))], {}, DTypeError, ["float32, float64"]),
    ("Sub", [(B, (2,)), (B, (2,))], {}, DTypeError, ["bool"]),
    ("RealDiv", [(I32, (2,)), (I32, (2,))], {}, DTypeError, ["int32"]),
    ("Pow", [(I32, ()), (I32, ())], {}, DTypeError, ["int32"]),
    ("Log", [(I32, (3,))], {}, DTypeError, ["int32", "'x0': i32[3]"]),
    ("Neg", [(B, (3,))], {}, DTypeError, ["bool"]),
    ("Select", [(F32, (2,)), (F32, (2,)), (F32, (2,))], {}, DTypeError, ["condition must be bool"]),
    ("Select", [(B, (3,)), (F32, (2,)), (F32, (2,))], {}, ShapeError, ["(3,) and (2,) and (2,)"]),
    ("MatMul", [(F32, (2, 3)), (F32, (4, 5))], {}, ShapeError, ["inner dimensions 3 and 4", "(2, 3) and (4, 5)"]),
    ("MatMul", [(F32, (2, 3, 4)), (F32, (4, 5))], {}, ShapeError, ["matrices", "(2, 3, 4)"]),
    ("BatchMatMul", [(F32, (3,)), (F32, (3, 2))], {}, ShapeError, ["rank >= 2", "(3,)"]),
    ("BatchMatMul", [(F32, (2, 2, 3)), (F32, (3, 3, 4))], {}, ShapeError, ["(2,) and (3,) do not broadcast"]),
    ("ReduceSum", [(F32, (2, 3))], {"axis": (2,)}, ShapeError, ["axis 2 is out of range for rank 2", "f32[2,3]"]),
    ("ReduceMean", [(I32, (2, 3))], {}, DTypeError, ["int32"]),
    ("Reshape", [(F32, (2, 3))], {"shape": (4, 2)}, ShapeError, ["cannot reshape (2, 3)", "(4, 2)"]),
    ("BroadcastTo", [(F32, (2, 3))], {"shape": (2, 4)}, ShapeError, ["(2, 3) and (2, 4) do not broadcast"]),
    ("Transpose", [(F32, (2, 3))], {"perm": (0, 0)}, ShapeError, ["perm (0, 0)"]),
    ("Squeeze", [(F32, (2, 3))], {"axis": (1,)}, ShapeError, ["axis 1 of length 3"]),
    ("Squeeze", [(F32, ())], {"axis": (0,)}, ShapeError, ["axis 0 of a rank-0 tensor"]),
    ("Concat", [(F32, (2, 3)), (F32, (3, 2))], {"axis": 0}, ShapeError, ["(2, 3), (3, 2) must agree except on axis 0"]),
    ("Concat", [(F32, (2, 3)), (F32, (2, 3, 1))], {"axis": 1}, ShapeError, ["(2, 3), (2, 3, 1)"]),
    ("Concat", [(F32, (2,)), (I32, (2,))], {}, DTypeError, ["float32, int32"]),
    ("Concat", [(F32, ())], {}, ShapeError, ["scalars"]),
    ("Split", [(F32, (2, 5))], {"axis": 1, "output_num": 2}, ShapeError, ["length 5, not divisible by output_num 2", "(2, 5)"]),
    ("Split", [(F32, (4,))], {"output_num": 0}, GraphError, ["output_num must be at least 1"]),
    ("StridedSlice", [(F32, (2, 3))], dict(begin=(0, 3), end=(0, 4), strides=(1, 1), shrink_axis_mask=2), ShapeError,
     ["shrink index 3 is out of range for axis 1 of shape (2, 3)"]),
    ("StridedSlice", [(F32, (2,))], dict(begin=(0, 0, 0), end=(1, 1, 1), strides=(1, 1, 1)), ShapeError, ["3 sliced positions exceed the rank of shape (2,)"]),
    ("StridedSlice", [(F32, (2,))], dict(begin=(0,), end=(1,), strides=(0,)), GraphError, ["strides (0,) must be non-zero"]),
    ("StridedSlice", [(F32, (2,))], dict(begin=(0,), end=(1, 2), strides=(1,)), GraphError, ["must have one length"]),
    ("StridedSlice", [(F32, (2,))], dict(SL, begin_mask=4), GraphError, ["begin_mask 4 sets bits beyond the 1 slice positions"]),
    ("StridedSlice", [(F32, (2, 2))], dict(begin=(0, 0), end=(1, 1), strides=(1, 1), ellipsis_mask=3), GraphError, ["at most one bit"]),
    ("StridedSliceGrad", [(F32, (2,))], dict(SL, shape=(4,)), ShapeError, ["dy has shape (2,)", "shape (4,) has shape (1,)"]),
    ("Gather", [(F32, (4, 3)), (F32, (2,))], {"axis": 0}, DTypeError, ["indices must be int32 or int64, got float32"]),
    ("Gather", [(F32, (4, 3)), (I32, (2,))], {"axis": 2}, ShapeError, ["axis 2 is out of range for rank 2", "f32[4,3]"]),
    ("Gather", [(F32, (4, 3)), (I32, (2,))], {"axis": 0, "batch_dims": 1}, GraphError, ["only batch_dims=0"]),
    ("Gather", [(F32, ()), (I32, (2,))], {"axis": 0}, ShapeError, ["rank >= 1"]),
    ("UnsortedSegmentSum", [(F32, (4, 3)), (I32, (3,))], {"num_segments": 2}, ShapeError, ["(3,) must be a prefix of x shape (4, 3)"]),
    ("UnsortedSegmentSum", [(F32, (4,)), (F32, (4,))], {"num_segments": 2}, DTypeError, ["segment_ids must be int32 or int64"]),
    ("Tile", [(F32, (2, 3))], {"multiples": (2,)}, ShapeError, ["multiples (2,) are fewer than the 2 axes of shape (2, 3)"]),
    ("Tile", [(F32, (2,))], {"multiples": (0,)}, GraphError, ["multiples (0,) must be positive"]),
    ("Softmax", [(I32, (2, 3))], {}, DTypeError, ["int32"]),
    ("Softmax", [(F32, ())], {}, ShapeError, ["rank >= 1"]),
    ("Softmax", [(F32, (2, 3))], {"axis": (0, 2)}, ShapeError, ["axis 2 is out of range for rank 2"]),
    ("LogSoftmax", [(F32, (2, 3))], {"axis": -3}, ShapeError, ["axis -3 is out of range for rank 2"]),
    ("SoftmaxCrossEntropyWithLogits", [(F32, (2, 3)), (F32, (2, 4))], {}, ShapeError, ["(N, C), got (2, 3) and (2, 4)"]),
    ("SoftmaxCrossEntropyWithLogits", [(F32, (3,)), (F32, (3,))], {}, ShapeError, ["got (3,) and (3,)"]),
    ("SoftmaxCrossEntropyWithLogits", [(I32, (2, 3)), (I32, (2, 3))], {}, DTypeError, ["int32"]),
    ("LayerNorm", [(F32, (2, 3)), (F32, (2,)), (F32, (3,))], {}, ShapeError, ["gamma (2,) and beta (3,) must have shape x.shape[1:] = (3,)"]),
    ("LayerNorm", [(F32, (2, 3)), (F64, (3,)), (F32, (3,))], {}, DTypeError, ["float32, float64"]),
    ("LayerNorm", [(F32, (2, 3)), (F32, (3,)), (F32, (3,))], {"begin_norm_axis": 2}, ShapeError, ["begin_norm_axis 2 is out of range for rank 2"]),
    ("Conv2D", [(F32, (1, 4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 3, "kernel_size": 3}, ShapeError,
     ["weight has shape (2, 4, 3, 3), expected (out_channel, in_channel / group, kh, kw) = (3, 4, 3, 3)"]),
    ("Conv2D", [(F32, (1, 4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3, "group": 3}, GraphError,
     ["group 3 must be positive and divide the 4 input and 2 output channels"]),
    ("Conv2D", [(F32, (1, 4, 2, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3}, ShapeError,
     ["window of extent 3 is larger than the padded input length 2"]),
    ("Conv2D", [(F32, (4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3}, ShapeError, ["x must be NCHW (rank 4)"]),
    ("Conv2D", [(F32, (1, 4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3, "pad": 1}, GraphError,
     ["pad must be 0 unless pad_mode is 'pad'"]),
    ("Conv2D", [(F32, (1, 4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3, "pad_mode": "full"}, GraphError,
     ["pad_mode must be one of valid, same, pad, got 'full'"]),
    ("Conv2D", [(F32, (1, 4, 5, 5)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3, "stride": (1, 0)}, GraphError,
     ["stride must be a positive int, a pair or a 4-tuple, got (1, 0)"]),
    ("Conv2D", [(I32, (1, 4, 5, 5)), (I32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3}, DTypeError, ["int32"]),
    ("Conv2DBackpropInput", [(F32, (1, 2, 4, 4)), (F32, (2, 4, 3, 3))], {"out_channel": 2, "kernel_size": 3, "input_size": (1, 4, 5, 5)},
     ShapeError, ["dout has shape (1, 2, 4, 4), but Conv2D of input_size (1, 4, 5, 5) gives (1, 2, 3, 3)"]),
    ("Conv2DBackpropFilter", [(F32, (1, 2, 3, 3)), (F32, (1, 4, 5, 5))], {"out_channel": 2, "kernel_size": 3, "filter_size": (2, 4, 3)},
     GraphError, ["filter_size must hold 4 non-negative dimensions, got (2, 4, 3)"]),
    ("MaxPool", [(F32, (1, 2, 5))], {"kernel_size": 2}, ShapeError, ["x must be NCHW (rank 4), got shape (1, 2, 5)"]),
    ("MaxPool", [(F32, (1, 2, 3, 3))], {"kernel_size": 4}, ShapeError, ["window of extent 4 is larger than the padded input length 3"]),
    ("MaxPool", [(F32, (1, 2, 3, 3))], {"pad_mode": "full"}, GraphError, ["pad_mode must be one of valid, same, pad, got 'full'"]),
    ("MaxPool", [(F32, (1, 2, 5, 5))], {"kernel_size": 3, "pad_mode": "pad", "pad": 2}, GraphError,
     ["pad (2, 2) is more than half the window's extent 3"]),
    ("AvgPool", [(F32, (1, 2, 5, 5))], {"kernel_size": 3, "pad": 1}, GraphError, ["pad must be 0 unless pad_mode is 'pad'"]),
    ("AvgPool", [(F32, (1, 2, 5, 5))], {"kernel_size": 3, "divisor_override": -1}, GraphError, ["divisor_override must be 0 (none) or positive"]),
    ("AvgPool", [(F32, (1, 2, 3, 3))], {"kernel_size": (2, 2, 2)}, GraphError, ["kernel_size must be a positive int, a pair or a 4-tuple"]),
    ("AvgPool", [(I32, (1, 2, 3, 3))], {}, DTypeError, ["int32"]),
    ("AvgPoolGrad", [(F32, (1, 2, 3, 3))], {"kernel_size": 2, "input_size": (1, 2, 3, 3)}, ShapeError,
     ["dout has shape (1, 2, 3, 3), but AvgPool of input_size (1, 2, 3, 3) gives (1, 2, 2, 2)"]),
    ("AdaptiveAvgPool2D", [(F32, (4, 4))], {"output_size": 2}, ShapeError, ["x must be (C, H, W) or (N, C, H, W), got shape (4, 4)"]),
    ("AdaptiveAvgPool2D", [(F32, (1, 4, 4))], {"output_size": (2, 0)}, GraphError, ["output_size must be a positive int or pair"]),
    ("Erf", [(I32, (3,))], {}, DTypeError, ["int32"]),
    ("GeLU", [(F32, (3,))], {"approximate": "exact"}, GraphError, ["approximate must be 'tanh' or 'none', got 'exact'"]),
    ("ClipByValue", [(F32, (2, 3)), (F32, (4,)), (F32, ())], {}, ShapeError, ["do not broadcast"]),
    ("ClipByValue", [(F32, (2,)), (F64, ()), (F32, ())], {}, DTypeError, ["float32, float64"]),
    ("ReduceMin", [(F32, (2, 0))], {"axis": (1,)}, ShapeError, ["axis 1 of shape (2, 0) is undefined"]),
    ("LogSumExp", [(I32, (2,))], {}, DTypeError, ["int32"]),
    ("CumSum", [(F32, (2, 3))], {"axis": 2}, ShapeError, ["axis 2 is out of range for rank 2"]),
    ("CumSum", [(F32, ())], {"axis": 0}, ShapeError, ["rank >= 1"]),
    ("Argmax", [(F32, (2, 3))], {"output_type": "float32"}, DTypeError, ["output_type must be int32 or int64, got float32"]),
    ("Argmin", [(F32, (2, 0))], {}, ShapeError, ["axis 1 of shape (2, 0) is undefined"]),
    ("ArgMaxWithValue", [(F32, ())], {}, ShapeError, ["x must have rank >= 1, got a scalar"]),
    ("ArgMinWithValue", [(F32, (2, 0))], {"axis": -1}, ShapeError, ["axis 1 of shape (2, 0) is undefined"]),
    ("ArgMaxWithValue", [(B, (2,))], {}, DTypeError, ["x must be a numeric dtype, got bool"]),
    ("AddN", [(F32, (2, 3)), (F32, (3, 2))], {}, ShapeError, ["inputs must share one shape, got (2, 3), (3, 2)"]),
    ("Stack", [(F32, (2,)), (F32, (3,))], {}, ShapeError, ["inputs must share one shape, got (2,), (3,)"]),
    ("Stack", [(F32, (2,))], {"axis": 2}, ShapeError, ["axis 2 is out of range for rank 2"]),
    ("Unstack", [(F32, (2, 3))], {"axis": 1, "num": 2}, ShapeError, ["num 2 differs from the length 3 of axis 1 of shape (2, 3)"]),
    ("Pad", [(F32, (2, 3))], {"paddings": (1, 1)}, GraphError, ["paddings must hold 2 values per axis (4 for rank 2), got 2"]),
    ("Pad", [(F32, (2,))], {"paddings": (1, -1)}, GraphError, ["paddings must be non-negative"]),
    ("PadV3", [(F32, (2, 3))], {"paddings": (0, 0, 3, 0)}, ShapeError, ["reflect padding (3, 0) of axis 1 must be less than its length 3 (shape (2, 3))"]),
    ("PadV3", [(F32, (2, 0))], {"paddings": (0, 0, 1, 1), "mode": "edge"}, ShapeError, ["axis 1 of shape (2, 0) is empty"]),
    ("PadV3", [(F32, (2,))], {"paddings": (1, 1), "mode": "symmetric"}, GraphError, ["mode must be one of ('reflect', 'edge', 'circular'), got 'symmetric'"]),
    ("PadV3Grad", [(F32, (3,))], {"paddings": (2, 2), "mode": "edge"}, ShapeError, ["paddings (2, 2) remove more than the shape (3,) holds"]),
    ("PadV3Grad", [(B, (3,))], {"paddings": (1, 1), "mode": "edge"}, DTypeError, ["dy must be a numeric dtype, got bool"]),
    ("OneHot", [(F32, (2,)), (F32, ()), (F32, ())], {"depth": 3}, DTypeError, ["indices must be int32 or int64, got float32"]),
    ("OneHot", [(I32, (2,)), (F32, (2,)), (F32, ())], {"depth": 3}, ShapeError, ["on_value and off_value must be scalars, got shapes (2,) and ()"]),
    ("TopK", [(F32, (2, 3))], {"k": 4}, ShapeError, ["k 4 must be in [0, 3] for the last axis of shape (2, 3)"]),
    ("BatchNorm", [(F32, (2, 3, 4)), (F32, (3,)), (F32, (3,)), (F32, (2,)), (F32, (3,))], {}, ShapeError,
     ["mean (2,) must have shape (C,) = (3,) for x (2, 3, 4)"]),
    ("BatchNorm", [(F32, (3,))] * 5, {}, ShapeError, ["x must be (N, C, ...) of rank >= 2, got shape (3,)"]),
    ("BatchNorm", [(F32, (2, 3))] + [(F32, (3,))] * 4, {"momentum": 1.5}, GraphError, ["momentum must be in [0, 1], got 1.5"]),
    ("BatchNorm", [(F32, (0, 3))] + [(F32, (3,))] * 4, {"is_training": True}, ShapeError, ["no elements per channel"]),
    ("BatchNorm", [(F32, (2, 3))] + [(F64, (3,))] * 4, {}, DTypeError, ["float32, float64"]),
    ("Dropout", [(F32, (2, 3))], {"keep_prob": 0.0}, GraphError, ["keep_prob must be in (0, 1], got 0.0"]),
    ("Dropout", [(F32, (2, 3)), (F32, ())], {}, DTypeError, ["seed must be int32 or int64, got float32"]),
    ("Dropout", [(F32, (2, 3)), (I32, (2,))], {}, ShapeError, ["seed must be a scalar, got shape (2,)"]),
    ("Dropout", [(F32, (2, 3)), (I32, ()), (I32, ())], {}, GraphError, ["takes x and at most one seed input, got 3 inputs"]),
    ("Dropout", [(I32, (2, 3))], {}, DTypeError, ["int32"]),
    ("Einsum", [(F32, (2, 3)), (F32, (4, 5))], {"equation": "ab,bc->ac"}, ShapeError, ["letter 'b' has lengths 3 and 4"]),
    ("Einsum", [(F32, (2, 3))], {"equation": "ab,bc->ac"}, GraphError, ["names 2 operands, got 1 inputs"]),
    ("Einsum", [(F32, (2, 2))], {"equation": "ii->i"}, GraphError, ["a letter repeats within 'ii'"]),
    ("Einsum", [(F32, (2, 3))], {"equation": "ab"}, GraphError, ["must have the explicit form"]),
    ("Einsum", [(F32, (2, 3))], {"equation": "abc->a"}, ShapeError, ["subscripts ['abc'] do not match the operand ranks [2]"]),
]


def add(op: str, specs: list[tuple[str, tuple[int, ...]]], attrs: dict[str, Any]) -> None:
    """Add one node named 'bad' over fresh inputs x0, x1, ..."""
    b = GraphBuilder("g")
    xs = [b.input(f"x{i}", dt, shape) for i, (dt, shape) in enumerate(specs)]
    b.add_node(op, xs, attrs, name="bad")


@pytest.mark.parametrize(("op", "specs", "attrs", "error", "fragments"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_node_raises_at_build_time(op: str, specs: Any, attrs: dict[str, Any], error: type[Exception], fragments: list[str]) -> None:
    """Each bad node raises the given error class, naming op, node and the offending shapes."""
    with pytest.raises(error) as info:
        add(op, specs, attrs)
    msg = str(info.value)
    for part in [f"{op} 'bad'", *fragments]:
        assert part in msg, f"{part!r} not in {msg!r}"


@pytest.mark.parametrize(
    ("op", "specs", "attrs", "fragment"),
    [
        ("Add", [(F32, (2,))], {}, "takes 2 inputs (x, y), got 1"),
        ("Gather", [(F32, (2,)), (I32, ()), (I32, ())], {"axis": 0}, "takes 2 inputs (params, indices), got 3"),
        ("Concat", [], {}, "takes at least 1 inputs"),
        ("Softmax", [(F32, (2,))], {"dim": 0}, "unknown attribute(s) ['dim']; Softmax takes ['axis']"),
        ("Split", [(F32, (2,))], {"axis": "0"}, "attribute 'axis' must be int, got '0'"),
        ("LayerNorm", [(F32, (2,)), (F32, ()), (F32, ())], {"epsilon": True}, "attribute 'epsilon' must be float"),
        ("Gather", [(F32, (2,)), (I32, ())], {}, "missing required attribute 'axis'"),
        ("StridedSlice", [(F32, (2,))], {"begin": (0,), "end": (1,)}, "missing required attribute 'strides'"),
        ("Tile", [(F32, (2,))], {"multiples": 2.0}, "attribute 'multiples' must be ints"),
    ],
)
def test_bad_arity_and_attributes_are_graph_errors(op: str, specs: Any, attrs: dict[str, Any], fragment: str) -> None:
    """Arity and attribute mistakes are GraphErrors naming op and node."""
    with pytest.raises(GraphError) as info:
        add(op, specs, attrs)
    assert f"{op} 'bad'" in str(info.value) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(("typo", "suggestion"), [("Softmx", "Softmax"), ("Concatt", "Concat"), ("LayerNorn", "LayerNorm"), ("StrideSlice", "StridedSlice")])
def test_unknown_op_suggests_close_names(typo: str, suggestion: str) -> None:
    """A misspelt op is a GraphError naming the graph and node and suggesting the intended op."""
    with pytest.raises(GraphError, match=rf"graph 'g', node 'bad': unknown op '{typo}'; did you mean .*\b{suggestion}\b"):
        add(typo, [(F32, (2,))], {})
