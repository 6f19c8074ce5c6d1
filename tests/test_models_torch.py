"""Whole models written model-zoo style (LeNet-5, a ResNet basic block with BatchNorm, a transformer encoder layer,
a PINN) against PyTorch in float64 with the same weights, embedded and through a server: gradients w.r.t. the input
and every weight, and a Hessian-vector product over (input, weights), to 1e-9. Also BatchNorm's moving statistics
written back after training calls, compared with PyTorch's running statistics."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np
import pytest
import torch
from nnkit import F64, TOL, LeNet5, randomize
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradserve as gs
from gradserve import nn, ops
from gradserve.client.runner import assign_after_call

RNG = np.random.default_rng(2026)


class Objective(nn.Cell):
    """f(x) = sum(net(x) * r), or net(x) itself when ``r`` is None (a network that already returns a scalar)."""

    def __init__(self, net: nn.Cell, r: np.ndarray | None) -> None:
        super().__init__(auto_prefix=False)
        self.net, self.r = net, None if r is None else gs.Tensor(r)

    def construct(self, x: Any) -> Any:
        y = self.net(x)
        return y if self.r is None else (y * self.r).sum()


class DirectionalGrad(nn.Cell):
    """<grad f(x, w), (vx, vw)>: its gradient w.r.t. (x, w) is the Hessian-vector product H v."""

    def __init__(self, obj: Objective, weights: gs.ParameterTuple, vx: np.ndarray, vw: list[np.ndarray]) -> None:
        super().__init__(auto_prefix=False)
        self.obj, self.weights = obj, weights
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)
        self.vx, self.vw = gs.Tensor(vx), [gs.Tensor(v) for v in vw]

    def construct(self, x: Any) -> Any:
        (gx,), gw = self.grad(self.obj, self.weights)(x)
        total = (gx * self.vx).sum()
        for g, v in zip(gw, self.vw):
            total = total + (g * v).sum()
        return total


def ours(net: nn.Cell, x: np.ndarray, r: np.ndarray | None, vx: np.ndarray, vw: list[np.ndarray]) -> list[np.ndarray]:
    """[df/dx, df/dw..., (Hv)_x, (Hv)_w...] from gradserve."""
    obj = Objective(net, r)
    weights = gs.ParameterTuple(net.trainable_params())
    both = ops.GradOperation(get_all=True, get_by_list=True)
    (gx,), gw = both(obj, weights)(gs.Tensor(x))
    (hx,), hw = both(DirectionalGrad(obj, weights, vx, vw), weights)(gs.Tensor(x))
    return [t.asnumpy() for t in (gx, *gw, hx, *hw)]


def theirs(fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor], x: np.ndarray, r: np.ndarray | None,
           vx: np.ndarray, vw: list[np.ndarray]) -> list[np.ndarray]:
    """The same from PyTorch: autograd.grad with create_graph, then the gradient of <g, v>."""
    tx = torch.tensor(x, requires_grad=True)
    y = fn(tx)
    f = y if r is None else (y * torch.tensor(r)).sum()
    wrt = [tx, *params]
    g = torch.autograd.grad(f, wrt, create_graph=True)
    dot = sum((gi * torch.tensor(v)).sum() for gi, v in zip(g, [vx, *vw]))
    h = torch.autograd.grad(dot, wrt, allow_unused=True)
    return [t.detach().numpy() for t in g] + [np.zeros(w.shape) if t is None else t.numpy() for t, w in zip(h, wrt)]


def check_model(net: nn.Cell, fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor], x: np.ndarray,
                r: np.ndarray | None) -> None:
    """Gradients and a Hessian-vector product of net against fn (same weights) to 1e-9, in a random direction."""
    vx = RNG.normal(size=x.shape)
    vw = [RNG.normal(size=p.shape) for p in net.trainable_params()]
    a, b = ours(net, x, r, vx, vw), theirs(fn, params, x, r, vx, vw)
    assert len(a) == len(b) == 2 * (1 + len(params))
    for k, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_allclose(u, v, rtol=TOL, atol=TOL, err_msg=f"result {k}")
    hv = a[len(a) // 2:]
    assert max(np.abs(h).max() for h in hv) > 1e-3  # the Hessian-vector product is not trivially zero


def copy_by_name(net: nn.Cell, module: torch.nn.Module, rename: Callable[[str], str] = lambda n: n) -> list[torch.Tensor]:
    """Copy our trainable parameters into ``module``'s by (renamed) name; torch's parameters in our order."""
    named = dict(module.named_parameters())
    out = []
    with torch.no_grad():
        for p in net.trainable_params():
            t = named[rename(p.name)]
            t.copy_(torch.tensor(p.asnumpy()).reshape(t.shape))
            out.append(t)
    assert len(out) == len(named)
    return out


def test_lenet5(where: str) -> None:
    gs.set_seed(0)
    net = LeNet5()
    f = torch.float64
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, dtype=f), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5, dtype=f), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120, dtype=f), torch.nn.ReLU(), torch.nn.Linear(120, 84, dtype=f), torch.nn.ReLU(),
        torch.nn.Linear(84, 10, dtype=f),
    )
    params = list(module.parameters())
    with torch.no_grad():
        for p, t in zip(net.trainable_params(), params):
            t.copy_(torch.tensor(p.asnumpy()))
    check_model(net, module, params, RNG.normal(size=(2, 1, 32, 32)), RNG.normal(size=(2, 10)))


class ResidualBlock(nn.Cell):
    """A ResNet basic block: conv3x3-bn-relu-conv3x3-bn, plus the identity, then relu."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, pad_mode="pad", padding=1, dtype=F64)
        self.bn1 = nn.BatchNorm2d(channels, dtype=F64)
        self.conv2 = nn.Conv2d(channels, channels, 3, pad_mode="same", dtype=F64)
        self.bn2 = nn.BatchNorm2d(channels, dtype=F64)
        self.relu = nn.ReLU()

    def construct(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TorchResidualBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        f = torch.float64
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False, dtype=f)
        self.bn1 = torch.nn.BatchNorm2d(channels, dtype=f)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding="same", bias=False, dtype=f)
        self.bn2 = torch.nn.BatchNorm2d(channels, dtype=f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


@pytest.mark.parametrize("training", [True, False])
def test_resnet_block(where: str, training: bool) -> None:
    block = ResidualBlock(3)
    randomize(block, 4)
    block.set_train(training)
    tblock = TorchResidualBlock(3).train(training)
    with torch.no_grad():
        for bn, tbn in ((block.bn1, tblock.bn1), (block.bn2, tblock.bn2)):
            bn.moving_variance.set_data(RNG.uniform(0.5, 2.0, size=3))
            tbn.running_mean.copy_(torch.tensor(bn.moving_mean.asnumpy()))
            tbn.running_var.copy_(torch.tensor(bn.moving_variance.asnumpy()))
    params = copy_by_name(block, tblock, lambda n: n.replace("gamma", "weight").replace("beta", "bias"))
    check_model(block, tblock, params, RNG.normal(size=(2, 3, 5, 5)), RNG.normal(size=(2, 3, 5, 5)))


def test_transformer_encoder_layer(where: str) -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", dtype=F64)
    randomize(layer, 1)
    gelu = partial(torch.nn.functional.gelu, approximate="tanh")
    tlayer = torch.nn.TransformerEncoderLayer(8, 2, 16, activation=gelu, dtype=torch.float64).eval()
    params = copy_by_name(layer, tlayer, lambda n: n.replace("gamma", "weight").replace("beta", "bias"))
    x = RNG.normal(size=(4, 2, 8))

    def math_attention(x: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no second derivative
            return tlayer(x)

    check_model(layer, math_attention, params, x, RNG.normal(size=x.shape))


class PinnLoss(nn.Cell):
    """The residual of u'' = x u at collocation points, squared and summed: u is a tanh MLP and u'' its second
    derivative w.r.t. the input, taken inside the loss."""

    def __init__(self, u: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.u = u
        du = ops.GradOperation()(u)
        self.d2u = ops.GradOperation()(lambda x: du(x).sum())

    def construct(self, x: Any) -> Any:
        residual = self.d2u(x) - x * self.u(x)
        return (residual * residual).sum()


def test_pinn(where: str) -> None:
    gs.set_seed(3)
    u = nn.SequentialCell(nn.Dense(1, 8, activation="tanh", dtype=F64), nn.Dense(8, 8, activation="tanh", dtype=F64),
                          nn.Dense(8, 1, dtype=F64))
    layers = [torch.nn.Linear(1, 8, dtype=torch.float64), torch.nn.Linear(8, 8, dtype=torch.float64),
              torch.nn.Linear(8, 1, dtype=torch.float64)]
    params = [t for lin in layers for t in (lin.weight, lin.bias)]
    with torch.no_grad():
        for p, t in zip(u.trainable_params(), params):
            t.copy_(torch.tensor(p.asnumpy()))

    def tu(x: torch.Tensor) -> torch.Tensor:
        return layers[2](torch.tanh(layers[1](torch.tanh(layers[0](x)))))

    def loss(x: torch.Tensor) -> torch.Tensor:
        (d1,) = torch.autograd.grad(tu(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), x, create_graph=True)
        residual = d2 - x * tu(x)
        return (residual * residual).sum()

    check_model(PinnLoss(u), loss, params, np.linspace(-1, 1, 5).reshape(5, 1), None)


# ---- BatchNorm's moving statistics, written back after each training call ----


def moving_reference(batches: list[np.ndarray], momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """MindSpore's update from zeros and ones: moving = momentum * moving + (1 - momentum) * batch statistic, with
    the biased batch variance (MindSpore's CPU kernel)."""
    mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
    for b in batches:
        axes = (0,) + tuple(range(2, b.ndim))
        mean = momentum * mean + (1 - momentum) * b.mean(axis=axes)
        var = momentum * var + (1 - momentum) * b.var(axis=axes)
    return mean, var


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 5, 2)])
def test_batchnorm_moving_statistics_match_torch_and_serve_inference(where: str, shape: tuple[int, ...]) -> None:
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3, momentum=0.8, dtype=F64)
    randomize(bn, 5)
    bn.moving_mean.set_data(np.zeros(3))
    bn.moving_variance.set_data(np.ones(3))
    bn.set_train(True)
    tbn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(3, momentum=0.2, dtype=torch.float64)
    batches = [RNG.normal(size=shape) * 2 + 1 for _ in range(4)]
    for b in batches:
        np.testing.assert_allclose(bn(gs.Tensor(b)).asnumpy(),
                                   torch.nn.functional.batch_norm(torch.tensor(b), None, None, torch.tensor(bn.gamma.asnumpy()),
                                                                  torch.tensor(bn.beta.asnumpy()), True).numpy(),
                                   rtol=TOL, atol=TOL)
        tbn(torch.tensor(b))
    mean, var = moving_reference(batches, 0.8)
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), tbn.running_mean.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(bn.moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)
    # PyTorch's running variance uses the unbiased batch variance; MindSpore's CPU kernel the biased one.
    assert not np.allclose(bn.moving_variance.asnumpy(), tbn.running_var.numpy(), rtol=1e-6)
    bn.set_train(False)
    x = RNG.normal(size=shape)
    expected = torch.nn.functional.batch_norm(
        torch.tensor(x), torch.tensor(mean), torch.tensor(var), torch.tensor(bn.gamma.asnumpy()), torch.tensor(bn.beta.asnumpy()),
        False, eps=1e-5)
    np.testing.assert_allclose(bn(gs.Tensor(x)).asnumpy(), expected.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(bn.moving_mean.asnumpy(), mean)  # inference leaves them alone


def test_batchnorm_called_twice_in_one_construct_updates_twice_and_gradients_are_unaffected(where: str) -> None:
    """Each call (the forward call, then the gradient call's own forward) updates the statistics twice."""
    bn = nn.BatchNorm1d(2, dtype=F64)
    bn.set_train(True)

    class Twice(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.bn = bn

        def construct(self, x: Any) -> Any:
            return self.bn(self.bn(x) * 3.0)

    net, tbn = Twice(), torch.nn.BatchNorm1d(2, dtype=torch.float64)
    x = RNG.normal(size=(5, 2))
    out = net(gs.Tensor(x)).asnumpy()
    tx = torch.tensor(x, requires_grad=True)
    tout = tbn(tbn(tx) * 3.0)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), tbn.running_mean.numpy(), rtol=TOL, atol=TOL)
    r = RNG.normal(size=(5, 2))
    (gx,), gw = ops.GradOperation(get_all=True, get_by_list=True)(Objective(net, r), gs.ParameterTuple(bn.trainable_params()))(gs.Tensor(x))
    expected = torch.autograd.grad((tout * torch.tensor(r)).sum(), [tx, tbn.weight, tbn.bias])
    for a, b in zip([gx, *gw], expected):
        np.testing.assert_allclose(a.asnumpy(), b.numpy(), rtol=TOL, atol=TOL)
    with torch.no_grad():
        tbn(tbn(tx) * 3.0)  # the forward inside the gradient call updates them as well, once
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), tbn.running_mean.numpy(), rtol=TOL, atol=TOL)


