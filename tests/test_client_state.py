"""Non-Parameter state a cached trace bakes in, changed without a new assignment: a Tensor attribute, closure or
global Tensor changed in place (item assignment moves its ``version``), and Cells reached through the closures and
globals of a transformed or jit function (their training flag and attributes), embedded and through a server;
values and gradients against NumPy closed forms, and steady calls reusing the trace."""
from __future__ import annotations

from typing import Any

import numpy as np

import gradserve as gs
import gradserve.nn as nn
from gradserve import Parameter, Tensor
from gradserve.client import epoch, trace_count
from gradserve.ops import GradOperation

X = np.array([1.0, 2.0])


def t(a: Any) -> Tensor:
    return Tensor(np.asarray(a, dtype=np.float64))


class Scaled(nn.Cell):
    """sum(a * t) with a Tensor attribute t (not a Parameter), and sum(a * u[0]) over a list attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.t = t([2.0])
        self.u = [t([1.0])]

    def construct(self, a: Tensor) -> Tensor:
        return (a * self.t).sum() + (a * a * self.u[0]).sum()


def test_tensor_attribute_changed_in_place_is_seen(where: str) -> None:
    net = Scaled()

    def check(s: float, q: float) -> None:
        assert float(net(t(X))) == s * X.sum() + q * (X * X).sum()
        np.testing.assert_array_equal(GradOperation()(net)(t(X)).asnumpy(), s + 2 * q * X)
        np.testing.assert_array_equal(gs.grad(net)(t(X)).asnumpy(), s + 2 * q * X)

    check(2.0, 1.0)
    net.t[0] = 4.0
    check(4.0, 1.0)
    net.u[0][0] = -3.0  # a Tensor held by a list attribute, changed in place
    check(4.0, -3.0)
    traced = trace_count(net)
    check(4.0, -3.0)
    assert trace_count(net) == traced  # steady calls reuse the graph
    Tensor(np.ones(3))[0] = 5.0  # a Tensor the network does not hold: no new trace
    check(4.0, -3.0)
    assert trace_count(net) == traced


SHIFT = t([1.0])


def test_closure_and_global_tensors_changed_in_place_are_seen(where: str) -> None:
    v = t([2.0])

    @gs.jit
    def f(a: Tensor) -> Tensor:
        return (a * v).sum() + (a * SHIFT).sum()

    g = gs.value_and_grad(lambda a: (a * a * v).sum() + (a * SHIFT).sum())
    assert float(f(t(X))) == 3 * X.sum()
    value, grad = g(t(X))
    assert float(value) == 2 * (X * X).sum() + X.sum()
    np.testing.assert_array_equal(grad.asnumpy(), 4 * X + 1)
    v[0] = 6.0
    assert float(f(t(X))) == 7 * X.sum()
    value, grad = g(t(X))
    assert float(value) == 6 * (X * X).sum() + X.sum()
    np.testing.assert_array_equal(grad.asnumpy(), 12 * X + 1)
    SHIFT[0] = -1.0
    try:
        assert float(f(t(X))) == 5 * X.sum()
        np.testing.assert_array_equal(gs.grad(f)(t(X)).asnumpy(), 5 + 0 * X)
        np.testing.assert_array_equal(g(t(X))[1].asnumpy(), 12 * X - 1)
    finally:
        SHIFT[0] = 1.0


def test_parameter_item_assignment_moves_version_not_epoch() -> None:
    p, plain = Parameter(t([1.0, 2.0]), name="p"), t([1.0])
    before, version, plain_version = epoch.value, p.version, plain.version
    p[1] = 5.0
    plain[0] = 2.0
    assert epoch.value == before
    assert p.version != version and plain.version != plain_version and p.version != plain.version
    assert p.asnumpy().tolist() == [1.0, 5.0] and plain.asnumpy().tolist() == [2.0]


class Mode(nn.Cell):
    """2 * x * x while training, 3 * x * x * scale otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0

    def construct(self, x: Tensor) -> Tensor:
        return (x * x * 2).sum() if self.training else (x * x * 3 * self.scale).sum()


MODE = Mode()


def loss(x: Tensor) -> Tensor:
    """A global function reading a global Cell."""
    return MODE(x)


