"""nn.Dropout draws a new mask at every top-level call (forward, gradient or transform), moving its step counter on
exactly once per call, as MindSpore draws a new mask each call; within one call the forward and every order of
gradient share the mask. Oracles: the engine's Dropout op run eagerly with the layer's seeds and the step (the
recipe of docs/wire-format.md), and the same seed recomputed in a fresh layer."""
from __future__ import annotations

from typing import Any

import numpy as np

import gradserve as gs
from gradserve import nn, ops
from gradserve.engine import OPS

KEEP = 0.6
X = np.random.default_rng(31).normal(size=(12, 10))


def mask(drop: nn.Dropout, step: int, shape: tuple[int, ...] = X.shape) -> np.ndarray:
    """The engine's scaled mask (kept elements 1 / keep_prob, the others 0) for ``drop`` at ``step``."""
    out, _ = OPS["Dropout"].forward(np.ones(shape), np.array(step, np.int64), keep_prob=KEEP, Seed0=drop.seed0, Seed1=drop.seed1)
    return out


class Weighted(nn.Cell):
    """sum(w * dropout(x)): its gradient with respect to w is dropout(x), the mask applied to x."""

    def __init__(self) -> None:
        super().__init__()
        self.w = gs.Parameter(np.ones(X.shape), name="w")
        self.drop = nn.Dropout(p=1 - KEEP)
        self.drop.set_train(True)

    def construct(self, x: Any) -> Any:
        return (self.w * self.drop(x)).sum()


def test_consecutive_forward_calls_draw_new_masks_one_step_each(where: str) -> None:
    gs.set_seed(5)
    drop = nn.Dropout(p=1 - KEEP)
    drop.set_train(True)
    x = gs.Tensor(X)
    outs = [drop(x).asnumpy() for _ in range(3)]
    assert drop.step == 3
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, X * mask(drop, k))
    assert (outs[0] != outs[1]).any() and (outs[1] != outs[2]).any()


def test_functional_training_draws_a_new_mask_each_step_shared_by_its_gradient(where: str) -> None:
    gs.set_seed(6)
    net = Weighted()
    opt = nn.SGD(net.trainable_params(), learning_rate=0.0)
    fwd = ops.value_and_grad(lambda x: net(x), None, opt.parameters)
    x = gs.Tensor(X)
    seen = []
    for k in range(3):
        loss, (gw,) = fwd(x)
        opt((gw,))
        assert net.drop.step == k + 1  # one call, one step
        np.testing.assert_allclose(gw.asnumpy(), X * mask(net.drop, k), rtol=1e-15)  # the gradient's mask is step k's
        np.testing.assert_allclose(loss.asnumpy(), (X * mask(net.drop, k)).sum(), rtol=1e-12)  # ... and so is the value's
        seen.append(gw.asnumpy() != 0)
    assert (seen[0] != seen[1]).any() and (seen[1] != seen[2]).any()
    # the same seed recomputed: a fresh layer's forward calls draw the same masks, step by step
    gs.set_seed(6)
    again = Weighted()
    for k in range(3):
        np.testing.assert_array_equal(again.drop(x).asnumpy() != 0, seen[k])


