"""Tensor indexing beyond basic slices: boolean masks computed inside a construct (read as guarded values, so a
trace is reused while the mask is the same and traced again when it changes) and several integer index arrays
(broadcast together, NumPy's placement of the advanced axes), reads and item assignment; values against NumPy,
gradients against PyTorch, embedded and remote."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from clientkit import Fn, check_like_torch, torch_value_and_grads

import gradserve as gs
import gradserve.ops as ops
from gradserve import Tensor
from gradserve.client import trace_count

RNG = np.random.default_rng(1111)
A = RNG.standard_normal((3, 4, 5))


# ---- several integer index arrays: values against NumPy ----

I0, I1 = np.array([[1, 0], [2, -1]]), np.array([0, 3])
KEYS = [
    (I0, I1),  # two arrays broadcast together, on adjacent axes
    (I0, slice(None), I1),  # separated by a slice: the index axes come first
    (slice(None), I0, I1),  # adjacent after a slice: they stay in place
    (slice(1, None), [2, 0], [4, -5]),
    (0, slice(None), [1, 3]),  # an int next to an array counts as an array: separated, so first
    (slice(None), 1, [1, 3]),  # adjacent: in place
    ([0, 2], [1, 1], [4, 0]),  # all three axes
    (Ellipsis, [0, 1], [2, 3]),
    ([1, 2], None, [0, 0]),  # None separates the arrays
    (np.array([True, False, True]), [0, 3]),  # a boolean array in a tuple is its nonzero() arrays
    (slice(None), np.array([[True, False, True, False, True]] * 4)),
    ([[0], [2]], slice(None, None, -1), [[1, 2, 3]]),
]


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("key", KEYS)
def test_index_arrays_read_like_numpy(key: Any, traced: bool) -> None:
    want = A[key]
    got = Fn(lambda t: t[key])(Tensor(A)) if traced else Tensor(A)[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.asnumpy(), want)


@pytest.mark.parametrize("traced", [False, True])
def test_index_tensors_computed_in_the_trace(traced: bool) -> None:
    """Index Tensors (int32 and int64, negative entries) passed in, or computed inside the construct."""
    i, j = np.array([[-1], [0]], np.int32), np.array([3, -2, 0])

    def fn(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return t[a + 0, :, b * 1]

    got = (Fn(fn) if traced else fn)(Tensor(A), Tensor(i), Tensor(j))
    np.testing.assert_array_equal(got.asnumpy(), A[i, :, j])


def test_index_array_errors() -> None:
    t = Tensor(A)
    with pytest.raises(IndexError, match=r"shape mismatch: indexing arrays could not be broadcast together with shapes \(2,\) \(3,\)"):
        t[[0, 1], [0, 1, 2]]
    with pytest.raises(IndexError, match="index 4 is out of bounds for axis 1 with size 4"):
        t[[0, 1], [0, 4]]
    with pytest.raises(IndexError, match="index 3 is out of bounds for axis 0 with size 3"):
        t[3, [0]]
    with pytest.raises(IndexError, match=r"boolean mask of shape \(3,\) does not match axes 1 to 1 of shape \(3, 4, 5\)"):
        t[:, np.array([True, False, True])]
    with pytest.raises(IndexError, match="index arrays must be integers"):
        t[[0, 1], np.array([0.5, 1.0])]


@pytest.mark.parametrize("key", KEYS)
def test_index_array_assignment_like_numpy(key: Any) -> None:
    shape = A[key].shape
    for value in (2.5, RNG.standard_normal(shape), RNG.standard_normal(shape[-1:])):
        t = Tensor(A)
        t[key] = Tensor(value) if isinstance(value, np.ndarray) else value
        want = A.copy()
        want[key] = value
        np.testing.assert_array_equal(t.asnumpy(), want)


def test_repeated_positions_in_assignment_are_refused() -> None:
    with pytest.raises(IndexError, match="item assignment with repeated indices is not supported"):
        Tensor(A)[[0, 0], [1, 1]] = 1.0


# ---- gradients against PyTorch, embedded and remote ----

def test_index_array_gradients(where: str) -> None:
    x, y = RNG.standard_normal((3, 4, 5)), RNG.standard_normal((2, 4))
    i0, i1, i2 = np.array([[2], [0]]), np.array([1, 3, 1]), np.array([0, 2])

    def ms(x: Tensor, y: Tensor) -> Tensor:
        a = x[Tensor(i0), Tensor(i1)]  # (2, 3, 5), index axes in place; repeated rows add up in the gradient
        b = x[Tensor(i2), :, Tensor(i2)]  # (2, 4), index axes first
        c = x[1:, [0, 3], [-1, 2]]  # (2, 2) after a slice
        z = x * 1
        z[Tensor(i2), 1:3, Tensor(i2) + 1] = y[:, :2] * b[:, 1:3]
        return (a * a).sum() + (b * y).sum() + (c ** 3).sum() + (z * z * x).sum()

    def th(x: Any, y: Any) -> Any:
        a = x[torch.tensor(i0), torch.tensor(i1)]
        b = x[torch.tensor(i2), :, torch.tensor(i2)]
        c = x[1:, [0, 3], [-1, 2]]
        z = x * 1
        z[torch.tensor(i2), 1:3, torch.tensor(i2) + 1] = y[:, :2] * b[:, 1:3]
        return (a * a).sum() + (b * y).sum() + (c ** 3).sum() + (z * z * x).sum()

    check_like_torch(ms, th, x, y)


# ---- boolean masks computed inside a construct ----

XX = np.array([[0.5, 2.0, -1.0], [3.0, 1.0, 1.75]])


def test_masks_from_the_issue(where: str) -> None:
    """``gs.grad`` of a function whose mask is computed from its input, or passed in."""
    want = 2 * XX * (XX > 1.5)
    np.testing.assert_array_equal(gs.grad(lambda t: (t[t > 1.5] ** 2).sum())(Tensor(XX)).asnumpy(), want)
    m = XX < 1.2
    got = gs.grad(lambda t, mk: (t[mk] ** 2).sum())(Tensor(XX), Tensor(m))
    np.testing.assert_array_equal(got.asnumpy(), 2 * XX * m)
    value, grad = gs.value_and_grad(lambda t: (t[t > 1.5] ** 3).sum())(Tensor(XX))
    np.testing.assert_allclose(value.asnumpy(), (XX[XX > 1.5] ** 3).sum(), rtol=1e-15)
    np.testing.assert_allclose(grad.asnumpy(), 3 * XX ** 2 * (XX > 1.5), rtol=1e-15)


def test_a_computed_mask_is_guarded(where: str) -> None:
    """The same mask reuses the trace; a changed mask traces again and gives the new answer (values and
    gradients against PyTorch)."""
    w = np.array([1.0, -2.0, 3.0])
    net = Fn(lambda t, v: (t[t > 1.5] * t[t > 1.5]).sum() + (t[:, v > 0] * v[v > 0]).sum())

    def th(t: Any, v: Any) -> Any:
        return (t[t > 1.5] * t[t > 1.5]).sum() + (t[:, v > 0] * v[v > 0]).sum()

    grad_all = ops.GradOperation(get_all=True)
    for x in (XX, XX * 1.01, -XX, XX):  # XX * 1.01 has XX's masks: no new trace
        want, want_grads = torch_value_and_grads(th, x, w)
        np.testing.assert_allclose(net(Tensor(x), Tensor(w)).asnumpy(), want, rtol=1e-14)
        for g, gw in zip(grad_all(net)(Tensor(x), Tensor(w)), want_grads):
            np.testing.assert_allclose(g.asnumpy(), gw, rtol=1e-14)
    assert trace_count(net) == 2  # one trace per mask seen; the guard picks the cached one for the same mask
    np.testing.assert_array_equal(net(Tensor(XX), Tensor(-w)).asnumpy(), (XX[XX > 1.5] ** 2).sum() + (XX[:, [1]] * 2).sum())
    assert trace_count(net) == 3


def test_second_order_through_a_computed_mask(where: str) -> None:
    net = Fn(lambda t: (t[t > 0.9] ** 3).sum())
    g2 = ops.GradOperation()(ops.GradOperation()(net))(Tensor(XX))
    np.testing.assert_allclose(g2.asnumpy(), 6 * XX * (XX > 0.9), rtol=1e-15)


def test_masked_assignment_with_a_computed_mask(where: str) -> None:
    """``t[mask] = value`` with a mask computed in the construct, also one covering the leading axes only."""
    x = RNG.standard_normal((3, 4))

    def ms(x: Tensor) -> Tensor:
        z = x * 1
        z[z > 0.2] = 0.5
        z[z.sum(1) > 0] = z * 3
        return (z * x).sum()

    def th(x: Any) -> Any:
        z = x * 1
        z = torch.where(z > 0.2, torch.full_like(z, 0.5), z)
        z = torch.where((z.sum(1) > 0)[:, None], z * 3, z)
        return (z * x).sum()

    check_like_torch(ms, th, x)


@pytest.mark.parametrize("traced", [False, True])
def test_index_array_assignment_to_a_bool_tensor(traced: bool) -> None:
    m = np.array([[True, False, True], [False, False, True]])

    def fn(b: Tensor, i: Tensor) -> Tensor:
        b[i, [2, 0]] = Tensor(np.array([False, True]))  # i is computed inside the construct when traced
        b[[0, 1], i + 0] = True
        return b

    got = (Fn(fn) if traced else fn)(Tensor(m), Tensor(np.array([1, 0])))
    want = m.copy()
    want[[1, 0], [2, 0]] = [False, True]
    want[[0, 1], [1, 0]] = True
    np.testing.assert_array_equal(got.asnumpy(), want)


def test_a_mask_passed_in_is_guarded(where: str) -> None:
    net = Fn(lambda t, mk: (t[mk] ** 2).sum())
    grad_x = ops.GradOperation()(net)
    m1, m2 = XX > 1.0, XX < 0.75
    for m in (m1, m1.copy(), m2, m1):
        np.testing.assert_allclose(net(Tensor(XX), Tensor(m)).asnumpy(), (XX[m] ** 2).sum(), rtol=1e-15)
        np.testing.assert_array_equal(grad_x(Tensor(XX), Tensor(m)).asnumpy(), 2 * XX * m)
    assert trace_count(net) == 2


def test_masked_assignment_of_one_value_per_selected_element(where: str) -> None:
    """A value that does not broadcast to the Tensor holds one entry per selected element (NumPy's rule); the mask
    is read (a guard), so a changed mask traces again."""
    x = RNG.standard_normal((3, 4))
    net = Fn(lambda x, v: _assign_selected(x, v))

    def th(x: Any, v: Any) -> Any:
        z = x * 1
        z[z > 0] = v[: int((x > 0).sum())] * 2
        return (z * z * x).sum()

    for sign in (1.0, -1.0, 1.0):
        xs = sign * x
        v = RNG.standard_normal(int((xs > 0).sum()))
        want = xs.copy()
        want[want > 0] = v * 2
        got = Tensor(xs)
        got[got > 0] = Tensor(v * 2)  # eagerly
        np.testing.assert_array_equal(got.asnumpy(), want)
        want_value, want_grads = torch_value_and_grads(th, xs, v)
        np.testing.assert_allclose(net(Tensor(xs), Tensor(v)).asnumpy(), want_value, rtol=1e-12)
        for g, w in zip(ops.GradOperation(get_all=True)(net)(Tensor(xs), Tensor(v)), want_grads):
            np.testing.assert_allclose(g.asnumpy(), w, rtol=1e-12, atol=1e-14)


def _assign_selected(x: Tensor, v: Tensor) -> Tensor:
    z = x * 1
    z[z > 0] = v * 2
    return (z * z * x).sum()


def test_a_zero_d_boolean_index_adds_an_axis_of_length_one_or_zero(where: str) -> None:
    """NumPy's rule: ``x[True]`` is x with a new leading axis of length 1, ``x[False]`` of length 0, whether the mask
    is a Tensor, a Python bool, computed in the trace (a guard: each value gets its own graph) or passed in; values,
    gradients against torch (which follows NumPy here), and assignment through a 0-d mask."""
    for mask in (Tensor(True), Tensor(False), True, np.bool_(False)):
        got = Tensor(XX)[mask]
        want = XX[bool(mask.asnumpy()) if isinstance(mask, Tensor) else mask]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.asnumpy(), want)
    assert Tensor(np.float64(2.0))[Tensor(True)].shape == (1,)
    net = Fn(lambda t, k: (t[t.sum() > k] ** 2).sum() + (t[k > 0] * 3).sum())

    def th(t: Any, k: Any) -> Any:
        return (t[t.sum() > k] ** 2).sum() + (t[k > 0] * 3).sum()

    grad_all = ops.GradOperation(get_all=True)
    for k in (0.0, 1e6, -1.0, 0.0):
        want, (want_grad, _) = torch_value_and_grads(th, XX, np.array(k))
        np.testing.assert_allclose(net(Tensor(XX), Tensor(np.array(k))).asnumpy(), want, rtol=1e-14)
        np.testing.assert_allclose(grad_all(net)(Tensor(XX), Tensor(np.array(k)))[0].asnumpy(), want_grad, rtol=1e-14)
    y = Tensor(np.arange(3.0))
    y[Tensor(False)] = 1.0
    np.testing.assert_array_equal(y.asnumpy(), [0.0, 1.0, 2.0])
    y[Tensor(True)] = 5.0
    np.testing.assert_array_equal(y.asnumpy(), [5.0, 5.0, 5.0])


def test_a_zero_d_boolean_index_with_other_indices_says_what_to_write() -> None:
    with pytest.raises(IndexError, match=r"a 0-d boolean index is supported alone .* index in two steps \(x\[mask\]\[:, i\]\)"):
        Tensor(XX)[Tensor(True), 0]