def test_cells_reached_through_closures_and_globals_follow_their_state(where: str) -> None:
    net = Mode()
    by_closure = gs.value_and_grad(lambda x: net(x))
    by_global = gs.grad(lambda x: loss(x))
    jitted = gs.jit(lambda x: net(x))
    grad_op = GradOperation()(net)
    grad_op_closure = GradOperation()(lambda x: net(x))

    def check(train: float, scale: float) -> None:
        k = 2.0 if train else 3.0 * scale
        value, grad = by_closure(t(X))
        assert float(value) == k * (X * X).sum() and float(jitted(t(X))) == k * (X * X).sum()
        np.testing.assert_array_equal(grad.asnumpy(), 2 * k * X)
        np.testing.assert_array_equal(grad_op(t(X)).asnumpy(), 2 * k * X)
        np.testing.assert_array_equal(grad_op_closure(t(X)).asnumpy(), 2 * k * X)
        np.testing.assert_array_equal(by_global(t(X)).asnumpy(), 2 * k * X)

    try:
        for cell in (net, MODE):
            cell.set_train(True)
        check(True, 1.0)
        for cell in (net, MODE):
            cell.set_train(False)
        check(False, 1.0)
        for cell in (net, MODE):
            cell.scale = 2.0
        check(False, 2.0)
        traced = trace_count(by_closure._staged[1])
        check(False, 2.0)
        assert trace_count(by_closure._staged[1]) == traced
    finally:
        MODE.set_train(False)
        MODE.scale = 1.0


FACTOR = 2.0


class Helper(nn.Cell):
    def construct(self, x: Tensor) -> Tensor:
        return self.helper(x)

    def helper(self, x: Tensor) -> Tensor:
        return (x * FACTOR).sum()


def test_globals_read_by_a_method_the_construct_calls_are_seen(where: str) -> None:
    global FACTOR
    net = Helper()
    assert float(net(t(X))) == 2 * X.sum()
    FACTOR = 5.0
    try:
        assert float(net(t(X))) == 5 * X.sum()
        np.testing.assert_array_equal(gs.grad(net)(t(X)).asnumpy(), 5 + 0 * X)
    finally:
        FACTOR = 2.0


class Normed(nn.Cell):
    """sum(w * BatchNorm1d(x))."""

    def __init__(self, w: np.ndarray) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(w.shape[1])
        self.w = Tensor(w)

    def construct(self, x: Tensor) -> Tensor:
        return (self.bn(x) * self.w).sum()


def test_batchnorm_reached_through_a_closure_stops_training_in_eval(where: str) -> None:
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    net = Normed(w)
    g = gs.value_and_grad(lambda a: net(a))
    eps = 1e-5
    mean, var = x.mean(0), x.var(0)
    y = (x - mean) / np.sqrt(var + eps)
    net.set_train(True)
    value, grad = g(Tensor(x))
    np.testing.assert_allclose(float(value), (w * y).sum(), rtol=1e-5, atol=1e-5)
    want = (w - w.mean(0) - y * (w * y).mean(0)) / np.sqrt(var + eps)  # BatchNorm's backward, batch statistics
    np.testing.assert_allclose(grad.asnumpy(), want, rtol=1e-4, atol=1e-5)
    moving_mean, moving_var = 0.1 * mean, 0.9 + 0.1 * var
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), moving_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), moving_var, rtol=1e-5)
    net.set_train(False)
    grad_op = GradOperation()(lambda a: net(a))
    for _ in range(2):
        np.testing.assert_allclose(grad_op(Tensor(x)).asnumpy(), w / np.sqrt(moving_var + eps), rtol=1e-5)
        value, grad = g(Tensor(x))
        np.testing.assert_allclose(float(value), (w * (x - moving_mean) / np.sqrt(moving_var + eps)).sum(), rtol=1e-5)
        np.testing.assert_allclose(grad.asnumpy(), w / np.sqrt(moving_var + eps), rtol=1e-5)
        np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), moving_mean, rtol=1e-5, atol=1e-7)  # no more updates
        np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), moving_var, rtol=1e-5)


class Weighted(nn.Cell):
    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = Parameter(t([w]), name="w")

    def construct(self, x: Tensor) -> Tensor:
        return (x * x * self.w).sum()


def test_a_closure_rebound_to_another_cell_of_the_same_class_is_seen(where: str) -> None:
    nets = [Weighted(2.0), Weighted(5.0)]
    current = nets[0]
    g = gs.grad(lambda x: current(x))
    np.testing.assert_array_equal(g(t(X)).asnumpy(), 4 * X)
    before = epoch.value
    current = nets[1]  # no Cell changed: the epoch stands still
    assert epoch.value == before
    np.testing.assert_array_equal(g(t(X)).asnumpy(), 10 * X)
    current = nets[0]
    np.testing.assert_array_equal(g(t(X)).asnumpy(), 4 * X)


