"""Python control flow on Tensor values (if, while, for over a range from a Tensor, break, early return), in both
modes, embedded and through a server: values and gradients of the branch taken against closed forms, nested
gradients, a graph reused while its guards hold and traced again otherwise; non-Parameter state (Tensor and number
attributes, closure and global Tensors) seen when it changes; jit and ms_function; set_context(mode=...)."""
from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
from gradserve import Tensor, TracingError
from gradserve.client import backends, context, trace_count
from gradserve.ops import GradOperation
from gradserve.server.app import Server
from gradserve.v1 import service_pb2, service_pb2_grpc

grad = GradOperation()
grad_all = GradOperation(get_all=True)


def t(a: Any) -> Tensor:
    return Tensor(np.asarray(a, dtype=np.float64))


@pytest.fixture(params=["PYNATIVE_MODE", "GRAPH_MODE"])
def mode(request: pytest.FixtureRequest, where: str) -> str:
    """Each test in both of MindSpore's modes (after ``where`` has reset the mode)."""
    gs.set_context(mode=getattr(gs, request.param))
    return request.param


class Branch(nn.Cell):
    """x^3 where sum(x) > 0, else sin(x) * 3."""

    def construct(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return x * x * x
        return gs.ops.sin(x) * 3


def test_if_takes_the_branch_of_each_call(mode: str) -> None:
    net, pos, neg = Branch(), np.array([0.5, 1.5]), np.array([-0.5, -1.5])
    for _ in range(2):
        np.testing.assert_allclose(net(t(pos)).asnumpy(), pos ** 3, rtol=1e-15)
        np.testing.assert_allclose(grad(net)(t(pos)).asnumpy(), 3 * pos ** 2, rtol=1e-15)
        np.testing.assert_allclose(net(t(neg)).asnumpy(), 3 * np.sin(neg), rtol=1e-15)
        np.testing.assert_allclose(grad(net)(t(neg)).asnumpy(), 3 * np.cos(neg), rtol=1e-15)
    assert trace_count(net) == 2  # one graph per path; the guard picks the cached one
    np.testing.assert_allclose(grad(grad(net))(t(pos)).asnumpy(), 6 * pos, rtol=1e-14)
    np.testing.assert_allclose(grad(grad(grad(net)))(t(neg)).asnumpy(), -3 * np.cos(neg), rtol=1e-14)


def registered(server: Server) -> int:
    """How many networks ``server`` has registered, from its ServerInfo request counters."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = service_pb2_grpc.GradientStub(channel).ServerInfo(service_pb2.ServerInfoRequest(), timeout=10)
    return sum(c.count for c in info.request_counters if (c.method, c.code) == ("RegisterNetwork", "OK"))


class Doubling(nn.Cell):
    """while sum(x) < limit: x = 2x, then an early return or a cube: d/dx is 2^k (or 3 * 8^k x^2)."""

    def construct(self, x: Tensor, limit: Tensor) -> Tensor:
        while x.sum() < limit:
            x = x * 2
        if x.sum() > 100:
            return x
        return x * x * x


def test_while_and_early_return(mode: str) -> None:
    net, x = Doubling(), np.array([1.0, 2.0])
    for limit, k in ((10.0, 2), (40.0, 4), (150.0, 6)):
        y = x * 2 ** k
        value = y if y.sum() > 100 else y ** 3
        slope = np.full_like(x, 2.0 ** k) if y.sum() > 100 else 3 * 8.0 ** k * x ** 2
        np.testing.assert_allclose(net(t(x), t(limit)).asnumpy(), value, rtol=1e-15)
        np.testing.assert_allclose(grad(net)(t(x), t(limit)).asnumpy(), slope, rtol=1e-15)


class Loop(nn.Cell):
    """for i in range(n): x = x * (i + 1), breaking once sum(x) > 50: the product of 1..k for the k iterations run."""

    def construct(self, x: Tensor, n: Tensor) -> Tensor:
        for i in range(int(n)):
            x = x * (i + 1)
            if x.sum() > 50:
                break
        return x


def test_for_over_a_range_from_a_tensor_with_break(mode: str) -> None:
    net, x = Loop(), np.array([1.0, 3.0])
    for n in (0, 3, 10):
        k, y = 0, x.copy()
        for i in range(n):
            y, k = y * (i + 1), k + 1
            if y.sum() > 50:
                break
        factor = float(np.prod(np.arange(1, k + 1)))
        np.testing.assert_allclose(net(t(x), Tensor(np.array(n))).asnumpy(), x * factor, rtol=1e-15)
        (dx, dn) = grad_all(net)(t(x), Tensor(np.array(n)))
        np.testing.assert_allclose(dx.asnumpy(), np.full_like(x, factor), rtol=1e-15)
        assert dn.asnumpy() == 0


def test_values_read_by_python_are_constants_of_the_trace(mode: str) -> None:
    def scale_by_sum(x: Tensor) -> Tensor:
        return x * float(x.sum())

    def via_numpy(x: Tensor) -> Tensor:
        return Tensor(x.asnumpy() * 2) + x

    def by_int(x: Tensor) -> Tensor:
        return x * int(x.sum())

    x = np.array([1.25, 2.0])
    np.testing.assert_allclose(gs.jit(scale_by_sum)(t(x)).asnumpy(), x * x.sum(), rtol=1e-15)
    np.testing.assert_allclose(grad(scale_by_sum)(t(x)).asnumpy(), np.full_like(x, x.sum()), rtol=1e-15)
    np.testing.assert_allclose(grad(via_numpy)(t(x)).asnumpy(), np.ones_like(x))
    np.testing.assert_allclose(grad(by_int)(t(x)).asnumpy(), np.full_like(x, 3.0))
    np.testing.assert_allclose(grad(by_int)(t(2 * x)).asnumpy(), np.full_like(x, 6.0))


class GradOfBranch(nn.Cell):
    """A gradient taken inside a construct, of a network whose Python branches on its input's value."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Branch()

    def construct(self, x: Tensor) -> Tensor:
        return GradOperation()(self.net)(x) * 2


def test_control_flow_inside_a_nested_gradient(mode: str) -> None:
    net, pos, neg = GradOfBranch(), np.array([0.5, 1.5]), np.array([-0.5, -1.5])
    for _ in range(2):
        np.testing.assert_allclose(net(t(pos)).asnumpy(), 6 * pos ** 2, rtol=1e-15)
        np.testing.assert_allclose(net(t(neg)).asnumpy(), 6 * np.cos(neg), rtol=1e-15)
    np.testing.assert_allclose(grad(net)(t(neg)).asnumpy(), -6 * np.sin(neg), rtol=1e-14)


class Shifted(nn.Cell):
    """The gradient of GradOfBranch at x - shift (a Parameter): values are read two traces deep."""

    def __init__(self) -> None:
        super().__init__()
        self.net = GradOfBranch()
        self.shift = gs.Parameter(t([0.0, 0.0]), name="shift")

    def construct(self, x: Tensor) -> Tensor:
        return GradOperation()(self.net)(x - self.shift)


def test_values_read_two_traces_deep_are_guards_of_the_top_graph(mode: str) -> None:
    net, x = Shifted(), np.array([0.5, 1.5])
    for _ in range(2):
        for shift in (0.0, 3.0):
            net.shift.set_data(t([shift, shift]))
            want = 12 * (x - shift) if (x - shift).sum() > 0 else -6 * np.sin(x - shift)
            np.testing.assert_allclose(net(t(x)).asnumpy(), want, rtol=1e-14)
    assert trace_count(net) == 2  # one trace per path; the parameter's value decides which, through the guards


@pytest.mark.parametrize("net", [Branch(), GradOfBranch()], ids=["guarded", "nested"])
def test_a_path_seen_before_is_not_sent_again(server: Server, clean_context: None, net: nn.Cell) -> None:
    gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    before = registered(server)
    pos, neg = t([0.5, 1.5]), t([-0.5, -1.5])
    for _ in range(3):
        net(pos)
        net(neg)
    assert registered(server) - before == 2  # one network per path
    assert trace_count(net) == 2  # values read in a nested trace are guards too: each path is traced once
    for backend in backends._backends.values():
        backend.close()  # type: ignore[attr-defined]


class Scaled(nn.Cell):
    """Reads a Tensor attribute, a number attribute and a child Cell's Tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = t([2.0])
        self.power = 2
        self.child = nn.Cell()
        self.child.shift = t([1.0])

    def construct(self, x: Tensor) -> Tensor:
        return self.scale * x ** self.power + self.child.shift * x


def test_changed_attributes_are_seen(where: str) -> None:
    net, x = Scaled(), np.array([1.5, -0.5])

    def check(scale: float, power: int, shift: float) -> None:
        np.testing.assert_allclose(net(t(x)).asnumpy(), scale * x ** power + shift * x, rtol=1e-15)
        np.testing.assert_allclose(grad(net)(t(x)).asnumpy(), scale * power * x ** (power - 1) + shift, rtol=1e-15)

    check(2.0, 2, 1.0)
    net.scale = t([3.0])
    check(3.0, 2, 1.0)
    net.power = 3
    check(3.0, 3, 1.0)
    net.child.shift = t([-4.0])
    check(3.0, 3, -4.0)
    traced = trace_count(net)
    check(3.0, 3, -4.0)
    assert trace_count(net) == traced  # unchanged state reuses the graph


SCALE = t([2.0])


def test_changed_closure_and_global_tensors_are_seen(where: str) -> None:
    global SCALE
    offset = t([1.0])

    def f(x: Tensor) -> Tensor:
        return x * SCALE + offset * x * x

    x = np.array([0.5, 2.0])
    g = grad(f)
    np.testing.assert_allclose(g(t(x)).asnumpy(), 2.0 + 2 * x, rtol=1e-15)
    offset = t([5.0])
    np.testing.assert_allclose(g(t(x)).asnumpy(), 2.0 + 10 * x, rtol=1e-15)
    SCALE = t([-1.0])
    try:
        np.testing.assert_allclose(g(t(x)).asnumpy(), -1.0 + 10 * x, rtol=1e-15)
        np.testing.assert_allclose(gs.jit(f)(t(x)).asnumpy(), -x + 5 * x * x, rtol=1e-15)
    finally:
        SCALE = t([2.0])


class JitConstruct(nn.Cell):
    @gs.jit(capture_mode="ast", jit_level="O0")
    def construct(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return x * 2
        return x * x


def test_jit_on_functions_and_construct(mode: str) -> None:
    @gs.jit
    def relu_like(x: Tensor) -> Tensor:
        return x if x.sum() > 0 else x * 0

    @gs.ms_function(input_signature=None)
    def square(x: Tensor) -> Tensor:
        return x * x

    x = np.array([1.0, 2.0])
    np.testing.assert_array_equal(relu_like(t(x)).asnumpy(), x)
    np.testing.assert_array_equal(relu_like(t(-x)).asnumpy(), 0 * x)
    np.testing.assert_array_equal(grad(relu_like)(t(-x)).asnumpy(), 0 * x)
    np.testing.assert_array_equal(square(t(x)).asnumpy(), x * x)
    assert trace_count(relu_like) == 2 and trace_count(square) == 1
    net = JitConstruct()
    np.testing.assert_array_equal(net(t(x)).asnumpy(), 2 * x)
    np.testing.assert_array_equal(net(t(-x)).asnumpy(), x * x)
    np.testing.assert_array_equal(grad(net)(t(-x)).asnumpy(), -2 * x)
    np.testing.assert_array_equal(net.construct(t(-x)).asnumpy(), x * x)  # called directly: op by op


def test_jit_and_mode_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(context._mindspore, "mode", gs.PYNATIVE_MODE)
    assert gs.get_context("mode") == gs.PYNATIVE_MODE == 1 and gs.GRAPH_MODE == 0
    gs.set_context(mode=gs.GRAPH_MODE, device_target="CPU")
    assert gs.get_context("mode") == gs.context.GRAPH_MODE and gs.get_context("device_target") == "CPU"
    with pytest.raises(ValueError, match="mode must be GRAPH_MODE \\(0\\) or PYNATIVE_MODE \\(1\\), got 2"):
        gs.set_context(mode=2)
    with pytest.raises(TypeError, match=r"jit: unknown keyword argument\(s\) \['nonsense'\]"):
        gs.jit(nonsense=1)
    with pytest.raises(TypeError, match="jit decorates a function"):
        gs.jit(3)


def test_reading_a_value_in_a_backward_is_an_error() -> None:
    class Rule(gs.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            return x * 2

        @staticmethod
        def backward(ctx: Any, dout: Tensor) -> Tensor:
            return dout if float(dout.sum()) > 0 else -dout

    with pytest.raises(TracingError, match=r"float\(\).*Rule.backward, which is traced without values"):
        grad(lambda x: Rule.apply(x))(t([1.0]))


class NumpyScaled(nn.Cell):
    """Reads a NumPy-array attribute (not a Parameter, not a Tensor) into its graph as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.k = np.array([2.0, 3.0])

    def construct(self, x: Tensor) -> Tensor:
        return x * x * Tensor(self.k)


def test_changed_numpy_attributes_are_seen(where: str) -> None:
    net, x = NumpyScaled(), np.array([1.5, -0.5])

    def check(k: np.ndarray) -> None:
        np.testing.assert_allclose(net(t(x)).asnumpy(), k * x * x, rtol=1e-15)
        np.testing.assert_allclose(grad(net)(t(x)).asnumpy(), 2 * k * x, rtol=1e-15)

    check(np.array([2.0, 3.0]))
    traced = trace_count(net)
    check(np.array([2.0, 3.0]))
    assert trace_count(net) == traced  # unchanged: the cached graph
    net.k = np.array([-1.0, 4.0])
    check(np.array([-1.0, 4.0]))
    net.k[1] = 10.0  # changed in place: seen by its bytes
    check(np.array([-1.0, 10.0]))
    table = np.array([1.0, 1.0])

    def f(a: Tensor) -> Tensor:
        return a * Tensor(table)

    np.testing.assert_allclose(gs.jit(f)(t(x)).asnumpy(), x, rtol=1e-15)
    table[0] = 5.0
    np.testing.assert_allclose(gs.jit(f)(t(x)).asnumpy(), x * [5.0, 1.0], rtol=1e-15)


class ReadsAttribute(nn.Cell):
    """Branches on the value of a Tensor attribute and on its input, under a GradOperation inside the construct."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Branch()
        self.gate = t([1.0])

    def construct(self, x: Tensor) -> Tensor:
        g = GradOperation()(self.inner)(x)
        return g * 2 if float(self.gate.asnumpy()[0]) > 0 else g


def test_value_reads_are_cached_while_unchanged(where: str) -> None:
    net, x = ReadsAttribute(), np.array([0.5, 1.5])
    for _ in range(3):
        np.testing.assert_allclose(net(t(x)).asnumpy(), 6 * x * x, rtol=1e-15)
    assert trace_count(net) == 1
    net.gate = t([-1.0])
    np.testing.assert_allclose(net(t(x)).asnumpy(), 3 * x * x, rtol=1e-15)
    np.testing.assert_allclose(net(t(-x)).asnumpy(), 3 * np.cos(-x), rtol=1e-15)
    np.testing.assert_allclose(net(t(-x)).asnumpy(), 3 * np.cos(-x), rtol=1e-15)
    assert trace_count(net) == 3
