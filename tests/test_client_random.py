"""ops.standard_normal, randn, rand, uniform and normal inside traced functions: each top-level call draws new values
(a hidden step counter per call site, as nn.Dropout's), while the forward pass and every gradient inside one call
share them. Oracles: the engine's random ops run on their own with the call site's seeds and the step, both derived
here from the site's location and ``set_seed``'s seed (tests/randomkit.py; the op's recipe of docs/wire-format.md is
checked against a pure-Python reimplementation in test_ops.py), closed-form derivatives and central differences in
NumPy over the same draws. Every ``where`` test runs embedded and then through a server against the same oracle (the
fixture's set_seed restarts the steps), so remote draws equal embedded ones."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

import gradserve as gs
from gradserve import nn, ops
from gradserve.client import functional, runner

from .randomkit import drawn, first_step, site_seeds

S = first_step(11)
"""Every site's first step after the ``seeded`` fixture's set_seed(11)."""


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

    vg = gs.value_and_grad(loss_fn, None, [w], has_aux=True)
    seeds = site_seeds(loss_fn, "ops.randn")
    seen = []
    for k in range(3):
        (loss, z), (gw,) = vg(gs.Tensor(1.5))
        want_z = drawn("StandardNormal", (3, 4), seeds, S + k, dtype=np.float64)  # one step per call
        np.testing.assert_array_equal(z.asnumpy(), want_z)

        def f(wv: np.ndarray) -> float:
            return float(((wv * want_z).sum() * 1.5) ** 2)

        np.testing.assert_allclose(loss.asnumpy(), f(w.asnumpy()), rtol=1e-12)
        np.testing.assert_allclose(gw.asnumpy(), 2 * 1.5**2 * (w.asnumpy() * want_z).sum() * want_z, rtol=1e-12)
        np.testing.assert_allclose(gw.asnumpy(), central(f, w.asnumpy()), rtol=1e-6, atol=1e-8)
        seen.append(want_z)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])


class Noisy(nn.Cell):
    """x + standard_normal(x.shape) + rand(x.shape): two calls at one site (one line), so one call draws steps
    k and k + 1 there."""

    def construct(self, x: Any) -> Any:
        return x + ops.standard_normal(x.shape) + ops.rand(*x.shape)


def test_forward_calls_of_a_cell_draw_new_values_without_a_new_trace(where: str, seeded: None) -> None:
    net, x = Noisy(), gs.Tensor(np.zeros((5, 2), np.float32))
    outs = [net(x).asnumpy() for _ in range(3)]
    seeds = site_seeds(Noisy.construct, "ops.standard_normal")
    for k, out in enumerate(outs):
        want = drawn("StandardNormal", (5, 2), seeds, S + 2 * k) + drawn("UniformReal", (5, 2), seeds, S + 2 * k + 1)
        np.testing.assert_array_equal(out, want)


def test_a_site_called_twice_in_one_call_draws_two_steps(where: str, seeded: None) -> None:
    """A helper drawing at one line, called twice in one traced function, draws steps k and k + 1, as a Dropout layer
    called twice in one construct does, and the next call goes on from k + 2."""

    def noise() -> Any:
        return ops.rand(4)

    fn = gs.jit(lambda x: (noise() + x, noise() + x))
    first = [t.asnumpy() for t in fn(gs.Tensor(np.zeros(4, np.float32)))]
    seeds = site_seeds(noise, "ops.rand")
    np.testing.assert_array_equal(first[0], drawn("UniformReal", (4,), seeds, S))
    np.testing.assert_array_equal(first[1], drawn("UniformReal", (4,), seeds, S + 1))
    second = fn(gs.Tensor(np.zeros(4, np.float32)))[0].asnumpy()
    np.testing.assert_array_equal(second, drawn("UniformReal", (4,), seeds, S + 2))
    assert np.all((first[0] >= 0) & (first[0] < 1))


def test_normal_and_uniform_parameters_take_gradients_through_the_draws(where: str, seeded: None) -> None:
    """y = normal(shape, mu, sigma) = mu + sigma z: d sum(y^2)/d mu = sum 2y, d/d sigma = sum 2y z; uniform's bounds
    likewise through lo + (hi - lo) u. z and u are the sites' draws at their first step (float32)."""
    me = test_normal_and_uniform_parameters_take_gradients_through_the_draws
    mu, sigma = gs.Tensor(np.float32(0.5)), gs.Tensor(np.float32(2.0))
    (gmu, gsigma) = gs.grad(lambda m, s: (ops.normal((4, 3), m, s) ** 2).sum(), grad_position=(0, 1))(mu, sigma)
    z = drawn("StandardNormal", (4, 3), site_seeds(me, "ops.normal((4, 3)", "<lambda>"), S).astype(np.float64)
    y = 0.5 + 2.0 * z
    np.testing.assert_allclose(gmu.asnumpy(), (2 * y).sum(), rtol=1e-5)
    np.testing.assert_allclose(gsigma.asnumpy(), (2 * y * z).sum(), rtol=1e-5)
    lo, hi = gs.Tensor(np.float32(-1.0)), gs.Tensor(np.float32(3.0))
    value, (glo, ghi) = gs.value_and_grad(lambda a, b: ops.uniform((6,), a, b).sum(), grad_position=(0, 1))(lo, hi)
    u = drawn("UniformReal", (6,), site_seeds(me, "ops.uniform((6,), a, b)", "<lambda>"), S).astype(np.float64)
    np.testing.assert_allclose(value.asnumpy(), (-1 + 4 * u).sum(), rtol=1e-6)
    np.testing.assert_allclose([glo.asnumpy(), ghi.asnumpy()], [(1 - u).sum(), u.sum()], rtol=1e-6)


