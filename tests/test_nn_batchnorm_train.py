"""BatchNorm's moving statistics under MindSpore 2.x-style training: ``value_and_grad`` (and ``grad``,
``GradOperation``) called at top level updates them exactly once per call, as the forward inside MindSpore's
transform does, with gradients equal to those of a network that writes nothing; against PyTorch's running mean
(PyTorch momentum 0.1 is MindSpore's 0.9) and the NumPy recurrence with the biased batch variance (MindSpore's CPU
kernel; PyTorch's running variance uses the unbiased one). Also ``ops.assign``."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from nnkit import F64, TOL, randomize

import gradserve as gs
from gradserve import nn, ops

RNG = np.random.default_rng(1212)
STEPS = 3


class ConvBN(nn.Cell):
    """Conv2d -> BatchNorm2d -> ReLU -> mean: a scalar loss of an image batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, pad_mode="valid", has_bias=True, dtype=F64)
        self.bn = nn.BatchNorm2d(3, dtype=F64)
        self.relu = nn.ReLU()

    def construct(self, x: Any) -> Any:
        return (self.relu(self.bn(self.conv(x))) ** 2).mean()


def make_net(seed: int) -> ConvBN:
    net = ConvBN()
    randomize(net, seed)
    net.bn.moving_mean.set_data(np.zeros(3))
    net.bn.moving_variance.set_data(np.ones(3))
    net.set_train(True)
    return net


def torch_twin(net: ConvBN) -> tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]:
    conv = torch.nn.Conv2d(2, 3, 3, dtype=torch.float64)
    bn = torch.nn.BatchNorm2d(3, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(net.conv.weight.asnumpy()))
        conv.bias.copy_(torch.tensor(net.conv.bias.asnumpy()))
        bn.weight.copy_(torch.tensor(net.bn.gamma.asnumpy()))
        bn.bias.copy_(torch.tensor(net.bn.beta.asnumpy()))
    return conv, bn


def reference_statistics(conv_outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """MindSpore's update from zeros and ones, momentum 0.9, the biased batch variance."""
    mean, var = np.zeros(3), np.ones(3)
    for h in conv_outputs:
        mean = 0.9 * mean + 0.1 * h.mean(axis=(0, 2, 3))
        var = 0.9 * var + 0.1 * h.var(axis=(0, 2, 3))
    return mean, var


def no_write_gradients(net: ConvBN, x: np.ndarray) -> list[np.ndarray]:
    """The weights' gradients of the same loss with BatchNorm's batch statistics computed by plain ops (no write)."""

    def loss(x: Any) -> Any:
        h = net.conv(x)
        mean = h.mean(axis=(0, 2, 3), keep_dims=True)
        var = ((h - mean) ** 2).mean(axis=(0, 2, 3), keep_dims=True)
        y = (h - mean) / ops.sqrt(var + 1e-5) * net.bn.gamma.reshape(1, 3, 1, 1) + net.bn.beta.reshape(1, 3, 1, 1)
        return (ops.relu(y) ** 2).mean()

    grads = ops.grad(loss, None, net.trainable_params())(gs.Tensor(x))
    return [g.asnumpy() for g in grads]


def value_and_grad_step(net: ConvBN) -> Callable[[gs.Tensor], tuple[Any, Any]]:
    """MindSpore 2.x's training step: value_and_grad of a forward function over the optimizer's parameters."""
    return ops.value_and_grad(lambda x: net(x), None, net.trainable_params())


def grad_step(net: ConvBN) -> Callable[[gs.Tensor], tuple[Any, Any]]:
    return ops.grad(lambda x: net(x), None, net.trainable_params())


def grad_operation_step(net: ConvBN) -> Callable[[gs.Tensor], tuple[Any, Any]]:
    return lambda x: ops.GradOperation(get_by_list=True)(net, gs.ParameterTuple(net.trainable_params()))(x)


@pytest.mark.parametrize("make_step", [value_and_grad_step, grad_step, grad_operation_step])
def test_training_by_transforms_updates_moving_statistics_once_per_call(where: str, make_step: Any) -> None:
    net = make_net(3)
    conv, tbn = torch_twin(net)
    step = make_step(net)
    optimizer = nn.SGD(net.trainable_params(), learning_rate=0.1)
    topt = torch.optim.SGD([*conv.parameters(), *tbn.parameters()], lr=0.1)
    conv_outputs = []
    for _ in range(STEPS):
        x = RNG.normal(size=(4, 2, 6, 5)) * 1.5 + 0.5
        conv_outputs.append(net.conv(gs.Tensor(x)).asnumpy())  # before this step's weight update
        expected_grads = no_write_gradients(net, x)
        before = net.bn.moving_mean.asnumpy()
        out = step(gs.Tensor(x))
        grads = out[1] if make_step is value_and_grad_step else out
        for g, e in zip(grads, expected_grads):
            np.testing.assert_allclose(g.asnumpy(), e, rtol=TOL, atol=TOL)
        assert not np.allclose(net.bn.moving_mean.asnumpy(), before)
        optimizer(grads)
        topt.zero_grad()
        (torch.relu(tbn(conv(torch.tensor(x)))) ** 2).mean().backward()
        topt.step()
    mean, var = reference_statistics(conv_outputs)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), tbn.running_mean.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.conv.weight.asnumpy(), conv.weight.detach().numpy(), rtol=1e-8, atol=1e-8)