def test_train_one_step_updates_moving_statistics_once_per_step(where: str) -> None:
    gs.set_seed(6)
    net = nn.SequentialCell(nn.Dense(4, 3, dtype=F64), nn.BatchNorm1d(3, dtype=F64))
    net.set_train(True)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.0))
    xs = [RNG.normal(size=(8, 4)) for _ in range(3)]
    for x in xs:
        step(gs.Tensor(x), gs.Tensor(np.zeros((8, 3))))
    w, b = net[0].weight.asnumpy(), net[0].bias.asnumpy()
    mean, var = moving_reference([x @ w.T + b for x in xs], 0.9)
    np.testing.assert_allclose(net[1].moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net[1].moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)


class RunningSum(nn.Cell):
    """A Cell with its own assign-like side output: ``total`` accumulates the sum of every input it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.total = gs.Parameter(np.zeros(2), name="total", requires_grad=False)
        self.scale = gs.Parameter(np.array([2.0, 3.0]), name="scale")

    def construct(self, x: Any) -> Any:
        assign_after_call(self.total, self.total + x.sum(axis=0))
        return (x * self.scale).sum()


def test_a_cell_writes_parameters_after_each_call_and_gradients_ignore_it(where: str) -> None:
    """Forward calls write once each; a top-level gradient call too (its forward's write), its gradients unaffected."""
    cell = RunningSum()
    xs = [RNG.normal(size=(3, 2)) for _ in range(3)]
    for x in xs:
        np.testing.assert_allclose(cell(gs.Tensor(x)).asnumpy(), (x * [2.0, 3.0]).sum(), rtol=TOL)
    np.testing.assert_allclose(cell.total.asnumpy(), sum(x.sum(axis=0) for x in xs), rtol=TOL, atol=TOL)
    (dx,), (dscale,) = ops.GradOperation(get_all=True, get_by_list=True)(cell, gs.ParameterTuple([cell.scale]))(gs.Tensor(xs[0]))
    np.testing.assert_allclose(dx.asnumpy(), np.tile([2.0, 3.0], (3, 1)), rtol=TOL)
    np.testing.assert_allclose(dscale.asnumpy(), xs[0].sum(axis=0), rtol=TOL)
    np.testing.assert_allclose(cell.total.asnumpy(), sum(x.sum(axis=0) for x in [*xs, xs[0]]), rtol=TOL, atol=TOL)


def test_a_write_of_the_wrong_shape_names_the_parameter() -> None:
    class Bad(RunningSum):
        def construct(self, x: Any) -> Any:
            assign_after_call(self.total, x)
            return x

    with pytest.raises(ValueError, match=r"assign to Parameter 'total': value has shape \(3, 2\).*parameter has shape \(2,\)"):
        Bad()(gs.Tensor(np.ones((3, 2))))