def test_uniform_int_inside_a_trace_draws_in_range(where: str, seeded: None) -> None:
    fn = gs.jit(lambda x: ops.uniform((2000,), gs.Tensor(-3, gs.int32), gs.Tensor(4, gs.int32), dtype=gs.int32) + x)
    got = [fn(gs.Tensor(np.int32(0))).asnumpy() for _ in range(2)]
    seeds = site_seeds(test_uniform_int_inside_a_trace_draws_in_range, "ops.uniform((2000,)", "<lambda>")
    assert got[0].dtype == np.int32
    for k in range(2):
        np.testing.assert_array_equal(got[k], drawn("UniformInt", (2000,), seeds, S + k, minval=-3, maxval=4))
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

    t, net = gs.Tensor(np.float32(1.25)), Orders()
    seeds = site_seeds(cube, "ops.standard_normal")
    for k in range(2):  # one step per call, however many gradients the call takes
        value, first, second = (o.asnumpy() for o in net(t))
        z = drawn("StandardNormal", (5,), seeds, S + k).astype(np.float64)
        np.testing.assert_allclose(value, ((1.25 * z) ** 3).sum(), rtol=1e-5)
        np.testing.assert_allclose(first, 3 * 1.25**2 * (z**3).sum(), rtol=1e-5)
        np.testing.assert_allclose(second, 6 * 1.25 * (z**3).sum(), rtol=1e-5)


def test_a_draw_inside_a_gradient_inside_jit_moves_on_each_step(where: str, seeded: None) -> None:
    """The DCGAN tutorial's shape: value_and_grad of a function drawing z, called inside an ms.jit step. The gradient's
    writes are dropped inside a construct, all but the draw's step counter, so every step draws a new z."""
    w = gs.Parameter(np.ones(3), name="w")
    grad_fn = gs.value_and_grad(lambda x: (w * ops.randn(3, dtype=gs.float64) * x).sum(), None, [w])
    step = gs.jit(lambda x: grad_fn(x)[1][0])
    got = [step(gs.Tensor(2.0)).asnumpy() for _ in range(3)]
    seeds = site_seeds(test_a_draw_inside_a_gradient_inside_jit_moves_on_each_step, "ops.randn(3", "<lambda>")
    for k in range(3):
        np.testing.assert_allclose(got[k], 2.0 * drawn("StandardNormal", (3,), seeds, S + k, dtype=np.float64), rtol=1e-15)