def test_value_and_grad_returns_the_loss_and_writes_nothing_in_inference(where: str) -> None:
    net = make_net(4)
    x = RNG.normal(size=(3, 2, 5, 5))
    loss, _ = value_and_grad_step(net)(gs.Tensor(x))
    conv, tbn = torch_twin(net)
    tbn.train()
    np.testing.assert_allclose(loss.asnumpy(), (torch.relu(tbn(conv(torch.tensor(x)))) ** 2).mean().item(), rtol=TOL)
    net.set_train(False)
    stats = net.bn.moving_mean.asnumpy(), net.bn.moving_variance.asnumpy()
    ops.value_and_grad(lambda x: net(x), None, net.trainable_params())(gs.Tensor(x))
    np.testing.assert_array_equal(net.bn.moving_mean.asnumpy(), stats[0])
    np.testing.assert_array_equal(net.bn.moving_variance.asnumpy(), stats[1])


def test_train_one_step_still_updates_once_per_step(where: str) -> None:
    """TrainOneStepCell runs the forward (network set_grad) and then GradOperation on the same inputs: the gradient
    call reuses that forward, as MindSpore's check_run does, so the statistics move once per step."""
    net = make_net(5)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.0))
    xs = [RNG.normal(size=(4, 2, 5, 5)) for _ in range(STEPS)]
    outs = [net.conv(gs.Tensor(x)).asnumpy() for x in xs]
    for x in xs:
        step(gs.Tensor(x), gs.Tensor(np.zeros(())))
    mean, var = reference_statistics(outs)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)


def test_a_function_without_writes_runs_the_same_graph() -> None:
    """No write, no change: the staged network is the one a call without BatchNorm always ran (one graph, one id)."""
    w = gs.Parameter(np.array([1.5, -2.0]), name="w")
    f = ops.value_and_grad(lambda x: (x * w).sum(), None, [w])
    f(gs.Tensor(np.ones(2)))
    from gradserve.client.runner import _CACHES

    (entry,) = [e for staged in f._staged.values() for bucket in _CACHES[staged].entries.values() for e in bucket]
    assert entry.traced.writes == ()
    assert list(entry.network_ids) == [id(gs.client.backends.get_backend())]


def test_the_written_values_come_from_the_gradient_program_s_own_forward() -> None:
    """One program: the copy of the forward that computes the written values is merged with the transform's."""
    from gradserve.client.backends import get_backend
    from gradserve.client.runner import _CACHES, writing_network_id
    from gradserve.engine.compiler import optimize

    net = make_net(11)
    f = value_and_grad_step(net)
    f(gs.Tensor(RNG.normal(size=(2, 2, 4, 4))))
    (entry,) = [e for staged in f._staged.values() for bucket in _CACHES[staged].entries.values() for e in bucket]
    backend = get_backend()
    plain, writing = (optimize(backend._graphs[i]) for i in (entry.network_id(backend), writing_network_id(entry, backend)))
    assert [n.op for n in writing.nodes].count("BatchNorm") == [n.op for n in plain.nodes].count("BatchNorm") == 1
    assert [n.op for n in writing.nodes].count("Conv2D") == [n.op for n in plain.nodes].count("Conv2D")


def test_jvp_and_jacobians_write_once_and_vjp_fn_writes_nothing(where: str) -> None:
    net = make_net(6)
    x = gs.Tensor(RNG.normal(size=(2, 2, 4, 4)))
    h = net.conv(x).asnumpy().mean(axis=(0, 2, 3))
    ops.jvp(net, x, gs.Tensor(np.ones((2, 2, 4, 4))))
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), 0.1 * h, rtol=TOL, atol=TOL)
    ops.jacrev(net)(x)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), 0.19 * h, rtol=TOL, atol=TOL)
    out, vjp_fn = ops.vjp(net, x)  # vjp's forward call writes once
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), 0.271 * h, rtol=TOL, atol=TOL)
    vjp_fn(gs.Tensor(np.ones(())))
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), 0.271 * h, rtol=TOL, atol=TOL)


def test_a_gradient_inside_a_construct_writes_nothing(where: str) -> None:
    net = make_net(7)
    weights = gs.ParameterTuple(net.trainable_params())

    class GradNorm(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x: Any) -> Any:
            grads = ops.GradOperation(get_by_list=True)(self.net, weights)(x)
            return sum((g ** 2).sum() for g in grads)

    GradNorm()(gs.Tensor(RNG.normal(size=(2, 2, 4, 4))))
    np.testing.assert_array_equal(net.bn.moving_mean.asnumpy(), np.zeros(3))


