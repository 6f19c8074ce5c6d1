"""The MindSpore surface autodiff users touch: Tensor methods, functional ops with positional arguments, item
assignment and masks, checked eagerly against NumPy and traced (embedded and remote) against PyTorch's gradients."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch
from clientkit import Fn, check_like_torch

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Tensor
from gradserve import dtype as mstype

RNG = np.random.default_rng(11)
X = RNG.standard_normal((2, 3))
Y = RNG.standard_normal(3)


# ---- functional ops with MindSpore's positional arguments ----

def test_functional_forms_take_positional_attributes_in_mindspore_order() -> None:
    a, x = Tensor(X), Tensor(Y)
    np.testing.assert_array_equal(ops.concat((a, a), 0).asnumpy(), np.concatenate([X, X], 0))
    e = np.exp(X - X.max(-1, keepdims=True))
    np.testing.assert_allclose(ops.softmax(a, -1).asnumpy(), e / e.sum(-1, keepdims=True), rtol=1e-12)
    assert ops.squeeze(Tensor(X[None]), 0).shape == (2, 3)
    pieces = ops.split(Tensor(np.arange(12.0).reshape(2, 6)), 2, 1)  # MindSpore 2.x: (tensor, split_size_or_sections, axis)
    assert [p.asnumpy().tolist() for p in pieces] == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5], [10, 11]]]
    np.testing.assert_array_equal(ops.broadcast_to(x, (4, 3)).asnumpy(), np.broadcast_to(Y, (4, 3)))
    np.testing.assert_array_equal(ops.gather(a, Tensor([2, 0]), 1).asnumpy(), X[:, [2, 0]])
    np.testing.assert_allclose(ops.reduce_sum(a, 1, True).asnumpy(), X.sum(1, keepdims=True))


def test_functional_argument_errors_name_the_signature() -> None:
    with pytest.raises(TypeError, match=r"ops.squeeze takes inputs \(x\) then axis, got 3 arguments"):
        ops.squeeze(Tensor(X), 0, 1)
    with pytest.raises(TypeError, match=r"ops.softmax: argument 'dim' is unknown; its arguments after the inputs: \['axis'\]"):
        ops.softmax(Tensor(X), dim=0)
    with pytest.raises(TypeError, match=r"ops.concat: argument 'axis' is given twice"):
        ops.concat((Tensor(X), Tensor(X)), 0, axis=1)
    with pytest.raises(TypeError, match=r"ops.broadcast_to: missing argument 'shape'"):
        ops.broadcast_to(Tensor(Y))


def test_composite_functions_eagerly() -> None:
    a = Tensor(X)
    assert ops.ones((2, 3)).dtype == mstype.float32 and ops.zeros(4, mstype.int32).dtype == mstype.int32
    np.testing.assert_array_equal(ops.ones(3, mstype.float64).asnumpy(), np.ones(3))
    np.testing.assert_array_equal(ops.zeros((2, 2)).asnumpy(), np.zeros((2, 2)))
    np.testing.assert_array_equal(ops.stack((a, a * 2), 1).asnumpy(), np.stack([X, X * 2], 1))
    np.testing.assert_allclose(ops.addn([a, a, a * 3]).asnumpy(), 5 * X, rtol=1e-15)
    np.testing.assert_allclose(ops.sum(a, 1, True).asnumpy(), X.sum(1, keepdims=True))
    np.testing.assert_allclose(ops.sum(a).asnumpy(), X.sum())
    np.testing.assert_allclose(ops.mean(a, (0, 1)).asnumpy(), X.mean())
    np.testing.assert_allclose(ops.mean(a, 0, keep_dims=True).asnumpy(), X.mean(0, keepdims=True))
    assert ops.Shape()(a) == (2, 3)
    with pytest.raises(gs.engine.ShapeError, match=r"AddN .*inputs must share one shape, got \(2, 3\), \(3,\)"):
        ops.addn([a, Tensor(Y)])


def test_functional_ops_trace_and_differentiate(where: str) -> None:
    def ms(x: Tensor, y: Tensor) -> Tensor:
        a = ops.concat((x, x * 2), 0)
        b = ops.softmax(a, -1)
        c = a * ops.broadcast_to(y, (4, 3))
        first, _, last = ops.split(c, 1, 1)
        d = ops.squeeze(first, 1) * ops.squeeze(last, -1)
        s = ops.stack((d, d * d), 1)
        n = ops.Shape()(s)[0]
        return ops.sum(s, 0).sum() + ops.mean(b, 0, True).sum() * n + ops.addn([b, b * b, ops.ones((4, 3), mstype.float64)]).sum()

    def th(x: Any, y: Any) -> Any:
        a = torch.cat((x, x * 2), 0)
        b = torch.softmax(a, -1)
        c = a * y.expand(4, 3)
        d = c[:, 0] * c[:, 2]
        s = torch.stack((d, d * d), 1)
        return s.sum(0).sum() + b.mean(0, keepdim=True).sum() * 4 + (b + b * b + 1).sum()

    check_like_torch(ms, th, X, Y, rtol=1e-10)


# ---- Tensor methods ----

UNARY_METHODS = ["neg", "abs", "exp", "sin", "cos", "tanh", "sigmoid", "square"]


@pytest.mark.parametrize("name", UNARY_METHODS + ["log", "sqrt"])
def test_unary_methods_eagerly(name: str) -> None:
    arr = np.abs(X) + 0.5 if name in ("log", "sqrt") else X
    want = getattr(torch, name)(torch.tensor(arr)).numpy()
    np.testing.assert_allclose(getattr(Tensor(arr), name)().asnumpy(), want, rtol=1e-12)


def test_shape_methods_and_reductions_eagerly() -> None:
    t = Tensor(X)
    three = np.arange(24.0).reshape(2, 3, 4)
    assert t.T.shape == (3, 2) and t.transpose().shape == (3, 2) and t.transpose(1, 0).shape == (3, 2)
    assert Tensor(three).transpose((2, 0, 1)).shape == (4, 2, 3)
    assert t.view(3, 2).shape == (3, 2) and t.view((6,)).shape == (6,) and t.reshape(-1, 2).shape == (3, 2)
    np.testing.assert_array_equal(Tensor(three).flatten().asnumpy(), three.ravel())
    assert Tensor(three).flatten(start_dim=1).shape == (2, 12) and Tensor(three).flatten(start_dim=0, end_dim=1).shape == (6, 4)
    assert Tensor(np.float64(2.0)).flatten().shape == (1,)
    assert Tensor(X[None, :, None]).squeeze().shape == (2, 3) and Tensor(X[None]).squeeze(0).shape == (2, 3)
    assert t.expand_dims(1).shape == (2, 1, 3)
    np.testing.assert_allclose(t.sum(1, keepdims=True).asnumpy(), X.sum(1, keepdims=True))
    np.testing.assert_allclose(t.sum(initial=2.0).asnumpy(), X.sum() + 2.0)
    assert t.sum(dtype=mstype.float32).dtype == mstype.float32
    np.testing.assert_allclose(t.mean(0).asnumpy(), X.mean(0))
    np.testing.assert_allclose(t.max(1).asnumpy(), X.max(1))
    np.testing.assert_allclose(t.min(0, keepdims=True).asnumpy(), X.min(0, keepdims=True))
    np.testing.assert_allclose(t.max(initial=10.0).asnumpy(), 10.0)
    values, indices = t.min(1, return_indices=True)
    np.testing.assert_allclose(values.asnumpy(), X.min(1))
    np.testing.assert_array_equal(indices.asnumpy(), X.argmin(1))
    tied = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [2.0, 3.0, 0.0]])  # the first of tied extrema, as NumPy
    ties = Tensor(tied)
    for axis in (0, 1):
        np.testing.assert_array_equal(ties.argmax(axis).asnumpy(), tied.argmax(axis))
        np.testing.assert_array_equal(ties.argmin(axis).asnumpy(), tied.argmin(axis))
    assert ties.argmax().asnumpy() == 1 and ties.argmax().dtype == mstype.int64
    assert ties.argmax(keepdims=True).shape == (1, 1)
    assert Tensor([4.5]).item() == 4.5 and t.item(4) == X.flat[4]
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and t.dtype == mstype.float64
    assert t.astype(mstype.int32).dtype == mstype.int32
    np.testing.assert_array_equal(t.fill(2).asnumpy(), np.full((2, 3), 2.0))
    assert Tensor([1, 2]).fill(7.9).asnumpy().tolist() == [7, 7]
    c = t.copy()
    c[0] = 0.0
    np.testing.assert_array_equal(t.asnumpy(), X)
    with pytest.raises(ValueError, match="needs a Tensor with one element"):
        t.item()


def test_comparison_and_in_place_operators_eagerly() -> None:
    t = Tensor(X)
    for op, want in ((t > 0, X > 0), (t <= 0.1, X <= 0.1), (t == t, X == X), (t != 0.2, X != 0.2)):
        np.testing.assert_array_equal(op.asnumpy(), want)
    u = Tensor(X)
    u += 1
    u *= 2
    u -= Tensor(Y)
    u /= 4
    u **= 2
    np.testing.assert_allclose(u.asnumpy(), (((X + 1) * 2 - Y) / 4) ** 2, rtol=1e-14)
    np.testing.assert_array_equal(Tensor(X).asnumpy(), X)


def test_tensor_methods_trace_and_differentiate(where: str) -> None:
    def ms(x: Tensor, y: Tensor) -> Tensor:
        u = x.neg().abs() + x.exp().log() + x.sin().cos() + x.tanh().sigmoid() + (x.square() + 1).sqrt()
        v = x.T.transpose().view(3, 2).reshape(6).expand_dims(0).squeeze(0).flatten()
        w = (x * y).max(1) + (x - y).min(axis=0, keepdims=True).sum() + x.max()
        z = x.fill(3.0) * x + x.copy()
        z += y
        z *= 2
        k = (x > 0).astype(x.dtype) * x
        return u.sum() + (v * v).mean() + w.sum() + z.sum(axis=1).mean() + k.sum() + x.argmax(1).astype(x.dtype).sum()

    def th(x: Any, y: Any) -> Any:
        u = (-x).abs() + x.exp().log() + x.sin().cos() + x.tanh().sigmoid() + (x * x + 1).sqrt()
        v = x.reshape(6)
        w = (x * y).amax(1) + (x - y).amin(0, keepdim=True).sum() + x.amax()
        z = ((3 * torch.ones_like(x)) * x + x + y) * 2
        k = (x > 0).to(x.dtype) * x
        return u.sum() + (v * v).mean() + w.sum() + z.sum(1).mean() + k.sum() + x.argmax(1).to(x.dtype).sum()

    check_like_torch(ms, th, X, Y, rtol=1e-10)


# ---- indexing: boolean masks, item assignment ----

KEYS = [1, (slice(None), 2), (slice(0, 2, 1), slice(1, None)), (Ellipsis, -1), (slice(None, None, -1), 0), (0, slice(None, None, 2)),
        (slice(None), [2, 0]), ([1],), (slice(None), np.array([[-1], [0]]))]


@pytest.mark.parametrize("key", KEYS)
def test_item_assignment_matches_numpy(key: Any) -> None:
    for value in (5.5, RNG.standard_normal(np.empty((2, 3))[key].shape)):
        t = Tensor(X)
        t[key] = Tensor(value) if isinstance(value, np.ndarray) else value
        want = X.copy()
        want[key] = value
        np.testing.assert_array_equal(t.asnumpy(), want)
    t = Tensor(X)
    t[key] = Tensor(np.array(7, np.int32))  # cast to the tensor's dtype, broadcast to the slice
    assert t.dtype == mstype.float64 and np.all(t.asnumpy()[key] == 7)


def test_item_assignment_to_a_parameter_outside_a_construct_is_seen_by_the_next_call() -> None:
    leaf = Leaf()
    leaf.w[1] = 10.0
    np.testing.assert_array_equal(leaf.w.asnumpy(), [2.0, 10.0])
    np.testing.assert_allclose(leaf(Tensor(np.array([1.0, 1.0]))).asnumpy(), [4.5, 12.5])


def test_boolean_masks_eagerly() -> None:
    m = X > 0
    np.testing.assert_array_equal(Tensor(X)[Tensor(m)].asnumpy(), X[m])
    np.testing.assert_array_equal(Tensor(X)[m[:, 0]].asnumpy(), X[m[:, 0]])
    t = Tensor(X)
    t[Tensor(m)] = -1.0
    np.testing.assert_array_equal(t.asnumpy(), np.where(m, -1.0, X))
    t = Tensor(X)
    t[Tensor(m)] = Tensor(Y)
    np.testing.assert_array_equal(t.asnumpy(), np.where(m, Y, X))


def test_item_assignment_and_masks_trace_and_differentiate(where: str) -> None:
    mask = np.array([True, False])

    def ms(x: Tensor, y: Tensor) -> Tensor:
        z = x * 1
        z[1, 1:] = y[:2] * y[1:]
        z[:, 0] = 0.5
        z[z > 0.3] = z * 3
        z[..., -1] = x.sum(1)
        z[:, Tensor(np.array([2, 0]))] = y[1:] * x[:, 1:]
        picked = z[Tensor(mask)]
        return (z * z).sum() + (picked * x[0]).sum()

    def th(x: Any, y: Any) -> Any:
        z = x * 1
        z[1, 1:] = y[:2] * y[1:]
        z[:, 0] = 0.5
        z = torch.where(z > 0.3, z * 3, z)
        z[..., -1] = x.sum(1)
        z[:, [2, 0]] = y[1:] * x[:, 1:]
        picked = z[torch.tensor(mask)]
        return (z * z).sum() + (picked * x[0]).sum()

    check_like_torch(ms, th, X, Y, rtol=1e-10)


def test_indexing_errors() -> None:
    def traced_mask(x: Tensor) -> Tensor:
        return x[x > 0]

    np.testing.assert_array_equal(Fn(traced_mask)(Tensor(X)).asnumpy(), X[X > 0])  # the mask is read, guarded
    with pytest.raises(IndexError, match=r"item assignment with repeated indices is not supported"):
        Tensor(X)[Tensor([0, 0])] = 1.0
    with pytest.raises(TypeError, match=r"item assignment takes a Tensor or a Python number, got str"):
        Tensor(X)[0] = "a"

    class SetsParameter(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.w = gs.Parameter(Tensor(Y), name="w")

        def construct(self, x: Tensor) -> Tensor:
            self.w[0] = 1.0
            return x

    with pytest.raises(TypeError, match=r"item assignment to Parameter 'w' inside a construct is not supported"):
        SetsParameter()(Tensor(X))


# ---- Cell: modes, traversal, parameter registration ----

class Leaf(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.w = gs.Parameter(Tensor(np.array([2.0, 3.0])), name="w")
        self.frozen = gs.Parameter(Tensor(np.array([1.5])), name="frozen", requires_grad=False)

    def construct(self, x: Tensor) -> Tensor:
        if self.training:
            return x * self.w * self.frozen
        return x + self.w + self.frozen


class Top(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.scale = gs.Parameter(Tensor(np.array([0.5])))
        self.left = Leaf()
        self.right = Leaf()

    def construct(self, x: Tensor) -> Tensor:
        return (self.left(x) * self.right(x) * self.scale).sum()


def test_set_train_and_set_grad_set_mindspore_flags_and_return_the_cell() -> None:
    top = Top()
    assert top.training is False and top.left.training is False and top.requires_grad is False
    assert top.set_train() is top and all(c.training for _, c in top.cells_and_names())
    assert top.set_train(False) is top and not any(c.training for _, c in top.cells_and_names())
    assert top.left.set_train(True) is top.left and top.left.training and not top.right.training
    assert top.set_grad() is top and top.requires_grad is True and top.set_grad(False).requires_grad is False
    assert top.left.get_flags()["training"] is True and top.get_flags()["training"] is False and Leaf().add_flags(fp=1).fp == 1


def test_training_selects_the_branch_traced(where: str) -> None:
    x = Tensor(np.array([1.0, -2.0]))
    train, infer = Leaf().set_train(), Leaf()
    np.testing.assert_allclose(train(x).asnumpy(), [3.0, -9.0])
    np.testing.assert_allclose(infer(x).asnumpy(), [4.5, 2.5])
    np.testing.assert_allclose(ops.GradOperation()(train)(x).asnumpy(), [3.0, 4.5])


def test_traversal_in_mindspore_order_and_types() -> None:
    top = Top()
    assert [n for n, _ in top.cells_and_names()] == ["", "left", "right"]
    assert [n for n, _ in top.cells_and_names(name_prefix="net")] == ["net", "net.left", "net.right"]
    assert [n for n, _ in top.cells_and_names(cells={top.right})] == ["", "left"]
    names = top.name_cells()
    assert list(names) == ["left", "right"] and names["left"] is top.left and list(top.cells()) == [top.left, top.right]
    assert [n for n, _ in top.parameters_and_names()] == ["scale", "left.w", "left.frozen", "right.w", "right.frozen"]
    assert [n for n, _ in top.parameters_and_names(name_prefix="m", expand=False)] == ["m.scale"]
    assert [p.name for p in top.trainable_params()] == ["scale", "left.w", "right.w"]
    assert [p.name for p in top.untrainable_params()] == ["left.frozen", "right.frozen"]
    assert [p.name for p in top.trainable_params(recurse=False)] == ["scale"]
    assert isinstance(top.trainable_params(), list) and isinstance(top.get_parameters(), Iterator)
    assert list(top.parameters_dict()) == ["scale", "left.w", "left.frozen", "right.w", "right.frozen"]


def test_insert_param_and_child_to_cell() -> None:
    cell = Leaf()
    p = gs.Parameter(Tensor(np.array([4.0])))
    cell.insert_param_to_cell("bias", p)
    assert p.name == "bias" and cell.bias is p and [q.name for q in cell.get_parameters()] == ["w", "frozen", "bias"]
    cell.insert_param_to_cell("a.b", gs.Parameter(Tensor(np.array([1.0])), name="dotted"), check_name_contain_dot=False)
    assert "dotted" in [q.name for q in cell.get_parameters()]
    cell.insert_child_to_cell("sub", Leaf())
    assert list(cell.name_cells()) == ["sub"]
    with pytest.raises(KeyError, match=r"param_name 'a.c' must not contain '.'"):
        cell.insert_param_to_cell("a.c", p)
    with pytest.raises(KeyError, match=r"already has an attribute 'sub'"):
        cell.insert_param_to_cell("sub", p)
    with pytest.raises(TypeError, match=r"param must be a Parameter or None, got Tensor"):
        cell.insert_param_to_cell("t", Tensor(Y))
    with pytest.raises(TypeError, match=r"child_cell must be a Cell or None, got int"):
        cell.insert_child_to_cell("c", 3)


class Frozen(nn.Cell):
    """MindSpore's own requires_grad test network (test_common_grad.py), with unique names."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = gs.Parameter(Tensor(np.array([1.0], np.float32)), name="p1")
        self.p2 = gs.Parameter(Tensor(np.array([1.0], np.float32)), name="p2")
        self.p3 = gs.Parameter(Tensor(np.array([1.0], np.float32)), name="p3")
        self.p1.requires_grad = False
        self.p2.requires_grad = False

    def construct(self, x: Tensor) -> Tensor:
        return self.p1 * x * self.p2 + self.p3