def test_vjp_of_a_function_uses_its_forwards_draw(where: str, seeded: None) -> None:
    """vjp of f(x) = x * z with z = randn inside a plain function: the forward is traced as a Cell's is, so y = x z
    and vjp_fn(v) = v z use step k's draw at call k (an eager forward would draw z from another generator)."""

    def f(x: Any) -> Any:
        return x * ops.randn(3, dtype=gs.float64)

    x = gs.Tensor(np.array([2.0, -1.0, 0.5]))
    seen = []
    for k in range(3):
        y, vjp_fn = gs.vjp(f, x)
        (gx,) = vjp_fn(gs.Tensor(np.ones(3)))
        z = drawn("StandardNormal", (3,), site_seeds(f, "ops.randn"), S + k, dtype=np.float64)
        np.testing.assert_array_equal(y.asnumpy(), x.asnumpy() * z)
        np.testing.assert_array_equal(gx.asnumpy(), z)
        seen.append(z)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])


class _Scaled:
    """A plain object (not a Cell) whose method vjp is given."""

    def __init__(self, k: float, noisy: bool = False) -> None:
        self.k, self.noisy = k, noisy

    def f(self, x: Any) -> Any:
        return x * self.k * (ops.randn(3, dtype=gs.float64) if self.noisy else 1.0)


def test_vjp_of_a_plain_objects_method_runs_it_as_called_and_refuses_a_draw_in_it(where: str) -> None:
    """A method of an object that is not a Cell runs as called (its attributes may change between calls: a trace would
    be kept for the first object's state), and a random draw in it is a TracingError naming what to do, since vjp_fn's
    trace of it would draw other values than the forward's."""
    x, p = gs.Tensor(np.array([1.0, 2.0, 3.0])), _Scaled(2.0)
    assert np.array_equal(gs.vjp(p.f, x)[0].asnumpy(), [2.0, 4.0, 6.0])
    p.k = 3.0
    assert np.array_equal(gs.vjp(p.f, x)[0].asnumpy(), [3.0, 6.0, 9.0])
    with pytest.raises(gs.TracingError, match="pass vjp a plain function or a Cell"):
        gs.vjp(_Scaled(2.0, noisy=True).f, x)


def _noisy_step() -> Any:
    """A new jit function drawing at one call site each time it is made (as a script defining its step anew)."""
    return gs.jit(lambda x: x + ops.randn(3))


def test_set_seed_restarts_the_sites_cached_graphs_included(where: str) -> None:
    """As MindSpore's set_seed resets its op seeds: after set_seed(s) every site draws from step first_step(s) on
    again, in a graph traced before (it reads the step counter) and in one traced anew at the same site; another seed
    draws other values."""
    seeds, x = site_seeds(_noisy_step, "ops.randn", "<lambda>"), gs.Tensor(np.zeros(3, np.float32))
    cached = _noisy_step()
    for seed in (21, 22, 21):
        gs.set_seed(seed)
        got = [cached(x).asnumpy() for _ in range(2)] + [_noisy_step()(x).asnumpy()]
        for k in range(3):
            np.testing.assert_array_equal(got[k], drawn("StandardNormal", (3,), seeds, first_step(seed) + k))
    assert not np.array_equal(drawn("StandardNormal", (3,), seeds, first_step(21)),
                              drawn("StandardNormal", (3,), seeds, first_step(22)))