def test_ops_assign(where: str) -> None:
    p = gs.Parameter(np.array([1.0, 2.0]), name="p")
    out = ops.assign(p, gs.Tensor(np.array([3.0, 4.0])))
    np.testing.assert_array_equal(out.asnumpy(), [3.0, 4.0])
    np.testing.assert_array_equal(p.asnumpy(), [3.0, 4.0])
    ops.assign(p, gs.Tensor(np.array([5.0, 6.0], np.float32)))  # float32 into float64: widened
    assert p.asnumpy().dtype == np.float64 and p.asnumpy().tolist() == [5.0, 6.0]

    class Counter(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.count = gs.Parameter(np.zeros(2), name="count", requires_grad=False)
            self.w = gs.Parameter(np.array([2.0, -1.0]), name="w")

        def construct(self, x: Any) -> Any:
            new = ops.assign(self.count, self.count + x)
            return (x * self.w).sum() + 0.0 * new.sum()

    c = Counter()
    x = gs.Tensor(np.array([0.5, 1.5]))
    np.testing.assert_allclose(c(x).asnumpy(), -0.5)
    np.testing.assert_array_equal(c.count.asnumpy(), [0.5, 1.5])
    loss, (gw,) = ops.value_and_grad(c, None, [c.w])(x)
    np.testing.assert_allclose(gw.asnumpy(), [0.5, 1.5])
    np.testing.assert_array_equal(c.count.asnumpy(), [1.0, 3.0])
    np.testing.assert_array_equal(ops.Assign()(p, gs.Tensor(np.array([7.0, 8.0]))).asnumpy(), [7.0, 8.0])
    np.testing.assert_array_equal(p.asnumpy(), [7.0, 8.0])
    with pytest.raises(TypeError, match="Parameter 'p' of dtype Float32"):
        ops.assign(gs.Parameter(np.zeros(2, np.float32), name="p"), gs.Tensor(np.zeros(2)))
    with pytest.raises(ValueError, match=r"value has shape \(3,\), Parameter 'p' has shape \(2,\)"):
        ops.assign(p, gs.Tensor(np.zeros(3)))
    with pytest.raises(TypeError, match="variable must be a Parameter"):
        ops.assign(gs.Tensor(np.zeros(2)), gs.Tensor(np.zeros(2)))


def test_grad_operation_with_sens_and_inputs_writes_once(where: str) -> None:
    net = make_net(8)
    x = RNG.normal(size=(3, 2, 5, 4))
    weights = gs.ParameterTuple(net.trainable_params())
    expected = no_write_gradients(net, x)
    h = net.conv(gs.Tensor(x)).asnumpy()
    gx, gw = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)(net, weights)(gs.Tensor(x), gs.Tensor(np.array(2.0)))
    for g, e in zip(gw, expected):
        np.testing.assert_allclose(g.asnumpy(), 2.0 * e, rtol=TOL, atol=TOL)
    assert gx[0].shape == x.shape
    mean, var = reference_statistics([h])
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)


def test_a_network_that_reads_values_writes_once_per_call(where: str) -> None:
    """Python control flow on a Tensor value: the function is traced computing values, its writes as before."""
    net = make_net(9)

    def forward(x: Any) -> Any:
        loss = net(x)
        return loss * 2.0 if float(loss) > 0 else loss

    step = ops.value_and_grad(forward, None, net.trainable_params())
    xs = [RNG.normal(size=(2, 2, 4, 4)) for _ in range(2)]
    outs = [net.conv(gs.Tensor(x)).asnumpy() for x in xs]
    for x in xs:
        _, grads = step(gs.Tensor(x))
        for g, e in zip(grads, no_write_gradients(net, x)):
            np.testing.assert_allclose(g.asnumpy(), 2.0 * e, rtol=TOL, atol=TOL)
    mean, var = reference_statistics(outs)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), mean, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), var, rtol=TOL, atol=TOL)


def test_hessian_writes_once_and_streamed_calls_write_in_order(where: str) -> None:
    """hessian (jacfwd of jacrev, a transform of a transform) writes once, as a forward call does; a stream writes
    each batch's statistics as its result arrives, and a batch read ahead saw the statistics from before the batches
    still in flight."""
    net = make_net(10)
    x = gs.Tensor(RNG.normal(size=(2, 2, 3, 3)))
    ops.hessian(net)(x)
    oracle = make_net(10)
    oracle(x)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), oracle.bn.moving_mean.asnumpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), oracle.bn.moving_variance.asnumpy(), rtol=1e-12)
    assert not np.array_equal(net.bn.moving_mean.asnumpy(), np.zeros(3))
    list(value_and_grad_step(net).stream([x, x], in_flight=2))
    # in process one batch at a time: two updates; remotely both batches were read ahead from the initial state
    for _ in range(2 if where == "embedded" else 1):
        value_and_grad_step(oracle)(x)
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), oracle.bn.moving_mean.asnumpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), oracle.bn.moving_variance.asnumpy(), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(net.bn.moving_mean.asnumpy(), np.zeros(3))
