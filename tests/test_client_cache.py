"""The trace cache's steady-call shortcuts (client/epoch.py, runner.Declared, state.StateWatch, get_backend's
choice): every change that used to retrace or resend still does, each checked against the closed form."""
from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor
from gradserve.client import backends, epoch, get_backend, trace_count
from gradserve.client import grad as grad_module
from gradserve.client.embedded import EmbeddedBackend
from gradserve.client.runner import _CACHES

GAIN = 2.0


def t(v: object) -> Tensor:
    return Tensor(np.asarray(v, np.float64))


class Affine(nn.Cell):
    """w * x + b, times a float attribute, plus each number of a list attribute; training adds 100."""

    def __init__(self) -> None:
        super().__init__()
        self.w = Parameter(t([3.0]), name="w")
        self.b = Parameter(t([0.5]), name="b")
        self.k = 1.0
        self.extra = [0.0]

    def construct(self, x: Tensor) -> Tensor:
        y = (self.w * x + self.b) * self.k + self.extra[0]
        return y + 100.0 if self.training else y


def forward(net: Affine, x: np.ndarray, w: float, b: float, k: float = 1.0, extra: float = 0.0, training: bool = False) -> None:
    want = (w * x + b) * k + extra + (100.0 if training else 0.0)
    np.testing.assert_allclose(net(t(x)).asnumpy(), want, rtol=1e-15)


X = np.array([1.5, -2.0])


def test_steady_calls_do_not_move_the_epoch_or_retrace() -> None:
    net = Affine()
    forward(net, X, 3.0, 0.5)
    before = epoch.value
    for _ in range(3):
        forward(net, X, 3.0, 0.5)
    assert epoch.value == before and trace_count(net) == 1


def test_set_data_and_item_assignment_reach_the_cached_graph_without_moving_the_epoch() -> None:
    net = Affine()
    forward(net, X, 3.0, 0.5)
    before = epoch.value
    net.w.set_data(t([-2.0]))
    forward(net, X, -2.0, 0.5)
    net.b = t([4.0])  # a Tensor assigned to a Parameter attribute is set_data
    forward(net, X, -2.0, 4.0)
    assert epoch.value == before
    net.w[0] = 7.0  # in place: a new value of the same shape and dtype
    forward(net, X, 7.0, 4.0)
    assert trace_count(net) == 1


def test_parameter_version_moves_with_every_value_and_is_never_shared() -> None:
    p, q = Parameter(t([1.0]), name="p"), Parameter(t([1.0]), name="q")
    seen = {p.version, q.version}
    p.set_data(t([2.0]))
    assert p.version not in seen
    seen.add(p.version)
    p[0] = 3.0
    assert p.version not in seen and p.asnumpy().tolist() == [3.0]


@pytest.mark.parametrize("change", ["rename", "requires_grad"])
def test_parameter_name_or_requires_grad_change_retraces(change: str) -> None:
    net = Affine()
    grads = ops.GradOperation(get_by_list=True)(net, ParameterTuple([net.w, net.b]))
    (dw, db) = grads(t(X))
    np.testing.assert_allclose([dw.asnumpy()[0], db.asnumpy()[0]], [X.sum(), 2.0])
    before = epoch.value
    if change == "rename":
        net.w.name = "weight"
        assert [p.name for p in net.get_parameters()] == ["weight", "b"]
    else:
        net.b.requires_grad = False
        assert [p.name for p in net.trainable_params()] == ["w"]
    assert epoch.value != before
    forward(net, X, 3.0, 0.5)
    (dw, db) = grads(t(X))
    frozen_b = 0.0 if change == "requires_grad" else 2.0  # a frozen Parameter's gradient is zero, as when built so
    np.testing.assert_allclose([dw.asnumpy()[0], db.asnumpy()[0]], [X.sum(), frozen_b])
    assert trace_count(net) == 2  # the parameter key changed once, and the forward and gradient share it


def test_number_attribute_list_item_and_set_train_are_seen() -> None:
    net = Affine()
    forward(net, X, 3.0, 0.5)
    net.k = 2.5
    forward(net, X, 3.0, 0.5, k=2.5)
    net.extra[0] = -1.25  # in place: moves no epoch, read again on every call
    forward(net, X, 3.0, 0.5, k=2.5, extra=-1.25)
    net.set_train()
    forward(net, X, 3.0, 0.5, k=2.5, extra=-1.25, training=True)
    net.set_train(False)
    forward(net, X, 3.0, 0.5, k=2.5, extra=-1.25)
    assert trace_count(net) == 4  # k, extra, training: the last state is found in the cache


