"""Model-zoo style TrainOneStepCell subclasses (MindSpore's attributes grad, weights, optimizer, sens, reducer_flag,
grad_reducer), return_grad, and checkpoints saved from a list of Parameters (``net.trainable_params()``), a list of
dicts and a dict: steps against the closed-form gradient of a least-squares loss, round trips by value."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradserve as gs
from gradserve import nn, ops

RNG = np.random.default_rng(41)
X = RNG.normal(size=(6, 3))
Y = RNG.normal(size=(6, 2))


def make_net(seed: int) -> nn.Dense:
    gs.set_seed(seed)
    return nn.Dense(3, 2, dtype=gs.float64)


def mse_grads(w: np.ndarray, b: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """d/dw and d/db of scale * mean((x w^T + b - y)^2): the oracle of one step."""
    r = X @ w.T + b - Y
    g = scale * 2 * r / r.size
    return g.T @ X, g.sum(axis=0)


class ZooStep(nn.TrainOneStepCell):
    """The construct model-zoo networks write (BERT, ResNet): sens filled like the loss, grads through grad_reducer,
    the update joined to the loss with depend."""

    def construct(self, *inputs: Any) -> Any:
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        loss = ops.depend(loss, self.optimizer(grads))
        return loss


def test_base_class_sets_mindsporess_attributes() -> None:
    net = make_net(1)
    opt = nn.SGD(net.trainable_params(), 0.1)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)
    assert step.reducer_flag is False
    assert step.optimizer is opt and step.sens == 1.0
    assert [p.name for p in step.weights] == ["weight", "bias"]
    grads = (gs.Tensor(np.ones((2, 3))), gs.Tensor(np.ones(2)))
    assert step.grad_reducer(grads) is grads  # the identity outside distributed training, as ops.identity


@pytest.mark.parametrize("sens", [None, 2.5])
def test_a_model_zoo_subclass_construct_runs_and_steps_like_the_closed_form(sens: float | None, where: str) -> None:
    net = make_net(2)
    step = ZooStep(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.1), sens=sens)
    x, y = gs.Tensor(X), gs.Tensor(Y)
    for _ in range(3):
        w, b = net.weight.asnumpy().copy(), net.bias.asnumpy().copy()
        loss = step(x, y)
        np.testing.assert_allclose(loss.asnumpy(), np.mean((X @ w.T + b - Y) ** 2), rtol=1e-12)
        gw, gb = mse_grads(w, b, 1.0 if sens is None else sens)
        np.testing.assert_allclose(net.weight.asnumpy(), w - 0.1 * gw, rtol=1e-12)
        np.testing.assert_allclose(net.bias.asnumpy(), b - 0.1 * gb, rtol=1e-12)


def test_return_grad_gives_the_gradients_by_parameter_name() -> None:
    net = make_net(3)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.0), return_grad=True)
    w, b = net.weight.asnumpy().copy(), net.bias.asnumpy().copy()
    _, grads = step(gs.Tensor(X), gs.Tensor(Y))
    gw, gb = mse_grads(w, b, 1.0)
    assert list(grads) == ["weight", "bias"]
    np.testing.assert_allclose(grads["weight"].asnumpy(), gw, rtol=1e-12)
    np.testing.assert_allclose(grads["bias"].asnumpy(), gb, rtol=1e-12)


@pytest.mark.parametrize("form", ["trainable_params", "parameter_tuple", "dicts", "dict"])
def test_checkpoint_of_a_parameter_list_round_trips(form: str, tmp_path: Path) -> None:
    net = make_net(4)
    params = net.trainable_params()
    save_obj = {
        "trainable_params": params,
        "parameter_tuple": gs.ParameterTuple(params),
        "dicts": [{"name": p.name, "data": p} for p in params],
        "dict": {p.name: p for p in params},
    }[form]
    path = tmp_path / "params.ckpt"
    gs.save_checkpoint(save_obj, str(path))
    loaded = gs.load_checkpoint(str(path))
    assert sorted(loaded) == ["bias", "weight"]
    fresh = make_net(5)
    assert not np.array_equal(fresh.weight.asnumpy(), net.weight.asnumpy())
    assert gs.load_param_into_net(fresh, loaded) == ([], [])
    x = gs.Tensor(X)
    np.testing.assert_array_equal(fresh(x).asnumpy(), net(x).asnumpy())


def test_checkpoint_rejects_a_list_of_other_things(tmp_path: Path) -> None:
    net = make_net(6)
    with pytest.raises(TypeError, match=r"a list must hold Parameters or dicts with 'name' and 'data'; item 1 is a int"):
        gs.save_checkpoint([net.weight, 3], str(tmp_path / "bad.ckpt"))
    with pytest.raises(TypeError, match=r"item 0 is a dict with keys \['name'\]"):
        gs.save_checkpoint([{"name": "w"}], str(tmp_path / "bad.ckpt"))


@pytest.mark.parametrize("get_all, get_by_list", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_value_and_grad_returns_the_loss_and_grad_operation_s_structure(where: str, get_all: bool, get_by_list: bool) -> None:
    """MindSpore's ForwardValueAndGrad example (a MatMul net in WithLossCell): (loss, gradients) shaped as GradOperation's."""
    class Net(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.weight = gs.Parameter(gs.Tensor(np.ones([2, 2]).astype(np.float64)), name="weight")
            self.matmul = ops.MatMul()

        def construct(self, x: Any) -> Any:
            return self.matmul(x, self.weight)

    net = Net()
    weights = gs.ParameterTuple(net.trainable_params())
    train_network = nn.ForwardValueAndGrad(nn.WithLossCell(net, nn.MSELoss()), weights=weights if get_by_list else None,
                                           get_all=get_all, get_by_list=get_by_list)
    x, y = RNG.normal(size=(3, 2)), RNG.normal(size=(3, 2))
    loss, grads = train_network(gs.Tensor(x), gs.Tensor(y))
    r = x @ np.ones((2, 2)) - y
    dx, dy, dw = 2 * r / r.size @ np.ones((2, 2)).T, -2 * r / r.size, x.T @ (2 * r / r.size)
    np.testing.assert_allclose(loss.asnumpy(), (r**2).mean(), rtol=1e-12)
    want: Any = {(False, False): dx, (True, False): (dx, dy), (False, True): (dw,), (True, True): ((dx, dy), (dw,))}[(get_all, get_by_list)]
    _assert_same_tree(grads, want)
    sens_net = nn.ForwardValueAndGrad(nn.WithLossCell(net, nn.MSELoss()), weights=weights, get_by_list=True, sens_param=True)
    loss, (gw,) = sens_net(gs.Tensor(x), gs.Tensor(y), gs.Tensor(np.array(3.0)))
    np.testing.assert_allclose(gw.asnumpy(), 3 * dw, rtol=1e-12)
    with pytest.raises(TypeError, match="get_by_list=True needs weights"):
        nn.ForwardValueAndGrad(net, get_by_list=True)


def _assert_same_tree(got: Any, want: Any) -> None:
    """``got`` nests tuples as ``want`` does, with a Tensor equal to each of its arrays."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{got!r} is not shaped like {len(want)} items"
        for g, w in zip(got, want):
            _assert_same_tree(g, w)
    else:
        assert isinstance(got, gs.Tensor)
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-12)


