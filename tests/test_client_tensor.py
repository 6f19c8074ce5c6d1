"""Tensor, dtype and ops outside any Cell (eager; some also traced), checked against NumPy and MindSpore's printed forms."""
from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Tensor
from gradserve import dtype as mstype
from gradserve.engine import OPS

A = np.array([[1.5, -2.0, 3.0], [0.5, 4.0, -1.0]], np.float32)
B = np.array([[2.0, 1.0, -3.0], [0.5, 4.0, 2.0]], np.float32)


def test_construction_and_default_dtypes() -> None:
    assert Tensor([1.0, 2.0]).dtype == mstype.float32
    assert Tensor(3).dtype == mstype.int64 and Tensor(3).shape == ()
    assert Tensor(True).dtype == mstype.bool_
    assert Tensor(np.array([1.0])).dtype == mstype.float64
    assert Tensor([1, 2], dtype=mstype.float16).dtype == mstype.float16
    assert Tensor(Tensor([1.0, 2.0]), mstype.float64).asnumpy().dtype == np.float64
    t = Tensor(A)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    copy = t.asnumpy()
    copy[0, 0] = 99.0
    assert t.asnumpy()[0, 0] == 1.5  # asnumpy returns a copy
    with pytest.raises(TypeError, match="Tensor data must be a number, list, tuple, NumPy array or Tensor"):
        Tensor({"a": 1})
    with pytest.raises(TypeError, match="unsupported dtype"):
        Tensor(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="needs input_data"):
        Tensor()


def test_repr_matches_mindspore_and_str_matches_numpy() -> None:
    assert repr(Tensor(np.ones((2, 3), np.float32))) == (
        "Tensor(shape=[2, 3], dtype=Float32, value=\n"
        "[[ 1.00000000e+00,  1.00000000e+00,  1.00000000e+00],\n"
        " [ 1.00000000e+00,  1.00000000e+00,  1.00000000e+00]])"
    )
    assert repr(Tensor([2.5, 10 / 3])) == "Tensor(shape=[2], dtype=Float32, value= [ 2.50000000e+00,  3.33333325e+00])"
    assert repr(Tensor([1, 2, 5], mstype.int32)) == "Tensor(shape=[3], dtype=Int32, value= [1, 2, 5])"
    assert repr(Tensor([[1, 1], [2, 2]], mstype.int32)) == "Tensor(shape=[2, 2], dtype=Int32, value=\n[[1, 1],\n [2, 2]])"
    assert repr(Tensor(0.663754)) == "Tensor(shape=[], dtype=Float32, value= 0.663754)"
    assert str(Tensor(A)) == str(A)


def test_dtype_module_names_and_aliases() -> None:
    assert str(mstype.float32) == "Float32" and repr(mstype.bool_) == "Bool" and str(mstype.uint8) == "UInt8"
    assert mstype.half is mstype.float16 and mstype.single is mstype.float32 and mstype.double is mstype.float64
    assert mstype.byte is mstype.int8 and mstype.short is mstype.int16 and mstype.intc is mstype.int32
    assert mstype.intp is mstype.int64 and mstype.ubyte is mstype.uint8
    assert gs.float32 is mstype.float32 and gs.dtype is mstype
    assert mstype.dtype_to_nptype(mstype.int32) is np.int32
    assert mstype.pytype_to_dtype(float) == mstype.float64 and mstype.pytype_to_dtype(bool) == mstype.bool_
    assert mstype.pytype_to_dtype(int) == mstype.int64
    assert {mstype.float32: 1}[Tensor([1.0]).dtype] == 1


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow])
def test_arithmetic_operators_run_eagerly(op: object) -> None:
    a, b = np.abs(A) + 0.5, B
    for got, want in ((op(Tensor(a), Tensor(b)), op(a, b)), (op(Tensor(a), 2.0), op(a, np.float32(2.0))),
                      (op(3.0, Tensor(a)), op(np.float32(3.0), a))):
        assert isinstance(got, Tensor) and got.dtype == mstype.float32
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-6)


