"""The ONNX op table one op at a time: each small model's output equals ONNX Runtime's (float32), and its gradient
w.r.t. its float input equals central differences of the converted graph (float64); also the CLI listing."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradserve.engine import compile_graph, grad_operation
from gradserve.engine.onnx_import import convert
from gradserve.server import cli

RNG = np.random.default_rng(14)


def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


# name -> (op type, input shape, extra constant inputs (None: omitted), attributes, output count)
CASES: dict[str, tuple[str, tuple[int, ...], list[Any], dict[str, Any]]] = {
    "conv_strided_grouped": ("Conv", (1, 4, 7, 6), [RNG.normal(size=(6, 2, 3, 2)), RNG.normal(size=6)],
                             {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 1], "dilations": [1, 2]}),
    "conv_same_upper": ("Conv", (1, 2, 5, 5), [RNG.normal(size=(3, 2, 2, 2))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "conv_transpose": ("ConvTranspose", (1, 3, 4, 4), [RNG.normal(size=(3, 2, 3, 3)), RNG.normal(size=2)],
                       {"strides": [2, 2], "pads": [1, 1, 0, 0], "output_padding": [1, 0]}),
    "maxpool_pads_ceil": ("MaxPool", (1, 2, 7, 6), [], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}),
    "maxpool_dilated_ceil": ("MaxPool", (1, 2, 8, 7), [], {"kernel_shape": [2, 3], "strides": [2, 1], "pads": [1, 1, 1, 1], "dilations": [2, 1], "ceil_mode": 1}),
    "avgpool_exclude_pad": ("AveragePool", (1, 2, 6, 6), [], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "avgpool_include_pad": ("AveragePool", (1, 2, 6, 6), [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "global_avgpool": ("GlobalAveragePool", (2, 3, 4, 5), [], {}),
    "leaky_relu": ("LeakyRelu", (3, 4), [], {"alpha": 0.2}),
    "sigmoid": ("Sigmoid", (3, 4), [], {}),
    "gelu_tanh": ("Gelu", (3, 4), [], {"approximate": "tanh"}),
    "softmax_axis0": ("Softmax", (3, 4), [], {"axis": 0}),
    "log_softmax": ("LogSoftmax", (3, 4), [], {}),
    "layer_norm_axis1_no_bias": ("LayerNormalization", (2, 3, 4), [RNG.normal(size=(3, 4))], {"axis": 1}),
    "batch_norm_2d": ("BatchNormalization", (4, 3), [RNG.normal(size=3), RNG.normal(size=3), RNG.normal(size=3), RNG.uniform(0.5, 2, 3)], {}),
    "gemm_trans_alpha_beta": ("Gemm", (4, 3), [RNG.normal(size=(4, 5)), RNG.normal(size=5)], {"transA": 1, "alpha": 0.5, "beta": 2.0}),
    "matmul_vector": ("MatMul", (2, 3, 4), [RNG.normal(size=4)], {}),
    "matmul_broadcast": ("MatMul", (2, 3, 4), [RNG.normal(size=(4, 5))], {}),
    "sub_broadcast": ("Sub", (3, 4), [RNG.normal(size=4)], {}),
    "div": ("Div", (3, 4), [RNG.uniform(1, 2, (3, 1))], {}),
    "pow_int_exponent": ("Pow", (3, 4), [np.array(3, np.int64)], {}),
    "sqrt_exp_log": ("Sqrt", (3, 4), [], {}),
    "reciprocal": ("Reciprocal", (3, 4), [], {}),
    "abs_neg": ("Abs", (3, 4), [], {}),
    "clip_min_only": ("Clip", (3, 4), [np.array(-0.3), None], {}),
    "reshape_zero_minus1": ("Reshape", (2, 3, 4), [i64(0, -1, 2)], {}),
    "transpose_default": ("Transpose", (2, 3, 4), [], {}),
    "flatten_axis2": ("Flatten", (2, 3, 4), [], {"axis": 2}),
    "slice_negative_step": ("Slice", (5, 6), [i64(-1, 1), i64(-100, 6), i64(0, 1), i64(-2, 2)], {}),
    "slice_clamped_end": ("Slice", (5, 6), [i64(1), i64(1 << 62)], {}),
    "gather_negative": ("Gather", (5, 3), [i64(-1, 0, 2)], {"axis": 0}),
    "gather_scalar_axis1": ("Gather", (5, 3), [np.array(1, np.int64)], {"axis": 1}),
    "unsqueeze": ("Unsqueeze", (3, 4), [i64(0, -1)], {}),
    "squeeze": ("Squeeze", (3, 1, 4, 1), [i64(3)], {}),
    "expand_both_ways": ("Expand", (3, 1), [i64(2, 1, 4)], {}),
    "tile": ("Tile", (2, 3), [i64(2, 2)], {}),
    "reduce_mean_attr": ("ReduceMean", (2, 3, 4), [], {"axes": [1], "keepdims": 0}),
    "reduce_sum_input": ("ReduceSum", (2, 3, 4), [i64(0, 2)], {}),
    "reduce_max_all": ("ReduceMax", (2, 3, 4), [], {"keepdims": 0}),
    "dropout_inference": ("Dropout", (3, 4), [], {}),
    "identity": ("Identity", (3, 4), [], {}),
    "scatter_nd_add_repeated": ("ScatterND", (4, 3), [i64(1, 3, 1).reshape(3, 1), RNG.normal(size=(3, 3))], {"reduction": "add"}),
    "scatter_nd_none": ("ScatterND", (4, 3), [i64(2, 0).reshape(2, 1), RNG.normal(size=(2, 3))], {}),
    "scatter_nd_pairs": ("ScatterND", (3, 4, 2), [i64(0, 1, 2, 3).reshape(2, 2), RNG.normal(size=(2, 2))], {"reduction": "add"}),
    "mod_fmod": ("Mod", (3, 4), [RNG.uniform(1, 2, (3, 4))], {"fmod": 1}),
    "pad_constant_value_axes": ("Pad", (2, 3), [i64(1, 2), np.array(1.5), i64(1)], {}),
    "cumsum_exclusive_reverse": ("CumSum", (3, 4), [np.array(1, np.int64)], {"exclusive": 1, "reverse": 1}),
    "reduce_logsumexp": ("ReduceLogSumExp", (2, 3, 4), [i64(1)], {"keepdims": 0}),
    "sum_broadcast": ("Sum", (3, 4), [RNG.normal(size=4), RNG.normal(size=(3, 1))], {}),
    "einsum": ("Einsum", (2, 3), [RNG.normal(size=(3, 4))], {"equation": "ij,jk->ik"}),
    "tan": ("Tan", (3, 4), [], {}),
    "conv1d_grouped": ("Conv", (2, 4, 9), [RNG.normal(size=(6, 2, 3)), RNG.normal(size=6)],
                       {"group": 2, "strides": [2], "pads": [1, 2], "dilations": [2]}),
    "conv1d_same_upper": ("Conv", (1, 2, 8), [RNG.normal(size=(3, 2, 4))], {"auto_pad": "SAME_UPPER", "strides": [3]}),
    "conv_transpose_1d_output_shape": ("ConvTranspose", (1, 3, 5), [RNG.normal(size=(3, 2, 3)), RNG.normal(size=2)],
                                       {"strides": [2], "output_shape": [10]}),
    "conv_transpose_output_shape": ("ConvTranspose", (1, 3, 4, 4), [RNG.normal(size=(3, 2, 3, 3))],
                                    {"strides": [2, 2], "output_shape": [8, 9]}),
    "conv_transpose_same_upper": ("ConvTranspose", (1, 3, 4, 5), [RNG.normal(size=(3, 2, 2, 3))], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "conv_transpose_same_lower": ("ConvTranspose", (1, 3, 4, 5), [RNG.normal(size=(3, 2, 2, 3))], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "maxpool_1d": ("MaxPool", (2, 3, 9), [], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    "avgpool_1d_ceil": ("AveragePool", (2, 3, 8), [], {"kernel_shape": [3], "strides": [2], "pads": [1, 0], "ceil_mode": 1}),
}
OPSETS = {"ReduceMean": 17, "ReduceMax": 17}


def _model(case: str, dtype: Any) -> Any:
    op, shape, extra, attrs = CASES[case]
    onnx_dtype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    names, inits = ["x"], []
    for k, v in enumerate(extra):
        if v is None:
            names.append("")
            continue
        arr = np.asarray(v, dtype if np.asarray(v).dtype.kind == "f" and op != "Pow" else np.asarray(v).dtype)
        names.append(f"c{k}")
        inits.append(numpy_helper.from_array(arr, f"c{k}"))
    x = helper.make_tensor_value_info("x", onnx_dtype, list(shape))
    y = helper.make_tensor_value_info("y", onnx_dtype, None)
    node = helper.make_node(op, names, ["y"], name=case, **attrs)
    graph = helper.make_graph([node], case, [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSETS.get(op, 20))], ir_version=9)


def _x(case: str, dtype: Any) -> np.ndarray:
    shape = CASES[case][1]
    x = RNG.normal(size=shape)
    if CASES[case][0] in ("Sqrt", "Log", "Reciprocal", "Pow"):
        x = np.abs(x) + 0.5
    return x.astype(dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_equals_onnx_runtime(case: str) -> None:
    model = _model(case, np.float32)
    x = _x(case, np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    g = convert(model)
    got = compile_graph(g)(x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_equals_central_differences(case: str) -> None:
    g = convert(_model(case, np.float64))
    x = _x(case, np.float64)
    sens = RNG.normal(size=g.flat_outputs[0].shape)
    f = compile_graph(g)
    (gx,) = compile_graph(grad_operation(g, get_all=True, sens_param=True))(x, sens)
    eps, fd = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        fd[i] = np.sum((f(x + d) - f(x - d)) * sens) / (2 * eps)
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-7)


def test_maxpool_indices_equal_onnx_runtime_and_take_no_gradient() -> None:
    """The Indices output (flat over N, C, H, W of the unpadded input, first maximum of each window) with padding and
    ceil_mode, as ONNX Runtime computes it; the values' gradient reaches the input through the same argmax."""
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1}
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 7, 6])
    outs = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None), helper.make_tensor_value_info("i", TensorProto.INT64, None)]
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], name="mp", **attrs)
    model = helper.make_model(helper.make_graph([node], "mp", [x_info], outs), opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    x = np.round(RNG.normal(size=(2, 3, 7, 6)), 1)  # rounded: ties, where the first maximum must win
    want_y, want_i = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    g = convert(model)
    got_y, got_i = compile_graph(g)(x)
    np.testing.assert_array_equal(got_y, want_y)
    assert got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(x.reshape(-1)[got_i], got_y)
    sens = RNG.normal(size=got_y.shape)
    (gx,) = compile_graph(grad_operation(g, get_all=True, sens_param=True))(x, sens, np.zeros(got_i.shape, np.int64))
    want_gx = np.zeros(x.size)
    np.add.at(want_gx, want_i.reshape(-1), sens.reshape(-1))
    np.testing.assert_allclose(gx, want_gx.reshape(x.shape), rtol=1e-12)


def test_shape_arithmetic_folds_to_constants() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Range, ConstantOfShape, Cast, Equal/Where/Not: the
    exporter's dynamic-looking shape code becomes constants once input shapes are static."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v), name))  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]), c("zero", np.array(0, np.int64)), c("minus1", i64(-1)),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0), c("ax0", i64(0)),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]), helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        c("start", np.array(0, np.int64)), c("limit", np.array(12, np.int64)), c("delta", np.array(1, np.int64)),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        c("six", np.array(6.0, np.float32)), helper.make_node("Less", ["rf", "six"], ["lt"]), helper.make_node("Not", ["lt"], ["ge"]),
        helper.make_node("Shape", ["flat"], ["fs"]),
        helper.make_node("ConstantOfShape", ["fs"], ["zeros"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Where", ["ge", "flat", "zeros"], ["w"]), helper.make_node("Mul", ["w", "rf"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "shapes", [x], [y]), opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    xv = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    g = convert(model)
    np.testing.assert_allclose(compile_graph(g)(xv), want, rtol=1e-6)
    assert {n.op for n in g.nodes} <= {"Const", "Reshape", "Select", "Mul"}, str(g)


def test_cli_lists_the_network_and_its_gradient_program(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_model("gemm_trans_alpha_beta", np.float32).SerializeToString())
    assert cli.main(["import-onnx", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "graph onnx(x: f32[4,3])" in listing and "param c0: f32[4,5]" in listing and "MatMul[transpose_a=True" in listing
    assert cli.main(["import-onnx", str(path), "--grad"]) == 0
    assert "graph grad_onnx(x: f32[4,3])" in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    bad.write_bytes(helper.make_model(helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="h")], "g", [x], [x]),
                                      opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert cli.main(["import-onnx", str(bad)]) == 1
    assert "ONNX node 'h': op 'Hardmax' of domain 'ai.onnx' is not supported" in capsys.readouterr().err