def test_every_item_assignment_form_is_seen_by_a_jit_closure(where: str) -> None:
    v = t([1.0, 2.0, 3.0])

    @gs.jit
    def f(a: Tensor) -> Tensor:
        return a * v

    a, want = np.array([1.0, -2.0, 0.5]), np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(f(t(a)).asnumpy(), a * want)
    for key, value in ((1, 7.0), (slice(0, 2), -1.0), (np.array([True, False, True]), 4.0), (Tensor(np.array([2])), 9.0)):
        version = v.version
        v[key] = value
        want[key.asnumpy() if isinstance(key, Tensor) else key] = value
        assert v.version != version
        np.testing.assert_array_equal(f(t(a)).asnumpy(), a * want)


class Buffered(nn.Cell):
    """``buf[0] = buf[0] + x[1]`` on a Tensor attribute (not a Parameter), then sum(buf * x * w)."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = t([0.0, 5.0, 7.0])
        self.w = Parameter(t([1.0, 1.0, 1.0]), name="w")

    def construct(self, x: Tensor) -> Tensor:
        self.buf[0] = self.buf[0] + x[1]
        return (self.buf * x * self.w).sum()


XB = np.array([1.0, 2.0, 3.0])


def buffered_value(b0: float) -> float:
    """sum(buf * x) after the write, buf = (b0 + x1, 5, 7), x = XB (by hand: (b0 + 2) + 10 + 21)."""
    return b0 + 2.0 + 10.0 + 21.0


def buffered_grad(b0: float) -> np.ndarray:
    """d/dx of (b0 + x1) * x0 + 5 * x1 + 7 * x2 at XB: (b0 + x1, x0 + 5, 7)."""
    return np.array([b0 + 2.0, 6.0, 7.0])


def test_item_assignment_to_a_tensor_attribute_in_construct_writes_it_back(where: str) -> None:
    """MindSpore's PyNative in-place write: after each call the attribute holds the new value, and the next call
    (forward, gradient or transform) reads it; every call adds x1 = 2 to buf[0]."""
    net = Buffered()
    ones = t([1.0, 1.0, 1.0])
    calls = [
        ("grad", lambda x: gs.grad(net)(x), lambda b0: buffered_grad(b0)),
        ("grad again", lambda x: gs.grad(net)(x), lambda b0: buffered_grad(b0)),
        ("forward", lambda x: net(x), lambda b0: buffered_value(b0)),
        ("GradOperation", lambda x: GradOperation()(net)(x), lambda b0: buffered_grad(b0)),
        ("value_and_grad", lambda x: gs.value_and_grad(net)(x)[0], lambda b0: buffered_value(b0)),
        ("jvp", lambda x: gs.jvp(net, (x,), (ones,))[1], lambda b0: buffered_grad(b0).sum()),
        ("jacrev", lambda x: gs.jacrev(net)(x), lambda b0: buffered_grad(b0)),
        ("jacfwd", lambda x: gs.jacfwd(net)(x), lambda b0: buffered_grad(b0)),
        ("vjp_fn", lambda x: gs.vjp(net, x)[1](t(1.0))[0], lambda b0: buffered_grad(b0)),
        ("weights", lambda x: gs.grad(net, None, net.w)(x), lambda b0: np.array([b0 + 2.0, 10.0, 21.0])),
    ]
    b0 = 0.0
    for what, call, want in calls:
        got = call(t(XB))
        np.testing.assert_array_equal(got.asnumpy(), want(b0), err_msg=what)
        b0 += 2.0
        np.testing.assert_array_equal(net.buf.asnumpy(), [b0, 5.0, 7.0], err_msg=what)
    np.testing.assert_array_equal(gs.hessian(net)(t(XB)).asnumpy(), [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(net.buf.asnumpy(), [b0 + 2.0, 5.0, 7.0])  # a hessian call writes once too


class Overwritten(nn.Cell):
    """The issue's network: ``buf[0] = x[1]``, then sum(buf * x * w)."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = t([0.0, 0.0, 0.0])
        self.w = Parameter(t([1.0, 1.0, 1.0]), name="w")

    def construct(self, x: Tensor) -> Tensor:
        self.buf[0] = x[1]
        return (self.buf * x * self.w).sum()


