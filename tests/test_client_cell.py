"""nn.Cell: parameter order and names, parameter updates, trace caching, and errors raised while tracing."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor, TracingError
from gradserve.client import trace_count


class Leaf(nn.Cell):
    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.w = Parameter(Tensor([scale]))  # unnamed: takes the attribute's name
        self.frozen = Parameter(Tensor([1.0]), name="frozen", requires_grad=False)

    def construct(self, x: Tensor) -> Tensor:
        return x * self.w + self.frozen


class Middle(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.leaf = Leaf()
        self.m = Parameter(Tensor([3.0]), name="m")

    def construct(self, x: Tensor) -> Tensor:
        return self.leaf(x) * self.m


class Top(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.a = Parameter(Tensor([5.0]), name="a")
        self.mid = Middle()
        self.other = Leaf(4.0)
        self.b = Parameter(Tensor([7.0]), name="b")

    def construct(self, x: Tensor) -> Tensor:
        return self.mid(x) + self.other(x) * self.a + self.b


def test_trainable_params_own_first_in_definition_order_then_children_with_dotted_names() -> None:
    top = Top()
    assert [p.name for p in top.trainable_params()] == ["a", "b", "mid.m", "mid.leaf.w", "other.w"]
    assert [p.name for p in top.untrainable_params()] == ["mid.leaf.frozen", "other.frozen"]
    assert [p.name for p in top.get_parameters()] == [
        "a", "b", "mid.m", "mid.leaf.w", "mid.leaf.frozen", "other.w", "other.frozen"
    ]
    assert [n for n, _ in top.cells_and_names()] == ["", "mid", "mid.leaf", "other"]
    assert repr(top.a) == "Parameter (name=a, shape=(1,), dtype=Float32, requires_grad=True)"


def test_auto_prefix_false_keeps_child_names() -> None:
    class NoPrefix(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.leaf = Leaf()

    assert [p.name for p in NoPrefix().get_parameters()] == ["w", "frozen"]


def test_forward_and_gradients_of_a_nested_network() -> None:
    top, x = Top(), np.array([1.5, -2.0], np.float32)
    out = top(Tensor(x))
    np.testing.assert_allclose(out.asnumpy(), (2 * x + 1) * 3 + (4 * x + 1) * 5 + 7)
    grads = ops.GradOperation(get_by_list=True)(top, ParameterTuple(top.trainable_params()))(Tensor(x))
    want = [4 * x + 1, 1.0 + 0 * x, 2 * x + 1, 3 * x, 5 * x]  # a, b, mid.m, mid.leaf.w, other.w
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.asnumpy(), [w.sum()], rtol=1e-6)


def test_second_call_with_same_signature_does_not_retrace_and_new_signature_does() -> None:
    net = Leaf()
    net(Tensor([1.0, 2.0]))
    net(Tensor([3.0, 4.0]))
    assert trace_count(net) == 1
    net(Tensor([[1.0]]))
    net(Tensor([1.0, 2.0], dtype=np.float64))
    assert trace_count(net) == 3
    net(Tensor([5.0, 6.0]))
    assert trace_count(net) == 3


class Divide(nn.Cell):
    def construct(self, x: Tensor, s: float) -> Tensor:
        return x / s


def test_python_floats_that_compare_equal_but_differ_get_their_own_traces() -> None:
    net, x = Divide(), np.array([1.0, -2.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in (0.0, -0.0, 0.0, float("nan"), -float("nan"), 2.0):
            got = net(Tensor(x), s).asnumpy()
            np.testing.assert_array_equal(np.signbit(got), np.signbit(x / s))
            np.testing.assert_array_equal(got, x / s)
    assert trace_count(net) == 5


def test_parameter_update_between_calls_is_used_without_retrace() -> None:
    net, x = Leaf(), Tensor([1.0, 2.0])
    grad_w = ops.GradOperation(get_all=True, get_by_list=True)
    np.testing.assert_allclose(net(x).asnumpy(), [3.0, 5.0])
    net.w.set_data(Tensor([10.0]))
    np.testing.assert_allclose(net(x).asnumpy(), [11.0, 21.0])
    net.w = Tensor(np.array([-1.0]))  # assigning a Tensor to a Parameter attribute sets its data
    np.testing.assert_allclose(net(x).asnumpy(), [0.0, -1.0])
    (dx,), (dw,) = grad_w(net, ParameterTuple(net.trainable_params()))(x)
    np.testing.assert_allclose(dx.asnumpy(), [-1.0, -1.0])
    np.testing.assert_allclose(dw.asnumpy(), [3.0])
    net.w.set_data(Tensor([4.0]))
    (dx,), _ = grad_w(net, ParameterTuple(net.trainable_params()))(x)
    np.testing.assert_allclose(dx.asnumpy(), [4.0, 4.0])
    assert trace_count(net) == 1


def test_set_data_checks_shape_and_keeps_dtype() -> None:
    p = Parameter(Tensor([1.0, 2.0]), name="p")
    with pytest.raises(ValueError, match=r"Parameter 'p': set_data got shape \(3,\), the parameter has shape \(2,\)"):
        p.set_data(Tensor([1.0, 2.0, 3.0]))
    assert p.set_data(np.array([3, 4])) is p and p.data is p
    assert p.dtype == Tensor([1.0]).dtype and p.asnumpy().tolist() == [3.0, 4.0]


def test_replacing_a_parameter_object_retraces() -> None:
    net = Leaf()
    net(Tensor([1.0]))
    net.w = Parameter(Tensor([9.0, 9.0]))
    np.testing.assert_allclose(net(Tensor([1.0])).asnumpy(), [10.0, 10.0])
    assert trace_count(net) == 2


def test_requires_grad_false_parameter_is_excluded_but_still_read() -> None:
    net = Leaf()
    assert [p.name for p in net.trainable_params()] == ["w"]
    net.frozen.set_data(Tensor([100.0]))
    np.testing.assert_allclose(net(Tensor([1.0])).asnumpy(), [102.0])


def test_duplicate_parameter_names_are_an_error() -> None:
    class Twice(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.a = Leaf()
            self.b = Leaf()

        def construct(self, x: Tensor) -> Tensor:
            return self.a(x) + self.b(x)

    with pytest.raises(TracingError, match="two different Parameters are both named 'w'"):
        Twice()(Tensor([1.0]))


def test_a_tensor_captured_from_an_enclosing_trace_is_an_error() -> None:
    class Capture(nn.Cell):
        def construct(self, x: Tensor) -> Any:
            return ops.GradOperation()(lambda y: y * x)(x)

    with pytest.raises(TracingError, match="traced in another function"):
        Capture()(Tensor([1.0]))


def test_construct_must_return_tensors() -> None:
    class ReturnsFloat(nn.Cell):
        def construct(self, x: Tensor) -> float:
            return 1.0

    with pytest.raises(TypeError, match="ReturnsFloat.construct returned a float"):
        ReturnsFloat()(Tensor([1.0]))


def test_cell_misuse_errors() -> None:
    class NoInit(nn.Cell):
        def __init__(self) -> None:
            self.w = Parameter(Tensor([1.0]))

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) before setting attribute 'w'"):
        NoInit()
    with pytest.raises(TypeError, match="pass inputs positionally"):
        Leaf()(x=Tensor([1.0]))
    with pytest.raises(NotImplementedError, match="must define construct"):
        nn.Cell()(Tensor([1.0]))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        Leaf().missing  # noqa: B018
    leaf = Leaf()
    del leaf.w
    assert [p.name for p in leaf.get_parameters()] == ["frozen"]


def test_print_shows_mindspore_s_layout() -> None:
    class Network(nn.Cell):  # MindSpore's "Building a Network" tutorial, whose print(model) output is below
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.dense_relu_sequential = nn.SequentialCell(
                nn.Dense(28 * 28, 512), nn.ReLU(), nn.Dense(512, 512), nn.ReLU(), nn.Dense(512, 10))

        def construct(self, x: Tensor) -> Tensor:
            return self.dense_relu_sequential(self.flatten(x))

    assert str(Network()) == """Network<
  (flatten): Flatten<>
  (dense_relu_sequential): SequentialCell<
    (0): Dense<input_channels=784, output_channels=512, has_bias=True>
    (1): ReLU<>
    (2): Dense<input_channels=512, output_channels=512, has_bias=True>
    (3): ReLU<>
    (4): Dense<input_channels=512, output_channels=10, has_bias=True>
    >
  >"""
    # the activation is a child cell, as in MindSpore, so it is listed after the settings too
    want = "Dense<\n  input_channels=3, output_channels=2, activation=ReLU<>\n  (activation): ReLU<>\n  >"
    assert repr(nn.Dense(3, 2, has_bias=False, activation="relu")) == want

    class Settings(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.leaf = Leaf()

        def extend_repr(self) -> str:
            return "alpha=1"

    assert repr(Settings()) == "Settings<\n  alpha=1\n  (leaf): Leaf<>\n  >"
