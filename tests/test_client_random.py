"""ops.standard_normal, randn, rand, uniform and normal inside traced functions: each top-level call draws new values
(a hidden step counter per call site, as nn.Dropout's), while the forward pass and every gradient inside one call
share them. Oracles: the engine's random ops run on their own with the call site's seeds and the step (the recipe
of docs/wire-format.md, itself checked against a pure-Python reimplementation in test_ops.py), closed-form
derivatives and central differences in NumPy over the same draws. Every ``where`` test runs embedded and then through
a server against the same oracle, so remote draws equal embedded ones."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest

import gradserve as gs
from gradserve import nn, ops
from gradserve.client import functional
from gradserve.engine import OPS


class Sites:
    """The call sites a block of code drew at: their seeds, step counters and the step each was at before the block
    (a site outlives a test: the remote run of a ``where`` test goes on with the steps of the embedded one)."""

    def __init__(self) -> None:
        self.before = {key: int(counter.asnumpy()) for key, (_, _, counter) in functional._SITES.items()}

    def new(self) -> list[tuple[Any, ...]]:
        """(op, shape, attrs, Seed0, Seed1, counter, first step) of each site whose counter moved since, in the order
        they were first traced."""
        out = []
        for key, (s0, s1, counter) in functional._SITES.items():
            start = self.before.get(key, 0)
            if int(counter.asnumpy()) != start:
                op, shape, attrs = key[1]
                out.append((op, shape, dict(attrs), s0, s1, counter, start))
        return out


def draws(site: tuple[Any, ...], k: int) -> np.ndarray:
    """The engine op's values for ``site`` at its k-th step since the block began."""
    op, shape, attrs, s0, s1, _, start = site
    step = start + k
    extra = {"dtype": np.dtype(attrs["dtype"])} if "dtype" in attrs else {"minval": int(attrs["minval"]), "maxval": int(attrs["maxval"])}
    return OPS[op].forward(np.array(step, np.int64), shape=shape, Seed0=s0, Seed1=s1, **extra)


@pytest.fixture()
def seeded() -> Iterator[None]:
    gs.set_seed(11)
    yield


def central(f: Any, w: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f at w, element by element."""
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[i] = h
        g[i] = (f(w + e) - f(w - e)) / (2 * h)
    return g


def test_each_call_draws_new_values_shared_by_its_gradient(where: str, seeded: None) -> None:
    """value_and_grad of (sum(w * z))^2 with z = randn inside: the loss, the returned z and the gradient 2 s z all use
    step k's draw at call k; the gradient equals central differences of the loss over that same draw."""
    w = gs.Parameter(np.linspace(-1, 1, 12).reshape(3, 4), name="w")

    def loss_fn(x: Any) -> Any:
        z = ops.randn(3, 4, dtype=gs.float64)
        return ((w * z).sum() * x) ** 2, z

    sites = Sites()
    vg = gs.value_and_grad(loss_fn, None, [w], has_aux=True)
    seen = []
    for k in range(3):
        (loss, z), (gw,) = vg(gs.Tensor(1.5))
        (site,) = sites.new()
        assert site[0] == "StandardNormal" and int(site[5].asnumpy()) == site[6] + k + 1  # one step per call
        want_z = draws(site, k)
        np.testing.assert_array_equal(z.asnumpy(), want_z)

        def f(wv: np.ndarray) -> float:
            return float(((wv * want_z).sum() * 1.5) ** 2)

        np.testing.assert_allclose(loss.asnumpy(), f(w.asnumpy()), rtol=1e-12)
        np.testing.assert_allclose(gw.asnumpy(), 2 * 1.5**2 * (w.asnumpy() * want_z).sum() * want_z, rtol=1e-12)
        np.testing.assert_allclose(gw.asnumpy(), central(f, w.asnumpy()), rtol=1e-6, atol=1e-8)
        seen.append(want_z)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])


class Noisy(nn.Cell):
    """x + standard_normal(x.shape) + rand(x.shape): a forward call draws both at the sites' steps."""

    def construct(self, x: Any) -> Any:
        return x + ops.standard_normal(x.shape) + ops.rand(*x.shape)


def test_forward_calls_of_a_cell_draw_new_values_without_a_new_trace(where: str, seeded: None) -> None:
    net, x = Noisy(), gs.Tensor(np.zeros((5, 2), np.float32))
    sites = Sites()
    outs = [net(x).asnumpy() for _ in range(3)]
    normal_site, uniform_site = sites.new()
    assert (normal_site[0], uniform_site[0]) == ("StandardNormal", "UniformReal")
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, draws(normal_site, k) + draws(uniform_site, k))
    assert int(normal_site[5].asnumpy()) == normal_site[6] + 3 and int(uniform_site[5].asnumpy()) == uniform_site[6] + 3


def test_a_site_called_twice_in_one_call_draws_two_steps(where: str, seeded: None) -> None:
    """A helper drawing at one line, called twice in one traced function, draws steps k and k + 1, as a Dropout layer
    called twice in one construct does, and the next call goes on from k + 2."""

    def noise() -> Any:
        return ops.rand(4)

    sites = Sites()
    fn = gs.jit(lambda x: (noise() + x, noise() + x))
    first = [t.asnumpy() for t in fn(gs.Tensor(np.zeros(4, np.float32)))]
    (site,) = sites.new()
    np.testing.assert_array_equal(first[0], draws(site, 0))
    np.testing.assert_array_equal(first[1], draws(site, 1))
    second = fn(gs.Tensor(np.zeros(4, np.float32)))[0].asnumpy()
    np.testing.assert_array_equal(second, draws(site, 2))
    assert np.all((first[0] >= 0) & (first[0] < 1))