def test_other_operators() -> None:
    a, b = Tensor(A), Tensor(B)
    np.testing.assert_allclose((a @ b.reshape(3, 2)).asnumpy(), A @ B.reshape(3, 2), rtol=1e-6)
    stacked = Tensor(np.stack([A, B]))
    np.testing.assert_allclose((stacked @ Tensor(np.stack([B.T, A.T]))).asnumpy(), np.stack([A @ B.T, B @ A.T]), rtol=1e-6)
    np.testing.assert_array_equal((-a).asnumpy(), -A)
    np.testing.assert_array_equal(abs(a).asnumpy(), np.abs(A))
    for op in (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
        got = op(a, b)
        assert got.dtype == mstype.bool_
        np.testing.assert_array_equal(got.asnumpy(), op(A, B))
    assert isinstance(np.float32(2) * a, Tensor)


def test_implicit_promotion_like_mindspore() -> None:
    ints = Tensor([1, 2])
    assert (ints * 2.5).dtype == mstype.float32 and (ints * 2.5).asnumpy().tolist() == [2.5, 5.0]
    assert (ints + 1).dtype == mstype.int64
    assert (ints + Tensor([0.5, 0.5])).dtype == mstype.float32
    assert (Tensor([1.0], mstype.float16) + Tensor([1.0], mstype.float64)).dtype == mstype.float64
    assert (Tensor([True]) + Tensor([2], mstype.int32)).dtype == mstype.int32


def test_tensor_methods() -> None:
    t = Tensor(A)
    assert t.astype(mstype.int32).dtype == mstype.int32
    assert t.reshape(3, 2).shape == (3, 2) and t.reshape((6,)).shape == (6,)
    np.testing.assert_allclose(t.sum().asnumpy(), A.sum())
    np.testing.assert_allclose(t.sum(axis=1, keepdims=True).asnumpy(), A.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(t.mean(0).asnumpy(), A.mean(axis=0))
    assert float(Tensor([2.5])) == 2.5 and bool(Tensor([1]))


def test_primitives_follow_mindspore_signatures() -> None:
    a, b = Tensor(A), Tensor(B)
    np.testing.assert_allclose(ops.MatMul(transpose_b=True)(a, b).asnumpy(), A @ B.T, rtol=1e-6)
    np.testing.assert_allclose(ops.MatMul(True, False)(a, b).asnumpy(), A.T @ B, rtol=1e-6)
    np.testing.assert_allclose(ops.ReduceSum(keep_dims=True)(a, 1).asnumpy(), A.sum(1, keepdims=True))
    np.testing.assert_allclose(ops.ReduceSum()(a).asnumpy(), A.sum())
    np.testing.assert_allclose(ops.ReduceMean()(a, (0, 1)).asnumpy(), A.mean(), rtol=1e-6)
    assert ops.Reshape()(a, (3, 2)).shape == (3, 2)
    assert ops.Transpose()(a, (1, 0)).shape == (3, 2)
    assert ops.Cast()(a, mstype.int32).dtype == mstype.int32
    assert ops.ExpandDims()(a, 0).shape == (1, 2, 3)
    assert ops.Tile()(a, (2, 1)).shape == (4, 3)
    np.testing.assert_array_equal(ops.Gather()(a, Tensor([1, 0]), 1).asnumpy(), A[:, [1, 0]])
    np.testing.assert_array_equal(ops.Concat(1)((a, b)).asnumpy(), np.concatenate([A, B], 1))
    left, right = ops.Split(axis=0, output_num=2)(a)
    np.testing.assert_array_equal(right.asnumpy(), A[1:])
    np.testing.assert_allclose(ops.Sin()(a).asnumpy(), np.sin(A), rtol=1e-6)
    assert repr(ops.MatMul(transpose_a=True)) == "Prim[MatMul]<transpose_a=True>"


def test_functional_forms() -> None:
    a, b = Tensor(A), Tensor(B)
    np.testing.assert_allclose(ops.matmul(a, b, transpose_b=True).asnumpy(), A @ B.T, rtol=1e-6)
    np.testing.assert_allclose(ops.reduce_sum(a, (1,), keep_dims=True).asnumpy(), A.sum(1, keepdims=True))
    np.testing.assert_allclose(ops.sin(a).asnumpy(), np.sin(A), rtol=1e-6)
    np.testing.assert_allclose(ops.relu(a).asnumpy(), np.maximum(A, 0))
    assert ops.cast(a, mstype.float64).dtype == mstype.float64
    assert ops.reshape(a, (6,)).shape == (6,)
    assert ops.concat((a, b), axis=0).shape == (4, 3)
    np.testing.assert_array_equal(ops.stop_gradient(a).asnumpy(), A)
    assert ops.matmul.__name__ == "matmul" and ops.reduce_sum.__name__ == "reduce_sum"


def test_every_table_op_has_a_primitive_and_a_functional_form() -> None:
    names = set(dir(ops))
    for op, opdef in OPS.items():
        if opdef.public:
            assert op in names and getattr(ops, op).name == op
    assert {op for op, opdef in OPS.items() if not opdef.public} >= {"Const", "GradOperation", "Print", "Jvp"}
    assert {"matmul", "batch_matmul", "gelu", "log1p", "reduce_sum", "stop_gradient", "ones_like"} <= names
    assert ops.GradOperation.__module__ == "gradserve.client.grad"


def test_new_engine_ops_appear_without_client_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    twice = replace(OPS["Neg"], name="TwiceForTest", forward=lambda x: 2 * x, doc="2 x", functional=("twice_for_test",))
    monkeypatch.setitem(OPS, "TwiceForTest", twice)
    np.testing.assert_array_equal(ops.TwiceForTest()(Tensor(A)).asnumpy(), 2 * A)
    np.testing.assert_array_equal(ops.twice_for_test(Tensor(A)).asnumpy(), 2 * A)


def test_primitive_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"ops.ReduceSum: argument 'axis' is not one of its constructor arguments.*pass axis when calling"):
        ops.ReduceSum(axis=1)
    with pytest.raises(TypeError, match=r"ops.MatMul takes 2 constructor arguments"):
        ops.MatMul(True, True, True)
    with pytest.raises(TypeError, match=r"ops.Reshape: missing call argument 'shape'"):
        ops.Reshape()(Tensor(A))
    with pytest.raises(TypeError, match=r"ops.MatMul takes 2 inputs \(a, b\), got 1"):
        ops.MatMul()(Tensor(A))
    with pytest.raises(TypeError, match=r"ops.Sin takes inputs \(x\), got 2 arguments"):
        ops.Sin()(Tensor(A), 3)
    with pytest.raises(TypeError, match=r"Add: input 1 \(y\) must be a Tensor or a Python number, got ndarray"):
        ops.Add()(Tensor(A), B)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchOp'"):
        ops.NoSuchOp  # noqa: B018


@pytest.mark.parametrize("key", [
    0, -1, (slice(None), 1), (Ellipsis, slice(1, 3)), (None, 0, Ellipsis, slice(None, None, -1)),
    (slice(None, None, -2),), (1, slice(2, 0, -1), 3), (slice(5, 1),), (slice(None), [2, 0]),
])
def test_indexing_matches_numpy(key: object) -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got = Tensor(a)[key]
    np.testing.assert_array_equal(got.asnumpy(), a[key])


def test_indexing_errors_and_gradient() -> None:
    t = Tensor(np.arange(6.0).reshape(2, 3))
    with pytest.raises(IndexError, match="index 2 is out of bounds for axis 0 with size 2"):
        t[2]
    with pytest.raises(IndexError, match="too many indices"):
        t[0, 0, 0]
    with pytest.raises(IndexError, match=r"boolean mask of shape \(3,\) does not match the leading axes of shape \(2, 3\)"):
        t[Tensor([True, False, True])]

    def f(x: Tensor) -> Tensor:
        return x[0, 1:] * x[1, ::-1][:2]  # [x01 * x12, x02 * x11]

    g = ops.GradOperation()(f)(t).asnumpy()
    np.testing.assert_array_equal(g, [[0.0, 5.0, 4.0], [0.0, 2.0, 1.0]])


class _Apply(nn.Cell):
    """A Cell whose construct is ``fn``, so the same expression can be checked traced as well as eagerly."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def construct(self, *xs: Tensor) -> Any:
        return self.fn(*xs)


@pytest.mark.parametrize("traced", [False, True])
def test_python_numbers_next_to_a_bool_tensor_do_arithmetic(traced: bool) -> None:
    m = np.array([True, False])
    cases = [(lambda t: t + 1, m + 1), (lambda t: t * 3, m * 3), (lambda t: t - 1, m - 1), (lambda t: 2 - t, 2 - m),
             (lambda t: (t + 1).sum(), (m + 1).sum()), (lambda t: t + 2.5, m + 2.5), (lambda t: t == 1, m == 1)]
    for fn, want in cases:
        got = (_Apply(fn) if traced else fn)(Tensor(m))
        np.testing.assert_array_equal(got.asnumpy(), want)
        # MindSpore 2.0's rule for a bool Tensor and a Python number: int -> int32, float -> float32.
        assert got.dtype == {"i": mstype.int32, "f": mstype.float32, "b": mstype.bool_}[want.dtype.kind]


@pytest.mark.parametrize("traced", [False, True])
def test_multi_output_primitives_return_tuples_of_any_length(traced: bool) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    call = _Apply(lambda x: ops.Split(axis=1, output_num=1)(x)) if traced else ops.Split(axis=1, output_num=1)
    out = call(Tensor(a))
    assert isinstance(out, tuple) and len(out) == 1
    np.testing.assert_array_equal(out[0].asnumpy(), a)
    z, y = a, np.eye(2, 3, dtype=np.float32)
    loss, backprop = ops.SoftmaxCrossEntropyWithLogits()(Tensor(z), Tensor(y))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(loss.asnumpy(), -(y * np.log(p)).sum(1), rtol=1e-6)
    np.testing.assert_allclose(backprop.asnumpy(), p - y, rtol=1e-6, atol=1e-7)
    norm = ops.LayerNorm()(Tensor(a), Tensor(np.ones(3, np.float32)), Tensor(np.zeros(3, np.float32)))
    assert isinstance(norm, tuple) and len(norm) == 3


@pytest.mark.parametrize("traced", [False, True])
def test_reversed_slices_starting_before_the_beginning_are_empty(traced: bool) -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    for fn, want in [(lambda t: t[:, -10::-1], a[:, -10::-1]), (lambda t: t[-7::-1], a[-7::-1]),
                     (lambda t: t[-7::-2, 3::-1], a[-7::-2, 3::-1]), (lambda t: t[1:, -1:-9:-2], a[1:, -1:-9:-2])]:
        got = (_Apply(fn) if traced else fn)(Tensor(a))
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.asnumpy(), want)


@pytest.mark.parametrize("traced", [False, True])
def test_negative_index_arrays_count_from_the_end(traced: bool) -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    for fn, want in [(lambda t: t[[0, -1]], a[[0, -1]]), (lambda t: t[:, [-6, 5, -1]], a[:, [-6, 5, -1]])]:
        np.testing.assert_array_equal((_Apply(fn) if traced else fn)(Tensor(a)).asnumpy(), want)
    for dt in (np.int32, np.int64):
        idx = np.array([-1, 0, -4, 2], dt)
        got = (_Apply(lambda t, i: t[i]) if traced else (lambda t, i: t[i]))(Tensor(a), Tensor(idx))
        np.testing.assert_array_equal(got.asnumpy(), a[idx])
    with pytest.raises(IndexError, match="index -5 is out of bounds for axis 0 with size 4"):
        Tensor(a)[[0, -5]]


def test_gradient_through_a_negative_index_tensor() -> None:
    def f(x: Tensor, i: Tensor) -> Tensor:
        return (x[i] * x[i]).sum()

    x = np.arange(4.0)
    g = ops.GradOperation()(f)(Tensor(x), Tensor(np.array([-1, -1, 1]))).asnumpy()
    np.testing.assert_array_equal(g, [0.0, 2 * x[1], 0.0, 2 * 2 * x[3]])


@pytest.mark.parametrize("traced", [False, True])
def test_integer_true_division_and_power(traced: bool) -> None:
    i = np.array([1, 2, -3], np.int32)
    for fn, want, dt in [
        (lambda t: t / 2, i / 2, mstype.float32),  # MindSpore's ops.div: true division, float32 for integers
        (lambda t: t / t, i / i, mstype.float32),
        (lambda t: 3 / t, 3 / i, mstype.float32),
        (lambda t: t / 2.0, i / 2.0, mstype.float32),
        (lambda t: t ** 2, i ** 2, mstype.int32),  # integer powers stay in the integer dtype
        (lambda t: t ** 3, i ** 3, mstype.int32),
        (lambda t: 2 ** t.astype(mstype.int64).sum(), np.int64(2) ** i.sum(), mstype.int64),
        (lambda t: t ** Tensor(np.array([3, 1, 2], np.int32)), i ** np.array([3, 1, 2]), mstype.int32),
        (lambda t: abs(t) ** 0.5, np.abs(i) ** 0.5, mstype.float32),
    ]:
        got = (_Apply(fn) if traced else fn)(Tensor(i))
        assert got.dtype == dt
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-6)


@pytest.mark.parametrize("traced", [False, True])
def test_floor_division_and_modulo_match_numpy(traced: bool) -> None:
    i = np.array([-7, 7, 5, -5, 6], np.int32)
    j = np.array([2, -2, 3, 3, -4], np.int32)
    f = np.array([-7.5, 7.25, 5.0, -0.5, 6.0], np.float64)
    g = np.array([2.0, -2.0, 3.0, 0.75, -4.0], np.float64)
    for fn, want, dt in [
        (lambda t, u: t // u, np.floor_divide(i, j), mstype.int32),  # MindSpore's FloorDiv / FloorMod: Python's rules
        (lambda t, u: t % u, np.mod(i, j), mstype.int32),
        (lambda t, u: t % 3, np.mod(i, 3), mstype.int32),
        (lambda t, u: 17 // t, np.floor_divide(17, i), mstype.int32),
        (lambda t, u: ops.remainder(t, u), np.mod(i, j), mstype.int32),
        (lambda t, u: ops.floor_divide(t, u), np.floor_divide(i, j), mstype.int32),
    ]:
        got = (_Apply(fn) if traced else fn)(Tensor(i), Tensor(j))
        assert got.dtype == dt
        np.testing.assert_array_equal(got.asnumpy(), want)
    for fn, want in [(lambda t, u: t // u, np.floor_divide(f, g)), (lambda t, u: t % u, np.mod(f, g)),
                     (lambda t, u: 7.0 % u, np.mod(7.0, g)), (lambda t, u: ops.floor_mod(t, u), np.mod(f, g))]:
        got = (_Apply(fn) if traced else fn)(Tensor(f), Tensor(g))
        assert got.dtype == mstype.float64
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-12)


def test_modulo_gradients_match_torch() -> None:
    f = np.array([-7.5, 7.25, 5.2, -0.5, 6.1])
    g = np.array([2.0, -2.0, 3.0, 0.75, -4.0])
    gx, gy = ops.GradOperation(get_all=True)(lambda a, b: ((a % b) * (a // b + 3.0)).sum())(Tensor(f), Tensor(g))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (f, g))
    (torch.remainder(ta, tb) * (torch.div(ta, tb, rounding_mode="floor") + 3.0)).sum().backward()
    np.testing.assert_allclose(gx.asnumpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gy.asnumpy(), tb.grad.numpy(), rtol=1e-12)


def test_tensor_tutorial_attributes_and_methods() -> None:
    x = Tensor(np.array([[1, 2], [3, 4]]), mstype.int32)  # MindSpore's Tensor tutorial prints these
    assert (x.itemsize, x.nbytes, x.ndim, x.size, x.strides) == (4, 16, 2, 4, (8, 4))
    assert Tensor(np.zeros((2, 3, 5))).strides == np.zeros((2, 3, 5)).strides
    a, b = Tensor(A), Tensor(B)
    for got, want in [(a.mul(b), A * B), (a.add(b), A + B), (a.sub(b), A - B), (a.div(b), A / B), (a.mul(2.0), A * 2)]:
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-6)
    n = np.ones(5)
    t = Tensor.from_numpy(n)
    assert t.dtype == mstype.float64 and t.asnumpy().tolist() == [1.0] * 5
    np.add(n, 1, out=n)  # the array stays writable; the Tensor holds its own copy (gradserve's Tensors are values)
    assert t.asnumpy().tolist() == [1.0] * 5


def test_tensor_from_an_initializer() -> None:
    from gradserve.common.initializer import Normal, One

    ones = Tensor(shape=(2, 2), dtype=gs.float32, init=One())  # the Tensor tutorial's form
    assert ones.dtype == mstype.float32 and ones.init_data() is ones
    np.testing.assert_array_equal(ones.asnumpy(), np.ones((2, 2), np.float32))
    gs.set_seed(5)
    drawn = Tensor(shape=[3, 4], dtype=gs.float16, init=Normal(0.5)).asnumpy()
    gs.set_seed(5)
    from gradserve.common.initializer import initializer

    np.testing.assert_array_equal(drawn, initializer(Normal(0.5), (3, 4), gs.float16).asnumpy())  # same draws
    assert drawn.dtype == np.float16 and 0.2 < drawn.astype(np.float64).std() < 0.9
    assert Tensor([1.0, 2.0], shape=(2,)).shape == (2,)
    with pytest.raises(ValueError, match="init needs both shape and dtype"):
        Tensor(init=One(), shape=(2,))
    with pytest.raises(ValueError, match="give input_data or init, not both"):
        Tensor([1.0], shape=(1,), dtype=gs.float32, init=One())
    with pytest.raises(ValueError, match=r"input_data has shape \(2,\), but shape=\(3,\)"):
        Tensor([1.0, 2.0], shape=(3,))
    with pytest.raises(TypeError, match="init must be an Initializer"):
        Tensor(shape=(2,), dtype=gs.float32, init="ones")


@pytest.mark.parametrize("traced", [False, True])
def test_sum_of_a_bool_tensor_counts_in_int32(traced: bool) -> None:
    """MindSpore's Tensor.sum casts a bool Tensor to int32 first, so the usual accuracy count works."""
    pred = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    label = np.array([1, 0, 0, 0], np.int32)
    count = (_Apply(lambda p, y: (p.argmax(1) == y).sum()) if traced else lambda p, y: (p.argmax(1) == y).sum())(Tensor(pred), Tensor(label))
    assert count.dtype == mstype.int32 and count.asnumpy().item() == int((pred.argmax(1) == label).sum()) == 3
    per_column = Tensor(np.array([[True, False], [True, True]])).sum(axis=0, keepdims=True)
    assert per_column.dtype == mstype.int32 and per_column.asnumpy().tolist() == [[2, 1]]
    assert Tensor(np.array([True, True])).sum(dtype=mstype.float32).asnumpy().item() == 2.0


def test_dtype_shorthands() -> None:
    x = Tensor(np.array([[1.7, -1.7], [2.0, 0.5]]), mstype.float64)  # MindSpore's documented examples use ones
    assert x.half().dtype == mstype.float16 and x.float().dtype == mstype.float32 and x.int().dtype == mstype.int32
    assert x.int().asnumpy().tolist() == [[1, -1], [2, 0]]
    assert Tensor(np.ones([2, 2]), mstype.int32).half().asnumpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_clip_clamp_and_masked_fill_keep_the_input_dtype() -> None:
    """MindSpore casts clip's bounds and masked_fill's number to the input's dtype (Tensor.clip's ``dtype`` casts the
    result); a masked_fill value Tensor of another dtype is a TypeError."""
    x = np.array([[1, 5], [3, -2]], np.int32)
    want = np.clip(x, 0, 3)
    for got in (Tensor(x).clip(0.5, 3.5), ops.clamp(Tensor(x), 0.5, 3.5)):
        assert got.dtype == mstype.int32 and got.asnumpy().tolist() == want.tolist()
    as_float = Tensor(x).clip(0.5, 3.5, mstype.float32)
    assert as_float.dtype == mstype.float32 and as_float.asnumpy().tolist() == want.astype(np.float32).tolist()
    assert Tensor(A).clip(-1, 2, mstype.float16).dtype == mstype.float16
    mask = np.array([[True, False], [False, True]])
    for filled in (Tensor(x).masked_fill(Tensor(mask), 2.7), ops.masked_fill(Tensor(x), Tensor(mask), 2.7)):
        assert filled.dtype == mstype.int32 and filled.asnumpy().tolist() == np.where(mask, 2, x).tolist()
    with pytest.raises(TypeError, match="value has dtype Float32, but the Tensor has Int32"):
        Tensor(x).masked_fill(Tensor(mask), Tensor(2.5, mstype.float32))


def test_tile_pads_reps_and_sum_casts_after_initial() -> None:
    """NumPy's tile pads reps with leading 1s; MindSpore's Tensor.sum adds ``initial`` then casts to the summed dtype."""
    x = np.array([[1, 2], [3, 4]], np.int32)
    assert Tensor(x).tile(2).asnumpy().tolist() == np.tile(x, 2).tolist()
    assert Tensor(x).tile((2, 1, 1)).asnumpy().tolist() == np.tile(x, (2, 1, 1)).tolist()
    s = Tensor(x).sum(initial=0.5)
    assert s.dtype == mstype.int32 and s.asnumpy().item() == int(x.sum() + 0.5) == 10
    b = Tensor(np.array([True, False, True])).sum(initial=0.5)
    assert b.dtype == mstype.int32 and b.asnumpy().item() == 2
    f = Tensor(np.array([1.5, 2.25], np.float32)).sum(dtype=mstype.int32)
    assert f.dtype == mstype.int32 and f.asnumpy().item() == 3


def test_var_std_of_ints_and_empty_all_any() -> None:
    """Integer var/std are taken in float32; all/any over nothing are NumPy's identities (True, False)."""
    x = np.array([[1, 5], [3, -2]], np.int32)
    v, s = Tensor(x).var(), Tensor(x).std(axis=0, ddof=1)
    assert v.dtype == mstype.float32 and s.dtype == mstype.float32
    np.testing.assert_allclose(v.asnumpy(), x.var(), rtol=1e-6)
    np.testing.assert_allclose(s.asnumpy(), x.std(axis=0, ddof=1), rtol=1e-6)
    empty = Tensor(np.zeros((0,), np.float32))
    assert empty.all().asnumpy().item() is True and empty.any().asnumpy().item() is False
    m = np.array([[0.0, 1.0], [2.0, 3.0], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(Tensor(m).all(axis=1).asnumpy(), m.all(axis=1))
    np.testing.assert_array_equal(Tensor(m).any(axis=0, keep_dims=True).asnumpy(), m.any(axis=0, keepdims=True))
    np.testing.assert_array_equal(Tensor(np.zeros((2, 0))).all(axis=1).asnumpy(), [True, True])