def test_requires_grad_false_parameters_get_zero_gradients(where: str) -> None:
    net, x = Frozen(), Tensor(np.array([1.0], np.float32))
    inputs, weights = ops.GradOperation(get_all=True, get_by_list=True)(net, [net.p1, net.p2, net.p3])(x)
    assert [w.asnumpy().tolist() for w in weights] == [[0.0], [0.0], [1.0]]
    assert inputs[0].asnumpy().tolist() == [1.0]
    (only,) = ops.GradOperation(get_all=True, get_by_list=True)(net, [net.p1])(x)[1]
    assert only.asnumpy().tolist() == [0.0]
    net.p1.requires_grad = True  # a changed flag retraces
    assert ops.GradOperation(get_by_list=True)(net, [net.p1])(x)[0].asnumpy().tolist() == [1.0]
    np.testing.assert_allclose(net(Tensor(np.array([3.0], np.float32))).asnumpy(), [4.0])


# ---- ops.Print ----

class Printing(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.print = ops.Print()

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        self.print("x and y:", x, y)
        return x * y


PRINTED = "x and y:\nTensor(shape=[2], dtype=Float32, value= [1., 2.])\nTensor(shape=[2, 1], dtype=Int32, value=\n[[3],\n [4]])\n"


def test_print_eagerly_prints_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    ops.Print()("x and y:", Tensor([1.0, 2.0]), Tensor(np.array([[3], [4]], np.int32)))
    ops.Print()("no tensors", "here")
    assert capsys.readouterr().out == PRINTED + "no tensors\nhere\n"


def test_print_in_a_construct_prints_each_time_the_graph_runs(capsys: pytest.CaptureFixture[str]) -> None:
    net, y = Printing(), Tensor(np.array([[3], [4]], np.int32))
    net(Tensor([1.0, 2.0]), y)
    net(Tensor([1.0, 2.0]), y)
    ops.GradOperation()(net)(Tensor([1.0, 2.0]), y)
    assert capsys.readouterr().out == PRINTED * 3


SERVED_PRINT = """
import numpy as np
import gradserve as gs
from gradserve import Tensor
from gradserve.server.app import running
from gradserve.server.config import ServerConfig
from test_client_surface import Printing

with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
    gs.set_context(target=f"127.0.0.1:{server.port}")
    out = Printing()(Tensor([1.0, 2.0]), Tensor(np.array([[3], [4]], np.int32)))
    print("result", out.asnumpy().ravel().tolist(), flush=True)
"""


def test_print_in_a_remote_network_prints_in_the_server_output() -> None:
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", SERVED_PRINT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent, check=True)
    assert PRINTED in done.stdout and "result [3.0, 6.0, 4.0, 8.0]" in done.stdout


def test_print_errors() -> None:
    with pytest.raises(TypeError, match=r"ops.Print prints Tensors, numbers and strings; input 1 is a dict"):
        ops.Print()("a", {})
    with pytest.raises(TypeError, match=r"ops.Print inside a construct needs at least one Tensor"):
        Fn(lambda x: ops.Print()("only text") or x)(Tensor(X))


def test_a_parameter_tuple_attribute_registers_its_parameters(where: str) -> None:
    class Tupled(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.ws = gs.ParameterTuple([gs.Parameter(Tensor(np.array([2.0]))), gs.Parameter(Tensor(np.array([3.0])), name="b"),
                                         gs.Parameter(Tensor(np.array([4.0])))])

        def construct(self, x: Tensor) -> Tensor:
            return x * self.ws[0] * self.ws[2] + self.ws[1]

    net = Tupled()
    assert [p.name for p in net.trainable_params()] == ["Parameter$1", "b", "Parameter$2"]
    grads = ops.GradOperation(get_by_list=True)(net, gs.ParameterTuple(net.trainable_params()))(Tensor(np.array([5.0])))
    assert [g.asnumpy().tolist() for g in grads] == [[20.0], [1.0], [10.0]]
    with pytest.raises(ValueError, match=r"two Parameters named 'b'"):
        net.more = gs.ParameterTuple([gs.Parameter(Tensor(Y), name="b"), gs.Parameter(Tensor(Y), name="b")])


def test_primitives_take_mindspore_call_time_arguments_from_the_op_table() -> None:
    """TopK's k, CumSum's axis and Reshape's shape come after the tensors, as MindSpore's primitives take them."""
    x = np.array([[3.0, 1.0, 4.0, 1.5], [9.0, 2.0, 6.0, 5.0]])
    values, indices = ops.TopK()(Tensor(x), 2)
    np.testing.assert_array_equal(values.asnumpy(), [[4.0, 3.0], [9.0, 6.0]])
    np.testing.assert_array_equal(indices.asnumpy(), [[2, 0], [0, 2]])
    np.testing.assert_array_equal(ops.CumSum()(Tensor(x), 1).asnumpy(), np.cumsum(x, axis=1))
    np.testing.assert_array_equal(ops.Reshape()(Tensor(x), (4, 2)).asnumpy(), x.reshape(4, 2))
    for internal in ("Const", "Grad", "Jvp", "Vjp", "Jacobian", "jacobian"):  # not offered as primitives
        assert not hasattr(ops, internal), internal


def test_mindspore_submodule_import_paths() -> None:
    """Model-zoo scripts import from MindSpore's submodules; each path gives the same objects as the top level."""
    import gradserve.common.dtype as common_dtype
    from gradserve.common import Parameter, ParameterTuple, set_seed
    from gradserve.common.parameter import Parameter as P2
    from gradserve.common.tensor import Tensor as T2
    from gradserve.ops import composite as C
    from gradserve.ops import functional as F
    from gradserve.ops import operations as P

    assert common_dtype.float32 is mstype.float32 and common_dtype.int8 is mstype.int8
    assert T2 is Tensor and P2 is Parameter is gs.Parameter and ParameterTuple is gs.ParameterTuple and set_seed is gs.set_seed
    assert C.GradOperation is ops.GradOperation and F.depend is ops.depend and F.cast is ops.cast
    x = Tensor(X)
    np.testing.assert_allclose(P.ReduceSum(keep_dims=True)(x, 1).asnumpy(), X.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(P.MatMul(transpose_b=True)(x, x).asnumpy(), X @ X.T, rtol=1e-12)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchOp'"):
        P.NoSuchOp  # noqa: B018
    assert "MatMul" in dir(P)


# ---- Tensor methods and functions MindSpore 2.x scripts use, traced (embedded and remote) against PyTorch ----

@pytest.mark.parametrize("ms_fn, torch_fn", [
    (lambda x: x.std(), lambda x: x.std(unbiased=False)),
    (lambda x: x.var(axis=1, ddof=1, keepdims=True).sum(), lambda x: x.var(dim=1, unbiased=True, keepdim=True).sum()),
    (lambda x: x.std(axis=0).sum(), lambda x: x.std(dim=0, unbiased=False).sum()),
    (lambda x: x.clip(-0.5, 0.7).sum(), lambda x: x.clamp(-0.5, 0.7).sum()),
    (lambda x: ops.clamp(x, None, 0.2).pow(2).sum(), lambda x: x.clamp(max=0.2).pow(2).sum()),
    (lambda x: x.cumsum(1).square().sum(), lambda x: x.cumsum(1).square().sum()),
    (lambda x: x.cumsum().square().sum(), lambda x: x.flatten().cumsum(0).square().sum()),
    (lambda x: x.prod(axis=1).sum(), lambda x: x.prod(dim=1).sum()),
    (lambda x: (x.tile((2, 1)).sum(0) * x.broadcast_to((2, 2, 3)).sum(0)).sum(),
     lambda x: (x.repeat(2, 1).sum(0) * x.expand(2, 2, 3).sum(0)).sum()),
    (lambda x: (x.permute(1, 0) @ x.swapaxes(0, 1).T).sum(), lambda x: (x.permute(1, 0) @ x.transpose(0, 1).T).sum()),
    (lambda x: ops.permute(ops.unsqueeze(x, 0), (2, 0, 1)).matmul(x).sum(), lambda x: x.unsqueeze(0).permute(2, 0, 1).matmul(x).sum()),
    (lambda x: x.masked_fill(x > 0.3, 2.0).exp().sum(), lambda x: x.masked_fill(x > 0.3, 2.0).exp().sum()),
    (lambda x: ops.masked_fill(x, x < 0, -1.0).sum(), lambda x: x.masked_fill(x < 0, -1.0).sum()),
    (lambda x: x.gather(Tensor(np.array([2, 0, 2], np.int32)), 1).square().sum(), lambda x: x[:, [2, 0, 2]].square().sum()),
    (lambda x: (x.softmax(-1) * x.log_softmax(0)).sum(), lambda x: (x.softmax(-1) * x.log_softmax(0)).sum()),
    (lambda x: ((x.sign() + x.floor() + x.round() + x.ceil()) * x).sum(), lambda x: ((x.sign() + x.floor() + x.round() + x.ceil()) * x).sum()),
    (lambda x: (ops.div(x, 0.3, rounding_mode="floor") + ops.div(x, 0.3, rounding_mode="trunc") + ops.div(x, x + 2)).sum(),
     lambda x: (torch.div(x, 0.3, rounding_mode="floor") + torch.div(x, 0.3, rounding_mode="trunc") + torch.div(x, x + 2)).sum()),
    (lambda x: ops.BiasAdd()(x, x[0]).square().sum(), lambda x: (x + x[0][None, :]).square().sum()),
])
def test_tensor_methods_like_torch(where: str, ms_fn: Any, torch_fn: Any) -> None:
    check_like_torch(ms_fn, torch_fn, X)


def test_tensor_methods_without_gradients() -> None:
    x = Tensor(X)
    assert x.tolist() == X.tolist()
    m = Tensor(np.array([[1, 0], [2, 3]], np.int32))
    assert m.all().asnumpy().item() is False and m.any().asnumpy().item() is True
    np.testing.assert_array_equal(m.all(axis=1).asnumpy(), [False, True])
    np.testing.assert_array_equal(m.any(axis=0, keep_dims=True).asnumpy(), [[True, True]])
    np.testing.assert_array_equal((m > 1).logical_not().asnumpy(), [[True, True], [False, False]])
    np.testing.assert_array_equal(m.logical_not().asnumpy(), [[False, True], [False, False]])
    assert ops.dtype(x) == ops.DType()(x) == mstype.float64
    assert ops.arange(5).dtype == mstype.int64 and ops.arange(5).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(ops.arange(1, 2, 0.25).asnumpy(), [1.0, 1.25, 1.5, 1.75])
    assert ops.arange(1, 2, 0.25).dtype == mstype.float32 and ops.arange(3, dtype=gs.float16).dtype == mstype.float16
    assert ops.full((2, 2), 3.0).dtype == mstype.float32 and ops.full((2,), 3).dtype == mstype.int64
    assert ops.full((2,), 3, dtype=gs.int8).tolist() == [3, 3]
    assert ops.Fill()(mstype.float16, (2, 1), 0.5).tolist() == [[0.5], [0.5]]
    assert ops.Zeros()((2,), mstype.int32).tolist() == [0, 0] and ops.Ones()(3, mstype.float32).tolist() == [1.0] * 3
    nchw = RNG.standard_normal((2, 3, 2, 2))
    bias = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ops.BiasAdd()(Tensor(nchw), Tensor(bias)).asnumpy(), nchw + bias[:, None, None])
    np.testing.assert_allclose(ops.BiasAdd("NHWC")(Tensor(nchw[..., :1].repeat(3, -1)), Tensor(bias)).asnumpy(),
                               nchw[..., :1].repeat(3, -1) + bias)
    with pytest.raises(ValueError, match=r"bias has 2 elements for 3 channels \(axis 1 of \(2, 3, 2, 2\)\)"):
        ops.BiasAdd()(Tensor(nchw), Tensor(bias[:2]))
    with pytest.raises(ValueError, match="rounding_mode must be None, 'floor' or 'trunc'"):
        ops.div(x, 2.0, rounding_mode="round")
    np.testing.assert_array_equal(ops.div(Tensor(np.array([-7, 7], np.int32)), 2, rounding_mode="trunc").asnumpy(), [-3, 3])


@pytest.mark.parametrize("shapes", [((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((2, 3), (3, 4)), ((5, 2, 3), (3,)),
                                    ((3,), (5, 3, 4)), ((2, 1, 2, 3), (5, 3, 4)), ((4, 2, 3), (3, 4))])
def test_matmul_follows_numpy_ranks_like_torch(where: str, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    """MindSpore 2.x's ops.matmul (and @) takes 1-d vectors and broadcast batch axes, as NumPy's and torch.matmul do
    (the Autograd tutorial multiplies a (5,) input by a (5, 3) weight)."""
    a, b = RNG.standard_normal(shapes[0]), RNG.standard_normal(shapes[1])
    np.testing.assert_allclose(ops.matmul(Tensor(a), Tensor(b)).asnumpy(), np.matmul(a, b), rtol=1e-12)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).asnumpy(), a @ b, rtol=1e-12)
    check_like_torch(lambda x, y: (ops.matmul(x, y) * (x @ y)).sum(), lambda x, y: (torch.matmul(x, y) ** 2).sum(), a, b)


def test_matmul_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"at least one axis, got shapes \(\) and \(3,\)"):
        ops.matmul(Tensor(np.array(2.0)), Tensor(Y))
    with pytest.raises(Exception, match=r"\(2, 3\).*\(2, 3\)|2, 3\].*2, 3\]"):
        ops.matmul(Tensor(X), Tensor(X))


def test_random_draws_outside_a_trace_follow_set_seed() -> None:
    """ops.standard_normal and friends (the DCGAN tutorial draws its fixed noise with one) draw from set_seed's
    generator outside a trace (inside one they are ops: tests/test_client_random.py)."""
    gs.set_seed(3)
    z = ops.standard_normal((2000, 2))
    again = [ops.randn(2, 3), ops.rand((4,)), ops.uniform((3,), Tensor(2.0), Tensor(5.0)), ops.normal((3, 1), 10.0, 0.5)]
    gs.set_seed(3)
    np.testing.assert_array_equal(ops.standard_normal((2000, 2)).asnumpy(), z.asnumpy())
    assert z.dtype == mstype.float32 and abs(float(z.asnumpy().mean())) < 0.1 and 0.9 < float(z.asnumpy().std()) < 1.1
    assert [t.shape for t in again] == [(2, 3), (4,), (3,), (3, 1)]
    assert ops.randn(2, dtype=gs.float64).dtype == mstype.float64
    assert np.all((again[1].asnumpy() >= 0) & (again[1].asnumpy() < 1))
    assert np.all((again[2].asnumpy() >= 2) & (again[2].asnumpy() < 5))


def test_logical_ops_isnan_size_rank_and_sparse_cross_entropy(where: str) -> None:
    a = np.array([True, False, True, False])
    b = np.array([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(ops.logical_and(Tensor(a), Tensor(b)).asnumpy(), np.logical_and(a, b))
    np.testing.assert_array_equal(ops.logical_or(Tensor(a), Tensor(b)).asnumpy(), np.logical_or(a, b))
    np.testing.assert_array_equal(ops.logical_not(Tensor(b)).asnumpy(), np.logical_not(b))
    np.testing.assert_array_equal(ops.isnan(Tensor(np.array([1.0, np.nan, np.inf]))).asnumpy(), [False, True, False])
    assert ops.Size()(Tensor(X)) == 6 and ops.Rank()(Tensor(X)) == 2
    logits, labels = RNG.standard_normal((4, 3)), np.array([0, 2, 1, 2], np.int32)
    loss_fn = ops.SparseSoftmaxCrossEntropyWithLogits()
    got = gs.value_and_grad(lambda z: loss_fn(z, Tensor(labels)))(Tensor(logits))
    t = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(t, torch.tensor(labels, dtype=torch.long))
    want.backward()
    np.testing.assert_allclose(got[0].asnumpy(), want.item(), rtol=1e-12)
    np.testing.assert_allclose(got[1].asnumpy(), t.grad.numpy(), rtol=1e-12)
    with pytest.raises(NotImplementedError, match="is_grad=True is not supported"):
        ops.SparseSoftmaxCrossEntropyWithLogits(is_grad=True)


def test_get_seed_returns_what_set_seed_set() -> None:
    gs.set_seed(1234)
    assert gs.get_seed() == 1234


def test_uniform_and_normal_broadcast_shape_with_their_parameters_as_documented() -> None:
    """MindSpore's documented examples: ops.uniform((3, 1, 2), minval (2, 2), maxval (2,)) has shape (3, 2, 2) and
    ops.normal((3, 1, 3), mean (2, 3), stddev (1,)) shape (3, 2, 3); int32 draws a discrete U[minval, maxval)."""
    lo, hi = np.array([[3, 4], [5, 6]], np.float32), np.array([8.0, 10.0], np.float32)
    gs.set_seed(5)
    u = ops.uniform((3, 1, 2), Tensor(lo), Tensor(hi), seed=5)
    assert u.shape == (3, 2, 2) and u.dtype == mstype.float32
    np.testing.assert_allclose(u.asnumpy(), np.random.default_rng(5).uniform(lo, hi, (3, 2, 2)).astype(np.float32))
    mean = np.array([[3, 4, 5], [6, 7, 8]], np.float32)
    gs.set_seed(5)
    n = ops.normal((3, 1, 3), Tensor(mean), Tensor(np.array([1.0], np.float32)), seed=5)
    assert n.shape == (3, 2, 3) and n.dtype == mstype.float32
    np.testing.assert_allclose(n.asnumpy(), np.random.default_rng(5).normal(mean, 1.0, (3, 2, 3)).astype(np.float32))
    gs.set_seed(7)
    d = ops.uniform((4, 2), Tensor(1, gs.int32), Tensor(2, gs.int32), seed=5, dtype=gs.int32)
    assert d.dtype == mstype.int32 and d.asnumpy().tolist() == [[1, 1]] * 4
    wide = ops.uniform((2000,), Tensor(-3, gs.int32), Tensor(4, gs.int32), dtype=gs.int32).asnumpy()
    assert set(wide.tolist()) == set(range(-3, 4))
    with pytest.raises(TypeError, match="dtype must be int32 or float32, got Float64"):
        ops.uniform((2,), Tensor(0.0), Tensor(1.0), dtype=gs.float64)
    with pytest.raises(TypeError, match="minval and maxval must be int32 or float32 and alike"):
        ops.uniform((2,), Tensor(0, gs.int32), Tensor(1.0, gs.float32))
    with pytest.raises(ValueError, match=r"ops.normal: shape \(3, 2\) does not broadcast"):
        ops.normal((3, 2), Tensor(mean), 1.0)


def test_logical_ops_take_a_python_bool_operand() -> None:
    """MindSpore's ops.logical_and/or take Union[Tensor, bool] operands; NumPy's logical functions as the oracle."""
    a = np.array([True, False, True])
    for x, y in ((a, True), (False, a), (a, False), (True, a), (True, False)):
        tx, ty = (Tensor(v) if isinstance(v, np.ndarray) else v for v in (x, y))
        np.testing.assert_array_equal(ops.logical_and(tx, ty).asnumpy(), np.logical_and(x, y))
        np.testing.assert_array_equal(ops.logical_or(tx, ty).asnumpy(), np.logical_or(x, y))
    with pytest.raises(TypeError, match="ops.logical_and: input must be a Tensor, got int"):
        ops.logical_and(1, Tensor(a))