def test_normal_and_uniform_parameters_take_gradients_through_the_draws(where: str, seeded: None) -> None:
    """y = normal(shape, mu, sigma) = mu + sigma z: d sum(y^2)/d mu = sum 2y, d/d sigma = sum 2y z; uniform's bounds
    likewise through lo + (hi - lo) u. z and u are the sites' draws at step 0 (float32)."""
    mu, sigma = gs.Tensor(np.float32(0.5)), gs.Tensor(np.float32(2.0))
    sites = Sites()
    (gmu, gsigma) = gs.grad(lambda m, s: (ops.normal((4, 3), m, s) ** 2).sum(), grad_position=(0, 1))(mu, sigma)
    (site,) = sites.new()
    z = draws(site, 0).astype(np.float64)
    y = 0.5 + 2.0 * z
    np.testing.assert_allclose(gmu.asnumpy(), (2 * y).sum(), rtol=1e-5)
    np.testing.assert_allclose(gsigma.asnumpy(), (2 * y * z).sum(), rtol=1e-5)
    lo, hi = gs.Tensor(np.float32(-1.0)), gs.Tensor(np.float32(3.0))
    sites = Sites()
    value, (glo, ghi) = gs.value_and_grad(lambda a, b: ops.uniform((6,), a, b).sum(), grad_position=(0, 1))(lo, hi)
    (site,) = sites.new()
    u = draws(site, 0).astype(np.float64)
    np.testing.assert_allclose(value.asnumpy(), (-1 + 4 * u).sum(), rtol=1e-6)
    np.testing.assert_allclose([glo.asnumpy(), ghi.asnumpy()], [(1 - u).sum(), u.sum()], rtol=1e-6)


def test_uniform_int_inside_a_trace_draws_in_range(where: str, seeded: None) -> None:
    sites = Sites()
    fn = gs.jit(lambda x: ops.uniform((2000,), gs.Tensor(-3, gs.int32), gs.Tensor(4, gs.int32), dtype=gs.int32) + x)
    got = [fn(gs.Tensor(np.int32(0))).asnumpy() for _ in range(2)]
    (site,) = sites.new()
    assert site[0] == "UniformInt" and got[0].dtype == np.int32
    for k in range(2):
        np.testing.assert_array_equal(got[k], draws(site, k))
    assert set(got[0].tolist()) == set(range(-3, 4)) and not np.array_equal(got[0], got[1])
    with pytest.raises(ValueError, match=r"minval \(2\) must be less than maxval \(2\)"):
        gs.jit(lambda x: ops.uniform((2,), 2, 2, dtype=gs.int32) + x)(gs.Tensor(np.int32(0)))


def test_gradient_orders_inside_one_call_share_the_draw(where: str, seeded: None) -> None:
    """f(t) = sum((t z)^3) with z drawn inside: one call returning f, f' = 3 t^2 z^3 and f'' = 6 t z^3 sees one z."""

    def cube(t: Any) -> Any:
        return ((t * ops.standard_normal((5,))) ** 3).sum()

    class Orders(nn.Cell):
        def construct(self, t: Any) -> Any:
            return cube(t), ops.grad(cube)(t), ops.grad(lambda u: ops.grad(cube)(u).sum())(t)

    sites = Sites()
    t = gs.Tensor(np.float32(1.25))
    value, first, second = (o.asnumpy() for o in Orders()(t))
    (site,) = sites.new()
    z = draws(site, 0).astype(np.float64)
    np.testing.assert_allclose(value, ((1.25 * z) ** 3).sum(), rtol=1e-5)
    np.testing.assert_allclose(first, 3 * 1.25**2 * (z**3).sum(), rtol=1e-5)
    np.testing.assert_allclose(second, 6 * 1.25 * (z**3).sum(), rtol=1e-5)
    assert int(site[5].asnumpy()) == site[6] + 1


def test_a_draw_inside_a_gradient_inside_jit_moves_on_each_step(where: str, seeded: None) -> None:
    """The DCGAN tutorial's shape: value_and_grad of a function drawing z, called inside an ms.jit step. The gradient's
    writes are dropped inside a construct, all but the draw's step counter, so every step draws a new z."""
    w = gs.Parameter(np.ones(3), name="w")
    grad_fn = gs.value_and_grad(lambda x: (w * ops.randn(3, dtype=gs.float64) * x).sum(), None, [w])
    step = gs.jit(lambda x: grad_fn(x)[1][0])
    sites = Sites()
    got = [step(gs.Tensor(2.0)).asnumpy() for _ in range(3)]
    (site,) = sites.new()
    for k in range(3):
        np.testing.assert_allclose(got[k], 2.0 * draws(site, k), rtol=1e-15)
    assert int(site[5].asnumpy()) == site[6] + 3


def test_vjp_of_a_function_uses_its_forwards_draw(where: str, seeded: None) -> None:
    """vjp of f(x) = x * z with z = randn inside a plain function: the forward is traced as a Cell's is, so y = x z
    and vjp_fn(v) = v z use step k's draw at call k (an eager forward would draw z from another generator)."""

    def f(x: Any) -> Any:
        return x * ops.randn(3, dtype=gs.float64)

    x = gs.Tensor(np.array([2.0, -1.0, 0.5]))
    sites = Sites()
    seen = []
    for k in range(3):
        y, vjp_fn = gs.vjp(f, x)
        (gx,) = vjp_fn(gs.Tensor(np.ones(3)))
        (site,) = sites.new()
        z = draws(site, k)
        np.testing.assert_array_equal(y.asnumpy(), x.asnumpy() * z)
        np.testing.assert_array_equal(gx.asnumpy(), z)
        seen.append(z)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