def test_a_write_that_leaves_the_value_unchanged_keeps_the_trace(where: str) -> None:
    net = Overwritten()
    g = gs.grad(net)
    for _ in range(3):
        np.testing.assert_array_equal(g(t(XB)).asnumpy(), [2.0, 1.0, 0.0])  # d/dx of x1 * x0
        np.testing.assert_array_equal(net.buf.asnumpy(), [2.0, 0.0, 0.0])
    traced = trace_count(g._staged[1])
    version = net.buf.version
    np.testing.assert_array_equal(g(t(XB)).asnumpy(), [2.0, 1.0, 0.0])
    assert float(net(t(XB))) == 2.0
    assert trace_count(g._staged[1]) == traced and net.buf.version == version


BUF = t([0.0, 5.0, 7.0])


@gs.jit
def buffered(x: Tensor) -> Tensor:
    BUF[0] = BUF[0] + x[1]
    return (BUF * x).sum()


def test_item_assignment_to_a_global_tensor_in_a_jit_function_in_graph_mode(where: str) -> None:
    gs.set_context(mode=gs.GRAPH_MODE)
    try:
        assert float(buffered(t(XB))) == buffered_value(0.0)
        np.testing.assert_array_equal(gs.grad(buffered)(t(XB)).asnumpy(), buffered_grad(2.0))
        assert float(buffered(t(XB))) == buffered_value(4.0)
        np.testing.assert_array_equal(BUF.asnumpy(), [6.0, 5.0, 7.0])
    finally:
        BUF[0] = 0.0


class Inner(nn.Cell):
    """A gradient inside a construct of a function that writes a Tensor attribute: the write is dropped (as a
    Parameter's write inside a nested transform is), the attribute keeps its value."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = t([0.0, 5.0, 7.0])

    def inner(self, x: Tensor) -> Tensor:
        self.buf[0] = self.buf[0] + x[1]
        return (self.buf * x).sum()

    def construct(self, x: Tensor) -> Tensor:
        local = t([0.0, 0.0, 0.0])
        local[1] = x[0]  # a Tensor the construct made: changed in the trace only
        return gs.grad(self.inner)(x).sum() + self.buf[0] + (local * x).sum()


def test_writes_in_nested_transforms_and_to_local_tensors_are_not_written_back(where: str) -> None:
    net = Inner()
    for _ in range(2):
        assert float(net(t(XB))) == buffered_grad(0.0).sum() + 0.0 + 2.0  # + x0 * x1
        np.testing.assert_array_equal(gs.grad(net)(t(XB)).asnumpy(), [1.0 + 2.0, 1.0 + 1.0, 0.0])
        np.testing.assert_array_equal(net.buf.asnumpy(), [0.0, 5.0, 7.0])


def test_a_gradient_reusing_a_recorded_forward_reads_the_buffer_as_that_forward_did(where: str) -> None:
    """``set_grad()``: the gradient call after a forward of the same inputs reuses that forward (MindSpore's
    ``check_run``), so it reads buf as the forward read it and writes nothing more."""
    net = Buffered()
    net.set_grad()
    x = t(XB)
    assert float(net(x)) == buffered_value(0.0)
    np.testing.assert_array_equal(GradOperation()(net)(x).asnumpy(), buffered_grad(0.0))
    np.testing.assert_array_equal(net.buf.asnumpy(), [2.0, 5.0, 7.0])
    assert float(net(x)) == buffered_value(2.0)
    np.testing.assert_array_equal(gs.grad(net)(x).asnumpy(), buffered_grad(2.0))
    np.testing.assert_array_equal(net.buf.asnumpy(), [4.0, 5.0, 7.0])


class Cubed(nn.Cell):
    """sum(x^3 * s * u) with a number attribute s and a Tensor attribute u."""

    def __init__(self) -> None:
        super().__init__()
        self.s = 1.0
        self.u = t([1.0, 1.0])

    def construct(self, x: Tensor) -> Tensor:
        return (x**3 * self.s * self.u).sum()


def test_transforms_of_transforms_see_the_networks_state(where: str) -> None:
    """hessian (jacfwd of jacrev) and GradOperation of GradOperation follow the state of the network they reach:
    6 x s u on the diagonal, and 6 x s u as the gradient of the summed gradient."""
    net = Cubed()
    hessian, second = gs.hessian(net), GradOperation()(GradOperation()(net))
    for s, u in ((1.0, [1.0, 1.0]), (2.0, [1.0, 1.0]), (2.0, [5.0, 1.0])):
        net.s = s
        net.u[0] = u[0]
        np.testing.assert_array_equal(hessian(t(X)).asnumpy(), np.diag(6 * X * s * np.array(u)))
        np.testing.assert_array_equal(second(t(X)).asnumpy(), 6 * X * s * np.array(u))