class Orders(nn.Cell):
    """One call giving sum(dropout(x)^3) and its first and second derivatives (transforms inside the construct)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(p=1 - KEEP)
        self.drop.set_train(True)

    def cube(self, t: Any) -> Any:
        return (self.drop(t) ** 3).sum()

    def construct(self, t: Any) -> Any:
        return self.cube(t), ops.grad(self.cube)(t), ops.grad(lambda u: ops.grad(self.cube)(u).sum())(t)


def test_every_gradient_order_in_one_call_shares_the_calls_mask(where: str) -> None:
    gs.set_seed(7)
    net = Orders()
    x = gs.Tensor(X)
    for k in range(2):
        value, first, second = (t.asnumpy() for t in net(x))
        m = mask(net.drop, k)  # m is the scaled mask: dropout(x) = m x
        np.testing.assert_allclose(value, ((m * X) ** 3).sum(), rtol=1e-12)
        np.testing.assert_allclose(first, 3 * m**3 * X**2, rtol=1e-12)
        np.testing.assert_allclose(second, 6 * m**3 * X, rtol=1e-12)
        assert net.drop.step == k + 1
    # a top-level gradient of the same function: one more step, its own mask
    g = ops.grad(net.cube)(x).asnumpy()
    np.testing.assert_allclose(g, 3 * mask(net.drop, 2) ** 3 * X**2, rtol=1e-12)
    assert net.drop.step == 3


def test_a_gradient_after_a_recorded_forward_reuses_its_mask_and_step() -> None:
    gs.set_seed(8)
    net = Weighted()
    net.set_grad()
    x = gs.Tensor(X)
    out = net(x).asnumpy()
    (gw,) = ops.GradOperation(get_by_list=True)(net, net.trainable_params())(x)
    assert net.drop.step == 1  # the gradient reused the forward: no second step
    np.testing.assert_allclose(gw.asnumpy(), X * mask(net.drop, 0), rtol=1e-15)
    np.testing.assert_allclose(out, gw.asnumpy().sum(), rtol=1e-12)


def test_train_one_step_cell_advances_once_per_step_with_the_forwards_mask(where: str) -> None:
    gs.set_seed(9)
    net = Weighted()
    step = nn.TrainOneStepCell(net, nn.SGD(net.trainable_params(), learning_rate=1.0))
    x = gs.Tensor(X)
    for k in range(3):
        w = net.w.asnumpy().copy()
        loss = step(x).asnumpy()
        assert net.drop.step == k + 1
        np.testing.assert_allclose(loss, (w * X * mask(net.drop, k)).sum(), rtol=1e-12)  # the forward's mask, step k
        np.testing.assert_allclose(net.w.asnumpy(), w - X * mask(net.drop, k), rtol=1e-12)  # the gradient's: the same


def test_inference_calls_do_not_move_the_step() -> None:
    drop = nn.Dropout(p=0.5)
    x = gs.Tensor(X)
    np.testing.assert_array_equal(drop(x).asnumpy(), X)
    ops.grad(lambda t: drop(t).sum())(x)
    assert drop.step == 0


def test_vjp_fn_uses_the_mask_of_vjps_forward(where: str) -> None:
    gs.set_seed(10)
    drop = nn.Dropout(p=1 - KEEP)
    drop.set_train(True)
    x = gs.Tensor(X)
    for k in range(2):
        out, vjp_fn = ops.vjp(lambda t: drop(t) * t, x)  # the forward call moves the step on once
        assert drop.step == k + 1
        np.testing.assert_allclose(out.asnumpy(), mask(drop, k) * X**2, rtol=1e-15)
        (g,) = vjp_fn(gs.Tensor(np.ones(X.shape)))
        np.testing.assert_allclose(g.asnumpy(), 2 * mask(drop, k) * X, rtol=1e-15)  # step k's mask, not the next one
        assert drop.step == k + 1


class Cube(nn.Cell):
    """sum(dropout(x)^3): its gradient is 3 m^3 x^2 and its Hessian diag(6 m^3 x), m the scaled mask."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(p=1 - KEEP)
        self.drop.set_train(True)

    def construct(self, x: Any) -> Any:
        return (self.drop(x) ** 3).sum()


def test_transforms_of_transforms_draw_a_new_mask_each_call(where: str) -> None:
    """hessian, jacfwd(jacrev(net)), grad(grad(net)) and GradOperation of GradOperation: each call moves the step on
    once and every order inside it uses that step's mask, as a call of the network itself does."""
    gs.set_seed(11)
    net = Cube()
    x = X[0, :8]
    first = lambda m: 3 * m**3 * x**2  # noqa: E731
    hess = lambda m: np.diag(6 * m**3 * x)  # noqa: E731
    calls = [
        (gs.hessian(net), hess),
        (gs.jacfwd(gs.jacrev(net)), hess),
        (gs.jacrev(gs.jacrev(net)), hess),
        (gs.grad(gs.grad(net)), lambda m: 6 * m**3 * x),  # the gradient of sum(3 m^3 x^2)
        (ops.GradOperation()(ops.GradOperation()(net)), lambda m: 6 * m**3 * x),
        (gs.jacrev(gs.grad(net)), hess),
        (gs.grad(net), first),
    ]
    step = 0
    seen = []
    for fn, want in calls:
        for _ in range(2):
            m = mask(net.drop, step, x.shape)
            np.testing.assert_allclose(fn(gs.Tensor(x)).asnumpy(), want(m), rtol=1e-12)
            step += 1
            assert net.drop.step == step
            seen.append(m != 0)
    assert len({s.tobytes() for s in seen}) > len(seen) // 2  # new masks, not one repeated
