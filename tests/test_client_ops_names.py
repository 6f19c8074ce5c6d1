"""MindSpore 2.x's lower-case functions in ``gradserve.ops``: the names (an op's ``functional`` field, or a function of
``client/functional.py``), their argument order and semantics, values and gradients, embedded and through a server.

Oracles: NumPy and torch in float64 for values, central finite differences for gradients, and the examples MindSpore's
documentation prints (ops.topk, ops.gelu, ops.cumsum, ops.split)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as tf
from clientkit import Fn

import gradserve as gs
import gradserve.ops as ops
from gradserve import Tensor
from gradserve.client.functional import FUNCTIONS
from gradserve.client.primitives import functional_names
from gradserve.engine import OPS, ShapeError

RNG = np.random.default_rng(23)
X = RNG.standard_normal((3, 5))
X3 = RNG.standard_normal((2, 3, 4))


def fd_grads(f: Callable[..., float], *arrays: np.ndarray, h: float = 1e-6) -> list[np.ndarray]:
    """Central differences of a scalar function of float64 arrays."""
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            hi, lo = [b.copy() for b in arrays], [b.copy() for b in arrays]
            hi[i][idx] += h
            lo[i][idx] -= h
            g[idx] = (f(*hi) - f(*lo)) / (2 * h)
        grads.append(g)
    return grads


def check_grad(fn: Callable[..., Any], *arrays: np.ndarray) -> None:
    """``gs.grad`` of the scalar ``fn`` w.r.t. every input equals central finite differences (rtol 1e-6)."""
    positions = tuple(range(len(arrays)))
    got = gs.grad(fn, grad_position=positions)(*(Tensor(a) for a in arrays))
    got = got if isinstance(got, tuple) else (got,)
    want = fd_grads(lambda *a: float(fn(*(Tensor(b) for b in a)).asnumpy()), *arrays)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.asnumpy(), w, rtol=1e-6, atol=1e-8)


# ---- names ----

def test_generated_names_are_the_op_tables_functional_fields() -> None:
    names = functional_names()
    for op, opdef in OPS.items():
        for name in opdef.functional:
            assert names[name] == op and getattr(ops, name).__name__ == name
    for name in ("cumsum", "topk", "logsumexp", "silu", "flatten", "prod", "amin", "amax", "where", "cat", "fill", "depend",
                 "print_", "shape", "max", "min", "argmax", "argmin", "square", "split", "einsum", "pad", "dropout", "gelu", "bmm", "ne", "gt"):
        assert callable(getattr(ops, name)), name
    for odd in ("cum_sum", "top_k", "log_sum_exp", "si_lu", "conv2_d", "real_div", "adaptive_avg_pool2_d", "max_pool_with_argmax"):
        assert not hasattr(ops, odd), odd
    assert not set(FUNCTIONS) & set(names), "a written function would hide a generated one"
    assert ops.cat is ops.cat and ops.silu is ops.silu  # one dict lookup, the form made once
    assert names is functional_names()


# ---- generated forms: values and gradients ----

def test_generated_forms_match_numpy() -> None:
    a = Tensor(X)
    np.testing.assert_allclose(ops.silu(a).asnumpy(), X / (1 + np.exp(-X)), rtol=1e-13)
    np.testing.assert_allclose(ops.square(a).asnumpy(), X * X, rtol=1e-15)
    m = X.max(1, keepdims=True)
    np.testing.assert_allclose(ops.logsumexp(a, 1, True).asnumpy(), np.log(np.exp(X - m).sum(1, keepdims=True)) + m, rtol=1e-13)
    np.testing.assert_array_equal(ops.cat((a, a), 1).asnumpy(), np.concatenate([X, X], 1))
    np.testing.assert_array_equal(ops.where(a > 0, a, 0.0).asnumpy(), np.where(X > 0, X, 0))
    np.testing.assert_array_equal(ops.ne(a, a).asnumpy(), np.zeros(X.shape, bool))
    b = RNG.standard_normal((2, 5, 4))
    np.testing.assert_allclose(ops.bmm(Tensor(b.transpose(0, 2, 1)), Tensor(b)).asnumpy(), b.transpose(0, 2, 1) @ b, rtol=1e-13)


def test_generated_forms_gradients() -> None:
    check_grad(lambda x: (ops.silu(x) * ops.square(x)).sum(), X)
    check_grad(lambda x: ops.logsumexp(x, (0, 1)), X)
    check_grad(lambda x, y: ops.where(x > y, x * y, ops.cat((y, x), 0)[1:4]).sum(), X, RNG.standard_normal((3, 5)))


# ---- functions written for MindSpore's signatures ----

def test_split_takes_a_size_or_sections_then_axis() -> None:
    x = np.arange(10.0)
    assert [p.asnumpy().tolist() for p in ops.split(Tensor(x), 3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [p.asnumpy().tolist() for p in ops.split(Tensor(x), [3, 3, 4])] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    pieces = ops.split(Tensor(X3), [1, 0, 3], axis=-1)
    for got, want in zip(pieces, np.split(X3, [1, 1], axis=-1)):
        np.testing.assert_array_equal(got.asnumpy(), want)
    assert [p.shape for p in ops.split(Tensor(X3), 2, 2)] == [(2, 3, 2)] * 2
    with pytest.raises(ValueError, match=r"ops.split: the sizes \(3, 3\) add up to 6, not to the length 10 of axis 0"):
        ops.split(Tensor(x), [3, 3])
    with pytest.raises(ValueError, match=r"ops.split: axis 3 is out of range for a Tensor of rank 3"):
        ops.split(Tensor(X3), 1, 3)
    with pytest.raises(ValueError, match="must be positive"):
        ops.split(Tensor(x), 0)
    check_grad(lambda t: (ops.split(t, 2, 1)[1] * ops.split(t, [1, 2, 2], 1)[2]).sum() + ops.split(t, 3, 0)[0].sum(), X)


def test_einsum_takes_the_equation_first() -> None:
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2))
    np.testing.assert_allclose(ops.einsum("ij,jk->ik", Tensor(a), Tensor(b)).asnumpy(), a @ b, rtol=1e-13)
    np.testing.assert_allclose(ops.einsum("ij,jk->ki", [Tensor(a), Tensor(b)]).asnumpy(), (a @ b).T, rtol=1e-13)
    with pytest.raises(TypeError, match="the equation comes first"):
        ops.einsum(Tensor(a), "ij->ji")
    check_grad(lambda x, y: ops.einsum("ij,jk->k", x, y).sum() * ops.einsum("ij->", x), a, b)


@pytest.mark.parametrize("padding", [(1, 2), (1, 0, 2, 1), (0, 1, 1, 0, 2, 2), (-1, 2, 1, -2)])
def test_pad_takes_torch_style_padding_last_axis_first(padding: tuple[int, ...]) -> None:
    want = tf.pad(torch.tensor(X3), padding, value=0.0).numpy()
    np.testing.assert_array_equal(ops.pad(Tensor(X3), padding).asnumpy(), want)
    np.testing.assert_array_equal(ops.pad(Tensor(X3), list(padding), "constant", 2.5).asnumpy(), tf.pad(torch.tensor(X3), padding, value=2.5).numpy())
    check_grad(lambda t: (ops.pad(t, padding, value=1.5) ** 2).sum(), X3)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [(1, 2), (2, 1, 0, 2), (3, 0, 1, 2)])
def test_pad_modes_match_torch(where: str, mode: str, padding: tuple[int, ...]) -> None:
    """Values equal torch's F.pad; gradients (a scatter-add back to the positions read) equal torch's and finite
    differences, and so does the gradient of a gradient."""
    weights = RNG.standard_normal(tf.pad(torch.tensor(X3), padding, mode=mode).shape)
    np.testing.assert_array_equal(ops.pad(Tensor(X3), padding, mode).asnumpy(), tf.pad(torch.tensor(X3), padding, mode=mode).numpy())
    a = torch.tensor(X3, requires_grad=True)
    (torch.sin(tf.pad(a, padding, mode=mode)) * torch.tensor(weights)).sum().backward()
    fn = lambda t: (ops.sin(ops.pad(t, padding, mode)) * Tensor(weights)).sum()  # noqa: E731
    np.testing.assert_allclose(gs.grad(fn)(Tensor(X3)).asnumpy(), a.grad.numpy(), rtol=1e-12, atol=1e-12)
    check_grad(fn, X3)
    check_grad(lambda t: (gs.grad(fn)(t) * Tensor(X3)).sum(), X3)


def test_pad_errors() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of \('constant', 'reflect', 'replicate', 'circular'\), got 'symmetric'"):
        ops.pad(Tensor(X), (1, 1), "symmetric")
    with pytest.raises(ValueError, match=r"value is for mode='constant' only, got value=1.0 with mode='reflect'"):
        ops.pad(Tensor(X), (1, 1), "reflect", 1.0)
    with pytest.raises(ValueError, match=r"mode='circular' takes non-negative padding, got \(-1, 1\)"):
        ops.pad(Tensor(X), (-1, 1), "circular")
    with pytest.raises(ShapeError, match=r"reflect padding \(0, 5\) of axis 1 must be less than its length 5"):
        ops.pad(Tensor(X), (0, 5), "reflect")
    with pytest.raises(ValueError, match="even length of at most 2 \\* rank = 4, got 3"):
        ops.pad(Tensor(X), (1, 1, 1))


def test_dropout_signature_and_mask() -> None:
    x = np.ones((40, 50))
    out = ops.dropout(Tensor(x), 0.25, True, 7).asnumpy()
    assert set(np.unique(out)) <= {0.0, 1 / 0.75}
    assert abs((out == 0).mean() - 0.25) < 0.03  # 2000 draws: 4.6 standard deviations
    np.testing.assert_array_equal(ops.dropout(Tensor(x), p=0.25, seed=7).asnumpy(), out)  # a seed fixes the mask
    assert ops.dropout(Tensor(x), 0.5, False) is not None and np.array_equal(ops.dropout(Tensor(x), 0.5, False).asnumpy(), x)
    np.testing.assert_array_equal(ops.dropout(Tensor(x), 1.0).asnumpy(), np.zeros_like(x))
    gs.set_seed(3)
    first = ops.dropout(Tensor(x)).asnumpy()
    gs.set_seed(3)
    np.testing.assert_array_equal(ops.dropout(Tensor(x)).asnumpy(), first)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        ops.dropout(Tensor(x), 1.5)
    # the gradient is the same mask scaled, as the forward pass drew it
    mask = (ops.dropout(Tensor(X), 0.5, seed=11).asnumpy() != 0) * 2.0
    np.testing.assert_array_equal(gs.grad(lambda t: ops.dropout(t, 0.5, seed=11).sum())(Tensor(X)).asnumpy(), mask)


def test_gelu_is_exact_by_default_and_the_primitive_keeps_tanh() -> None:
    # MindSpore 2.x's documented ops.gelu example prints [0.8413447 1.9544997 2.9959505]; ops.GeLU()(x) [0.841192 1.9545976 2.9963627]
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(ops.gelu(Tensor(x)).asnumpy(), tf.gelu(torch.tensor(x)).numpy(), rtol=1e-14)
    np.testing.assert_allclose(ops.gelu(Tensor(x)).asnumpy(), [0.8413447, 1.9544997, 2.9959505], rtol=1e-6)
    np.testing.assert_allclose(ops.gelu(Tensor(x), approximate="tanh").asnumpy(), tf.gelu(torch.tensor(x), approximate="tanh").numpy(), rtol=1e-14)
    np.testing.assert_allclose(ops.GeLU()(Tensor(x)).asnumpy(), [0.841192, 1.9545976, 2.9963627], rtol=1e-6)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        ops.gelu(Tensor(x), "erf")
    check_grad(lambda t: ops.gelu(t).sum() + ops.gelu(t, "tanh").sum(), X)


def test_cumsum_topk_flatten_prod() -> None:
    i = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    np.testing.assert_array_equal(ops.cumsum(Tensor(i), 1).asnumpy(), [[1, 3, 6], [4, 9, 15]])
    c = ops.cumsum(Tensor(i), 0, gs.float64)
    assert c.dtype == gs.float64 and c.asnumpy().tolist() == [[1, 2, 3], [5, 7, 9]]
    t = torch.tensor(X3)
    for dim, largest in ((None, True), (1, True), (0, False), (-1, False)):
        values, indices = ops.topk(Tensor(X3), 2, dim, largest)
        want = torch.topk(t, 2, -1 if dim is None else dim, largest)
        np.testing.assert_array_equal(values.asnumpy(), want.values.numpy())
        np.testing.assert_array_equal(indices.asnumpy(), want.indices.numpy())
    assert ops.flatten(Tensor(np.ones((1, 2, 3, 4)))).shape == (1, 24)
    assert ops.flatten(Tensor(X3), start_dim=0, end_dim=1).shape == (6, 4) and ops.flatten(Tensor(np.array(2.0))).shape == (1,)
    np.testing.assert_allclose(ops.prod(Tensor(X3), 1, True).asnumpy(), X3.prod(1, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(ops.prod(Tensor(X3)).asnumpy(), X3.prod(), rtol=1e-13)
    check_grad(lambda x: (ops.cumsum(x, 1) * ops.topk(x, 2, 0, False)[0].sum()).sum() + ops.prod(x, 0).sum(), X)
    check_grad(lambda x: (ops.flatten(x) * ops.flatten(x, start_dim=0)[:12].reshape(3, 4)).sum(), X3[:, :, :2].reshape(3, 2, 2))


def test_max_min_return_values_and_indices_amax_amin_values() -> None:
    v, i = ops.max(Tensor(np.array([0.0, 0.4, 0.6, 0.7, 0.1])))  # MindSpore's documented example: 0.7 0
    assert float(v.asnumpy()) == 0.7 and int(i.asnumpy()) == 0
    for fn, tfn in ((ops.max, torch.max), (ops.min, torch.min)):
        values, indices = fn(Tensor(X3), 1, True)
        want = tfn(torch.tensor(X3), 1, True)
        np.testing.assert_array_equal(values.asnumpy(), want.values.numpy())
        np.testing.assert_array_equal(indices.asnumpy(), want.indices.numpy())
        assert indices.dtype == gs.int32
    np.testing.assert_array_equal(ops.amax(Tensor(X3), (0, 2)).asnumpy(), X3.max((0, 2)))
    np.testing.assert_array_equal(ops.amin(Tensor(X3), -1, True).asnumpy(), X3.min(-1, keepdims=True))
    mask = X3 > 0
    np.testing.assert_array_equal(ops.amax(Tensor(X3), 1, initial=0.5, where=Tensor(mask)).asnumpy(), np.max(X3, 1, initial=0.5, where=mask))
    np.testing.assert_array_equal(ops.amin(Tensor(X3), initial=-0.5).asnumpy(), np.min(X3, initial=-0.5))
    np.testing.assert_array_equal(ops.argmax(Tensor(X3)).asnumpy(), X3.argmax())
    np.testing.assert_array_equal(ops.argmax(Tensor(X3), -1, True).asnumpy(), X3.argmax(-1)[..., None])
    np.testing.assert_array_equal(ops.argmin(Tensor(X3), 1).asnumpy(), X3.argmin(1))
    with pytest.raises(ValueError, match="where needs an initial value"):
        ops.amax(Tensor(X3), where=Tensor(mask))
    check_grad(lambda x: ops.max(x, 0)[0].sum() * ops.amin(x, 1).sum() + ops.min(x, 1, True)[0].sum() + ops.amax(x), X)


TIED = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # ties in every row and in columns 0 and 1


@pytest.mark.parametrize(("name", "ours", "theirs"), [
    ("ops.max axis", lambda x: ops.max(x, 1)[0], lambda x: torch.max(x, 1).values),
    ("ops.min axis keepdims", lambda x: ops.min(x, 0, True)[0], lambda x: torch.min(x, 0, True).values),
    ("Tensor.max axis", lambda x: x.max(0), lambda x: torch.max(x, 0).values),
    ("Tensor.min axis", lambda x: x.min(axis=-1, keepdims=True), lambda x: torch.min(x, -1, True).values),
    ("ops.max None", lambda x: ops.max(x)[0], lambda x: torch.max(x)),
    ("ops.amax axis", lambda x: ops.amax(x, 1), lambda x: torch.amax(x, 1)),
    ("ops.amin axes", lambda x: ops.amin(x, (0, 1)), lambda x: torch.amin(x, (0, 1))),
    ("Tensor.max None", lambda x: x.max(), lambda x: torch.amax(x)),
    ("Tensor.min axes", lambda x: x.min((0,)), lambda x: torch.amin(x, (0,))),
])
def test_tied_extrema_gradients_follow_mindspore(where: str, name: str, ours: Any, theirs: Any) -> None:
    """MindSpore's bprops: ops.max/ops.min over one axis (and Tensor.max/min over one int axis) are ArgMaxWithValue /
    ArgMinWithValue, whose gradient goes to the first extremum alone (as torch.max(x, dim)'s); over all axes or a tuple
    (ops.amax, ops.max with axis None, Tensor.max() or over a tuple) ReduceMax/ReduceMin share it evenly among ties
    (as torch.amax's)."""
    a = torch.tensor(TIED, requires_grad=True)
    out = theirs(a)
    weights = np.arange(1.0, 1.0 + out.numel()).reshape(tuple(out.shape))  # a different cotangent per output
    (out * torch.tensor(weights)).sum().backward()
    np.testing.assert_array_equal(ours(Tensor(TIED)).asnumpy(), out.detach().numpy(), err_msg=name)
    got = gs.grad(lambda x: (ours(x) * Tensor(weights)).sum())(Tensor(TIED))
    np.testing.assert_array_equal(got.asnumpy(), a.grad.numpy(), err_msg=name)


def test_max_over_an_axis_gives_its_first_maximum_the_whole_gradient() -> None:
    """By hand: rows [1, 3, 3] and [2, 2, 0] send each row's cotangent to index 1 and 0, not half to each tie (which
    ops.amax does)."""
    np.testing.assert_array_equal(gs.grad(lambda x: ops.max(x, 1)[0].sum())(Tensor(TIED[:2])).asnumpy(), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(gs.grad(lambda x: ops.amax(x, 1).sum())(Tensor(TIED[:2])).asnumpy(), [[0, 0.5, 0.5], [0.5, 0.5, 0]])
    # columns of [[2, 2, 0], [0, 0, 0]]: minima in row 1, row 1, and the tie of column 2 in row 0 (the first)
    np.testing.assert_array_equal(gs.grad(lambda x: x.min(0).sum())(Tensor(TIED[1:])).asnumpy(), [[0, 0, 1], [1, 1, 0]])


def test_fill_depend_print_shape(capsys: pytest.CaptureFixture[str]) -> None:
    f = ops.fill(gs.float32, (2, 3), 4)
    assert f.dtype == gs.float32 and f.asnumpy().tolist() == [[4.0] * 3] * 2
    a = Tensor(X)
    assert ops.depend(a, a * 2) is a
    assert ops.shape(a) == (3, 5)
    ops.print_("x is", Tensor(np.array([1.5])))
    assert capsys.readouterr().out == "x is\nTensor(shape=[1], dtype=Float64, value= [1.5])\n"


def test_functions_trace_and_differentiate(where: str) -> None:
    """One network of the new functions traced in a Cell, embedded and remote: value and gradient equal PyTorch's."""

    def ms(x: Tensor, y: Tensor) -> Tensor:
        first, rest = ops.split(x, [1, 2], 0)
        p = ops.pad(ops.einsum("ij,kj->ik", rest, y), (1, 0, 0, 1), value=0.5)
        top, _ = ops.topk(p, 2, 0)
        v, _ = ops.max(ops.cat((p, p * 2), 1), 1)
        return (ops.gelu(top).sum() + ops.cumsum(v, 0).sum() + ops.logsumexp(ops.flatten(ops.silu(first)), 1).sum()
                + ops.amin(y, 1).sum() * ops.prod(ops.square(first)))

    def th(x: Any, y: Any) -> Any:
        first, rest = torch.split(x, [1, 2], 0)
        p = tf.pad(torch.einsum("ij,kj->ik", rest, y), (1, 0, 0, 1), value=0.5)
        top = torch.topk(p, 2, 0).values
        v = torch.cat((p, p * 2), 1).max(1).values
        return (tf.gelu(top).sum() + torch.cumsum(v, 0).sum() + torch.logsumexp(torch.flatten(tf.silu(first), 1), 1).sum()
                + y.amin(1).sum() * (first ** 2).prod())

    y = RNG.standard_normal((4, 5))
    ts = [torch.tensor(a, requires_grad=True) for a in (X, y)]
    want = th(*ts)
    want_grads = torch.autograd.grad(want, ts)
    net = Fn(ms)
    np.testing.assert_allclose(net(Tensor(X), Tensor(y)).asnumpy(), want.detach().numpy(), rtol=1e-12)
    grads = ops.GradOperation(get_all=True)(net)(Tensor(X), Tensor(y))
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g.asnumpy(), w.numpy(), rtol=1e-10, atol=1e-12)


def test_depend_keeps_a_print_nothing_else_uses(capsys: pytest.CaptureFixture[str]) -> None:
    """``depend(x * 2, print_(x))`` in a construct: the print runs on every call though only Depend uses it."""
    net = Fn(lambda x: ops.depend(x * 2, ops.print_("x:", x)).sum())
    for value in (1.5, 2.5):
        assert net(Tensor(np.array([value]))).asnumpy() == 2 * value
        assert capsys.readouterr().out == f"x:\nTensor(shape=[1], dtype=Float64, value= [{value}])\n"


def test_depend_passes_its_value_and_its_gradient_only(where: str) -> None:
    """The Depend node's value is its first input; the gradient flows to that input alone (the closed form 2x)."""
    net = Fn(lambda x, y: ops.depend(x * x, (y * 3, {"k": [y.exp()]})).sum())
    x, y = RNG.standard_normal(4), RNG.standard_normal(4)
    np.testing.assert_allclose(net(Tensor(x), Tensor(y)).asnumpy(), (x * x).sum(), rtol=1e-12)
    gx, gy = ops.GradOperation(get_all=True)(net)(Tensor(x), Tensor(y))
    np.testing.assert_allclose(gx.asnumpy(), 2 * x, rtol=1e-12)
    np.testing.assert_array_equal(gy.asnumpy(), np.zeros(4))