def test_forward_value_and_grad_takes_a_function_or_a_method() -> None:
    """MindSpore's ForwardValueAndGrad accepts a Cell, a function or a method as ``network``; gradients in closed form."""
    w = gs.Parameter(gs.Tensor(np.ones([2, 2])), name="w")
    x, y = RNG.normal(size=(3, 2)), RNG.normal(size=(3, 2))

    def loss_fn(a: Any, b: Any) -> Any:
        return ((ops.matmul(a, w) - b) ** 2).mean()

    loss, ((dx, dy), (dw,)) = nn.ForwardValueAndGrad(loss_fn, weights=gs.ParameterTuple([w]), get_all=True,
                                                     get_by_list=True)(gs.Tensor(x), gs.Tensor(y))
    r = x @ np.ones((2, 2)) - y
    np.testing.assert_allclose(loss.asnumpy(), (r**2).mean(), rtol=1e-12)
    _assert_same_tree((dx, dy, dw), (2 * r / r.size @ np.ones((2, 2)).T, -2 * r / r.size, x.T @ (2 * r / r.size)))

    class Quadratic:
        def loss(self, a: Any) -> Any:
            return (a * a).sum()

    value, grad = nn.ForwardValueAndGrad(Quadratic().loss)(gs.Tensor(x))
    np.testing.assert_allclose(value.asnumpy(), (x * x).sum(), rtol=1e-12)
    np.testing.assert_allclose(grad.asnumpy(), 2 * x, rtol=1e-12)
    with pytest.raises(TypeError, match="network must be a Cell, a function or a method, got int"):
        nn.ForwardValueAndGrad(3)  # type: ignore[arg-type]