class Outer(nn.Cell):
    """A child's attributes and parameters, and one added later with insert_param_to_cell."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Affine()

    def construct(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        return y * self.extra_w if "extra_w" in self.parameters_dict(recurse=False) else y


def test_child_attributes_and_inserted_or_deleted_parameters_are_seen() -> None:
    net = Outer()
    np.testing.assert_allclose(net(t(X)).asnumpy(), 3.0 * X + 0.5)
    net.inner.k = -1.0
    np.testing.assert_allclose(net(t(X)).asnumpy(), -(3.0 * X + 0.5))
    net.insert_param_to_cell("extra_w", Parameter(t([2.0])))
    assert [p.name for p in net.get_parameters()] == ["extra_w", "inner.w", "inner.b"]
    np.testing.assert_allclose(net(t(X)).asnumpy(), -2.0 * (3.0 * X + 0.5))
    del net.extra_w
    np.testing.assert_allclose(net(t(X)).asnumpy(), -(3.0 * X + 0.5))
    net.inner = Affine()
    np.testing.assert_allclose(net(t(X)).asnumpy(), 3.0 * X + 0.5)


def test_a_global_number_and_a_closure_number_are_read_on_every_call() -> None:
    global GAIN
    offset = 1.0

    def f(x: Tensor) -> Tensor:
        return x * GAIN + offset

    fn = gs.jit(f)
    np.testing.assert_allclose(fn(t(X)).asnumpy(), X * 2.0 + 1.0)
    GAIN = -3.0
    try:
        np.testing.assert_allclose(fn(t(X)).asnumpy(), X * -3.0 + 1.0)
        offset = 5.0
        np.testing.assert_allclose(fn(t(X)).asnumpy(), X * -3.0 + 5.0)
    finally:
        GAIN = 2.0
    np.testing.assert_allclose(fn(t(X)).asnumpy(), X * 2.0 + 5.0)


def test_forward_and_gradient_calls_in_turn_keep_one_trace() -> None:
    net = Affine()
    grads = ops.GradOperation(get_by_list=True)(net, ParameterTuple(net.trainable_params()))
    for w in (3.0, 4.0, 5.0):
        net.w.set_data(t([w]))
        forward(net, X, w, 0.5)
        dw, db = grads(t(X))
        np.testing.assert_allclose([dw.asnumpy()[0], db.asnumpy()[0]], [X.sum(), 2.0])
    assert trace_count(net) == 1


def test_the_cache_does_not_keep_a_network_alive() -> None:
    net = Affine()
    forward(net, X, 3.0, 0.5)

    def f(x: Tensor) -> Tensor:
        return x * 2.0

    fn = gs.jit(f)
    fn(t(X))
    refs = [weakref.ref(net), weakref.ref(fn)]
    del net, fn
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert all(r() not in _CACHES for r in refs)


class Recording(EmbeddedBackend):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target


def test_get_backend_reads_the_environment_once_until_set_context(clean_context: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_factories", [])
    backends.register_backend_factory(Recording)
    monkeypatch.setenv("GRADSERVE_TARGET", "first:1")
    first = get_backend()
    assert first.target == "first:1"  # type: ignore[attr-defined]
    monkeypatch.setenv("GRADSERVE_TARGET", "second:2")
    assert get_backend() is first  # the variable was read at the first call
    gs.set_context(target=None)  # set_context: the settings are read again
    assert type(get_backend()) is EmbeddedBackend
    gs.set_context(target="third:3")
    assert get_backend().target == "third:3"  # type: ignore[attr-defined]
    gs.set_context(target=None, token=None)
    monkeypatch.delenv("GRADSERVE_TARGET")
    gs.set_context(token=None)
    net = Affine()
    forward(net, X, 3.0, 0.5)
    assert type(get_backend()) is EmbeddedBackend


class TupleScaled(nn.Cell):
    """Reads a NumPy array held in a tuple attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.table = (np.array([2.0, 3.0]), 1)

    def construct(self, x: Tensor) -> Tensor:
        return x * Tensor(self.table[0])


def test_an_array_in_a_tuple_attribute_changed_in_place_is_seen() -> None:
    net = TupleScaled()
    np.testing.assert_allclose(net(t(X)).asnumpy(), X * [2.0, 3.0])
    before = epoch.value
    net.table[0][1] = -5.0  # no assignment to the Cell: the epoch stays, the array is read again
    assert epoch.value == before
    np.testing.assert_allclose(net(t(X)).asnumpy(), X * [2.0, -5.0])
    assert trace_count(net) == 2


def test_a_transform_keeps_each_traces_result_structure_when_another_trace_is_made_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    # another thread's first call (here made in the gap, deterministically) traces the tuple argument after this call's
    # trace of a Tensor argument was made and before its result's structure is taken: each keeps its own structure
    x, y = Tensor(np.array([1.0, 2.0], np.float32)), Tensor(np.array([3.0, 4.0], np.float32))
    g = gs.grad(lambda a: ops.sum(a[0] * a[1]) if isinstance(a, tuple) else ops.sum(a * a), 0)
    real = grad_module.traced_for
    meanwhile: list[Any] = []

    def traced_for(fn: Any, args: Any, weights: Any = ()) -> Any:
        entry = real(fn, args, weights)
        if not meanwhile:
            meanwhile.append(None)
            meanwhile[0] = g((x, y))
        return entry

    monkeypatch.setattr(grad_module, "traced_for", traced_for)
    first = g(x)
    other = meanwhile[0]
    assert isinstance(first, Tensor) and isinstance(other, tuple) and len(other) == 2
    np.testing.assert_array_equal(first.asnumpy(), [2.0, 4.0])  # d sum(a^2) = 2a
    np.testing.assert_array_equal(other[0].asnumpy(), [3.0, 4.0])  # d sum(a0 * a1) / d a0 = a1
    np.testing.assert_array_equal(other[1].asnumpy(), [1.0, 2.0])
    monkeypatch.undo()
    again, other_again = g(x), g((x, y))
    assert isinstance(again, Tensor) and isinstance(other_again, tuple)
    np.testing.assert_array_equal(again.asnumpy(), [2.0, 4.0])