def test_a_site_is_its_location_not_its_shapes(seeded: None) -> None:
    """One site drawing 30 shapes in turn (a dynamic batch size) keeps one seed pair and one step counter: the table
    and the counters do not grow per shape, and call k draws step k at its shape."""

    def noisy(x: Any) -> Any:
        return x + ops.randn(*x.shape)

    fn, seeds = gs.jit(noisy), site_seeds(noisy, "ops.randn")
    sizes = []
    for n in range(1, 31):
        got = fn(gs.Tensor(np.zeros(n, np.float32))).asnumpy()
        np.testing.assert_array_equal(got, drawn("StandardNormal", (n,), seeds, S + n - 1))
        sizes.append((len(functional._SITES), len(runner._DRAW_COUNTERS)))
    assert sizes == sizes[:1] * 30  # the first call made the site (if new), the other 29 shapes nothing


def test_threads_tracing_one_new_site_share_its_counter(seeded: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads tracing eight functions that draw at one new site at once make one counter for it (the lookup
    and the insertion are one locked step; a slow counter creation would otherwise let every thread make its own)."""
    made = []

    def slow_counter(name: str, start: int) -> Any:
        time.sleep(0.05)  # every thread has passed an unlocked lookup by now
        made.append(name)
        return runner.draw_counter(name, start)

    def helper(x: Any) -> Any:
        return x + ops.rand(2)

    monkeypatch.setattr(functional, "draw_counter", slow_counter)
    fns = [gs.jit(lambda x, i=i: helper(x) * 1.0) for i in range(8)]
    barrier = threading.Barrier(8)
    outs: list[np.ndarray] = []

    def work(f: Any) -> None:
        barrier.wait()
        outs.append(f(gs.Tensor(np.zeros(2, np.float32))).asnumpy())

    threads = [threading.Thread(target=work, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(outs) == 8
    seeds = site_seeds(helper, "ops.rand")
    want = {drawn("UniformReal", (2,), seeds, S + k).tobytes() for k in range(8)}
    assert {o.tobytes() for o in outs} == want  # eight calls, eight steps of the one counter


def test_float_uniform_is_computed_in_float32_and_may_round_to_maxval(seeded: None) -> None:
    """ops.uniform(shape, 1000, 1001) inside a trace is float32's 1000 + 1 * u, element for element; u is below 1, but
    float32's spacing near 1001 (2^-14) rounds every u above 1 - 2^-15 up to maxval, as the docstring says (10^6
    draws: about 30 such expected)."""
    lo, hi = gs.Tensor(np.float32(1000.0)), gs.Tensor(np.float32(1001.0))
    fn = gs.jit(lambda x: ops.uniform((1_000_000,), lo, hi) + x)
    got = fn(gs.Tensor(np.float32(0))).asnumpy()
    me = test_float_uniform_is_computed_in_float32_and_may_round_to_maxval
    u = drawn("UniformReal", (1_000_000,), site_seeds(me, "ops.uniform((1_000_000,)", "<lambda>"), S)
    np.testing.assert_array_equal(got, np.float32(1000.0) + np.float32(1.0) * u)
    assert got.min() >= 1000.0 and got.max() == 1001.0 and (got == 1001.0).sum() > 0


def test_a_scripts_traced_draws_do_not_depend_on_where_it_lies_or_how_it_was_started(tmp_path: Any) -> None:
    """The same script after the same set_seed draws the same values started as ``python x.py`` or ``python ./x.py``,
    and from a copy in another folder: a site's seeds come from its file's name, line and function, not its path."""
    script = ("import numpy as np, gradserve as gs\nfrom gradserve import ops\ngs.set_seed(1)\n"
              "step = gs.jit(lambda x: x + ops.randn(3))\n"
              "print(repr(step(gs.Tensor(np.zeros(3, np.float32))).asnumpy().tolist()))\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "noise.py").write_text(script)
    env = {**os.environ, "GRADSERVE_TARGET": ""}
    runs = [subprocess.run([sys.executable, path], cwd=tmp_path / "a", env=env, capture_output=True, text=True, timeout=120)
            for path in ("noise.py", "./noise.py", str(tmp_path / "b" / "noise.py"))]
    for run in runs:
        assert run.returncode == 0, run.stderr
    values = [run.stdout.strip() for run in runs]
    assert values[0] == values[1] == values[2] and len(eval(values[0])) == 3
