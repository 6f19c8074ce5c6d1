"""MindSpore 2.x tutorial and model-zoo scripts run as users write them (only the imports changed), embedded and through
a server, with small random data and a few steps: the loss falls, and weights, gradients and losses equal PyTorch's or
finite differences. Each test body is the script; what it checks is written after it."""
# ruff: noqa: UP008  (the scripts call super(Cls, self) as MindSpore's model zoo writes them)
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

import gradserve as ms
import gradserve.common.dtype as mstype
from gradserve import Tensor, nn, ops
from gradserve.common.initializer import Normal, One
from gradserve.ops import composite as C
from gradserve.ops import functional as F
from gradserve.ops import operations as P

from .randomkit import drawn, first_step, site_seeds

RNG = np.random.default_rng(0)


def test_quick_start(where: str, tmp_path: Path) -> None:
    """MindSpore's "Quick Start": Network of Flatten and SequentialCell, value_and_grad(..., has_aux=True), SGD,
    train and test loops, save_checkpoint / load_checkpoint / load_param_into_net."""
    x_all = RNG.random((96, 1, 28, 28), dtype=np.float32)
    y_all = (x_all.reshape(96, -1) @ RNG.standard_normal((784, 10)).astype(np.float32)).argmax(1).astype(np.int32)

    def dataset() -> Any:
        for i in range(0, 96, 32):
            yield Tensor(x_all[i:i + 32]), Tensor(y_all[i:i + 32])

    class Network(nn.Cell):
        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.dense_relu_sequential = nn.SequentialCell(
                nn.Dense(28 * 28, 64), nn.ReLU(), nn.Dense(64, 64), nn.ReLU(), nn.Dense(64, 10))

        def construct(self, x):
            x = self.flatten(x)
            logits = self.dense_relu_sequential(x)
            return logits

    model = Network()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.trainable_params(), 1e-1)

    def forward_fn(data, label):
        logits = model(data)
        loss = loss_fn(logits, label)
        return loss, logits

    grad_fn = ms.value_and_grad(forward_fn, None, optimizer.parameters, has_aux=True)

    def train_step(data, label):
        (loss, _), grads = grad_fn(data, label)
        optimizer(grads)
        return loss

    def test(model, loss_fn):
        model.set_train(False)
        total, test_loss, correct = 0, 0, 0
        for data, label in dataset():
            pred = model(data)
            total += len(data)
            test_loss += loss_fn(pred, label).asnumpy()
            correct += (pred.argmax(1) == label).sum()
        return test_loss / 3, correct / total

    before, _ = test(model, loss_fn)
    model.set_train()
    first = [float(train_step(data, label).asnumpy()) for _ in range(3) for data, label in dataset()]
    after, accuracy = test(model, loss_fn)
    ms.save_checkpoint(model, str(tmp_path / "model.ckpt"))
    model2 = Network()
    param_dict = ms.load_checkpoint(str(tmp_path / "model.ckpt"))
    param_not_load, _ = ms.load_param_into_net(model2, param_dict)
    model2.set_train(False)

    assert after < before and first[-1] < first[0]
    right = sum(int((model(data).asnumpy().argmax(1) == label.asnumpy()).sum()) for data, label in dataset())
    assert isinstance(accuracy, Tensor) and accuracy.asnumpy() == np.float32(right / 96)  # NumPy argmax of its outputs
    assert param_not_load == []
    data, _ = next(dataset())
    np.testing.assert_array_equal(model2(data).asnumpy(), model(data).asnumpy())
    assert str(model).splitlines()[:4] == ["Network<", "  (flatten): Flatten<>", "  (dense_relu_sequential): SequentialCell<",
                                           "    (0): Dense<input_channels=784, output_channels=64, has_bias=True>"]


def test_lenet5_train_one_step_like_torch(where: str) -> None:
    """LeNet5 (model zoo) with WithLossCell + TrainOneStepCell, Momentum with weight decay and a piecewise-constant
    learning rate: the losses and the weights after each step equal torch.optim.SGD's on a twin network."""
    class LeNet5(nn.Cell):
        def __init__(self, num_class=10, num_channel=1):
            super(LeNet5, self).__init__()
            self.conv1 = nn.Conv2d(num_channel, 6, 5, pad_mode='valid')
            self.conv2 = nn.Conv2d(6, 16, 5, pad_mode='valid')
            self.relu = nn.ReLU()
            self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Dense(16 * 5 * 5, 120, weight_init=Normal(0.02))
            self.fc2 = nn.Dense(120, 84, weight_init=Normal(0.02))
            self.fc3 = nn.Dense(84, num_class, weight_init=Normal(0.02))

        def construct(self, x):
            x = self.max_pool2d(self.relu(self.conv1(x)))
            x = self.max_pool2d(self.relu(self.conv2(x)))
            x = self.flatten(x)
            x = self.relu(self.fc1(x))
            x = self.relu(self.fc2(x))
            return self.fc3(x)

    ms.set_seed(1)
    net = LeNet5()
    data = RNG.standard_normal((8, 1, 32, 32)).astype(np.float32)
    label = RNG.integers(0, 10, 8).astype(np.int32)
    lr = nn.piecewise_constant_lr([1, 2, 3], [0.1, 0.05, 0.01])
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
    opt = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9, weight_decay=1e-4)
    train_net = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
    train_net.set_train()

    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
                               torch.nn.Conv2d(6, 16, 5, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(),
                               torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    ours = [p for p in net.trainable_params()]
    theirs = [p for p in twin.parameters()]
    with torch.no_grad():
        for p, t in zip(ours, theirs):
            t.copy_(torch.tensor(p.asnumpy()))
    sgd = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(3):
        got = train_net(Tensor(data), Tensor(label))
        sgd.param_groups[0]["lr"] = lr[step]
        sgd.zero_grad()
        want = torch.nn.functional.cross_entropy(twin(torch.tensor(data)), torch.tensor(label, dtype=torch.long))
        want.backward()
        sgd.step()
        np.testing.assert_allclose(got.asnumpy(), want.item(), rtol=1e-5)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.asnumpy(), t.detach().numpy(), rtol=1e-3, atol=1e-6, err_msg=p.name)


def test_custom_bprop_control_flow_and_jit(where: str) -> None:
    """MindSpore's custom-bprop tutorial, if/while on Tensor values in construct, a CellList loop, and ms.jit."""
    class Net(nn.Cell):
        def __init__(self):
            super(Net, self).__init__()
            self.matmul = ops.MatMul()

        def construct(self, x, y):
            return self.matmul(x, y)

        def bprop(self, x, y, out, dout):
            return x + 1, y + 1

    class GradNet(nn.Cell):
        def __init__(self, net):
            super(GradNet, self).__init__()
            self.net = net
            self.grad_op = ops.GradOperation(get_all=True)

        def construct(self, x, y):
            return self.grad_op(self.net)(x, y)

    x = Tensor([[0.5, 0.6, 0.4], [1.2, 1.3, 1.1]], dtype=mstype.float32)
    y = Tensor([[0.01, 0.3, 1.1], [0.1, 0.2, 1.3], [2.1, 1.2, 3.3]], dtype=mstype.float32)
    dx, dy = GradNet(Net())(x, y)

    class IfNet(nn.Cell):
        def construct(self, x, y):
            if x > y:
                out = x * x
            else:
                out = y * 2
            return out

    class WhileNet(nn.Cell):
        def construct(self, x):
            while x.sum() < 10:
                x = x * 2
            return x.sum()

    class ForNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layers = nn.CellList([nn.Dense(3, 3) for _ in range(3)])

        def construct(self, x):
            for layer in self.layers:
                x = ops.tanh(layer(x))
            return x.sum()

    @ms.jit
    def fn(x, y):
        return ops.sin(x) * y, x

    np.testing.assert_allclose(dx.asnumpy(), x.asnumpy() + 1)
    np.testing.assert_allclose(dy.asnumpy(), y.asnumpy() + 1)
    g = ms.grad(IfNet(), grad_position=(0, 1))(Tensor(3.0), Tensor(2.0))
    assert [float(v.asnumpy()) for v in g] == [6.0, 0.0]
    g = ms.grad(IfNet(), grad_position=(0, 1))(Tensor(2.0), Tensor(3.0))
    assert [float(v.asnumpy()) for v in g] == [0.0, 2.0]
    np.testing.assert_allclose(ms.grad(WhileNet())(Tensor(np.array([1.0, 2.0], np.float32))).asnumpy(), [4.0, 4.0])
    net, x0 = ForNet(), RNG.standard_normal((2, 3)).astype(np.float32)
    fd = np.zeros_like(x0)
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = 1e-2
        fd[i] = (float(net(Tensor(x0 + e)).asnumpy()) - float(net(Tensor(x0 - e)).asnumpy())) / 2e-2  # float32 weights
    np.testing.assert_allclose(ms.grad(net)(Tensor(x0)).asnumpy(), fd, rtol=2e-3, atol=2e-4)
    (gx, gy), aux = ms.grad(fn, grad_position=(0, 1), has_aux=True)(Tensor(np.array([0.3])), Tensor(np.array([2.0])))
    np.testing.assert_allclose([gx.asnumpy()[0], gy.asnumpy()[0]], [2 * np.cos(0.3), np.sin(0.3)], rtol=1e-12)
    assert isinstance(aux, tuple) and float(aux[0].asnumpy()[0]) == 0.3  # MindSpore returns the aux outputs as a tuple


def test_adam_groups_and_cosine_schedule_like_torch(where: str) -> None:
    """nn.Adam over parameter groups (weight decay on weights, its own lr on biases, order_params) with a CosineDecayLR
    schedule and CrossEntropyLoss(label_smoothing): losses and weights equal torch.optim.Adam's."""
    ms.set_seed(2)

    class MLP(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Dense(6, 8, activation='relu')
            self.fc2 = nn.Dense(8, 3)

        def construct(self, x):
            return self.fc2(self.fc1(x))

    net = MLP()
    conv_params = list(filter(lambda x: 'weight' in x.name, net.trainable_params()))
    no_conv_params = list(filter(lambda x: 'weight' not in x.name, net.trainable_params()))
    cosine = nn.CosineDecayLR(min_lr=0.001, max_lr=0.01, decay_steps=4)
    group_params = [{'params': conv_params, 'weight_decay': 0.01}, {'params': no_conv_params, 'lr': 0.005},
                    {'order_params': net.trainable_params()}]
    optim = nn.Adam(group_params, learning_rate=cosine, eps=1e-12)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward_fn(data, label):
        return loss_fn(net(data), label)

    grad_fn = ms.value_and_grad(forward_fn, None, optim.parameters)

    x = RNG.standard_normal((10, 6)).astype(np.float32)
    y = RNG.integers(0, 3, 10).astype(np.int32)
    tw = {p.name: torch.tensor(p.asnumpy(), requires_grad=True) for p in net.trainable_params()}
    adam = torch.optim.Adam([{'params': [tw['fc1.weight'], tw['fc2.weight']], 'weight_decay': 0.01},
                             {'params': [tw['fc1.bias'], tw['fc2.bias']], 'lr': 0.005}], lr=0.01, eps=1e-12)
    losses = []
    for step in range(4):
        loss, grads = grad_fn(Tensor(x), Tensor(y))
        optim(grads)
        adam.param_groups[0]['lr'] = 0.001 + 0.0045 * (1 + np.cos(np.pi * step / 4))
        h = torch.relu(torch.tensor(x) @ tw['fc1.weight'].T + tw['fc1.bias'])
        want = torch.nn.functional.cross_entropy(h @ tw['fc2.weight'].T + tw['fc2.bias'], torch.tensor(y, dtype=torch.long),
                                                 label_smoothing=0.1)
        adam.zero_grad()
        want.backward()
        adam.step()
        np.testing.assert_allclose(loss.asnumpy(), want.item(), rtol=1e-5)
        losses.append(float(loss.asnumpy()))
    assert losses[-1] < losses[0]
    for p in net.trainable_params():
        np.testing.assert_allclose(p.asnumpy(), tw[p.name].detach().numpy(), rtol=1e-4, atol=1e-6, err_msg=p.name)


def test_model_zoo_cells_with_p_f_c_imports(where: str, tmp_path: Path) -> None:
    """Model-zoo style: P/F/C imports, Conv2d + BatchNorm2d + Dropout, a LossBase with OneHot label smoothing, a
    TrainOneStepCell subclass that fills its sens with ops.Fill/DType/Shape and clips the gradients, Momentum over
    filter(...); then a checkpoint of the training cell loaded into a new network gives the same eval outputs."""
    class ConvBNReLU(nn.Cell):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride=1, pad_mode='same', has_bias=False)
            self.bn = nn.BatchNorm2d(cout, momentum=0.9)
            self.relu = nn.ReLU()

        def construct(self, x):
            return self.relu(self.bn(self.conv(x)))

    class SmallNet(nn.Cell):
        def __init__(self, num_classes=4):
            super().__init__()
            self.features = nn.SequentialCell([ConvBNReLU(3, 8), nn.MaxPool2d(2, 2), ConvBNReLU(8, 8)])
            self.reduce_mean = P.ReduceMean(keep_dims=False)
            self.dropout = nn.Dropout(p=0.2)
            self.fc = nn.Dense(8, num_classes)
            self.cast = P.Cast()

        def construct(self, x):
            x = self.reduce_mean(self.features(x), (2, 3))
            return self.cast(self.fc(self.dropout(x)), mstype.float32)

    class CrossEntropySmooth(nn.LossBase):
        def __init__(self, sparse=True, reduction='mean', smooth_factor=0., num_classes=1000):
            super(CrossEntropySmooth, self).__init__()
            self.onehot = P.OneHot()
            self.sparse = sparse
            self.on_value = Tensor(1.0 - smooth_factor, mstype.float32)
            self.off_value = Tensor(1.0 * smooth_factor / (num_classes - 1), mstype.float32)
            self.ce = nn.SoftmaxCrossEntropyWithLogits(reduction=reduction)

        def construct(self, logit, label):
            if self.sparse:
                label = self.onehot(label, F.shape(logit)[1], self.on_value, self.off_value)
            return self.ce(logit, label)

    class TrainOneStepWithClip(nn.TrainOneStepCell):
        def construct(self, *inputs):
            loss = self.network(*inputs)
            sens = P.Fill()(P.DType()(loss), P.Shape()(loss), self.sens)
            grads = self.grad(self.network, self.weights)(*inputs, sens)
            grads = C.clip_by_global_norm(grads, 1.0)
            grads = self.grad_reducer(grads)
            return F.depend(loss, self.optimizer(grads))

    ms.set_seed(7)
    net = SmallNet()
    loss = CrossEntropySmooth(sparse=True, reduction='mean', smooth_factor=0.1, num_classes=4)
    opt = nn.Momentum(filter(lambda x: x.requires_grad, net.get_parameters()), nn.piecewise_constant_lr([3, 6], [0.05, 0.01]),
                      0.9, weight_decay=1e-4)
    train_net = TrainOneStepWithClip(nn.WithLossCell(net, loss), opt)
    train_net.set_train()
    x = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = RNG.integers(0, 4, 8).astype(np.int32)
    losses = [float(train_net(Tensor(x), Tensor(y)).asnumpy()) for _ in range(5)]
    ms.save_checkpoint(train_net, str(tmp_path / "zoo.ckpt"))
    net2 = SmallNet()
    not_loaded, _ = ms.load_param_into_net(net2, ms.load_checkpoint(str(tmp_path / "zoo.ckpt")))
    net.set_train(False)
    net2.set_train(False)

    assert losses[-1] < losses[0] and not_loaded == []
    assert np.abs(net.features[0].bn.moving_mean.asnumpy()).sum() > 0
    np.testing.assert_array_equal(net2(Tensor(x)).asnumpy(), net(Tensor(x)).asnumpy())
    np.testing.assert_array_equal(net(Tensor(x)).asnumpy(), net(Tensor(x)).asnumpy())  # eval: no dropout mask


def test_tensor_tutorial(where: str) -> None:
    """MindSpore's "Tensor" tutorial: construction (init=One()), attributes, indexing, arithmetic with % and //,
    cat/stack, and a gradient through them against PyTorch."""
    tensor1 = ms.Tensor(shape=(2, 2), dtype=ms.float32, init=One())
    x = Tensor(np.array([[1, 2], [3, 4]]), ms.int32)
    tensor = Tensor(np.array([[0, 1], [2, 3]]).astype(np.float32))
    a = Tensor(np.array([1, 2, 3]), ms.float32)
    b = Tensor(np.array([4, 5, 6]), ms.float32)
    data1 = Tensor(np.array([[0, 1], [2, 3]]).astype(np.float32))
    data2 = Tensor(np.array([[4, 5], [6, 7]]).astype(np.float32))

    assert tensor1.asnumpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert (x.shape, x.dtype, x.itemsize, x.nbytes, x.ndim, x.size, x.strides) == ((2, 2), ms.int32, 4, 16, 2, 4, (8, 4))
    assert tensor[0].tolist() == [0.0, 1.0] and float(tensor[1, 1].asnumpy()) == 3.0
    assert tensor[:, -1].tolist() == [1.0, 3.0] and tensor[..., 0].tolist() == [0.0, 2.0]
    assert (a % b).tolist() == [1.0, 2.0, 3.0] and (b // a).tolist() == [4.0, 2.0, 2.0]
    assert ops.cat((data1, data2), axis=0).shape == (4, 2) and ops.stack([data1, data2]).shape == (2, 2, 2)
    np.testing.assert_array_equal(data1.mul(data2).asnumpy(), [[0, 5], [12, 21]])

    def f(p, q):
        return (ops.stack([p, q]) % 1.5 * (p // 0.7 + 1)).sum() + ops.cat((p, q), 1).std()

    u, v = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    got = ms.grad(f, grad_position=(0, 1))(Tensor(u), Tensor(v))
    tu, tv = torch.tensor(u, requires_grad=True), torch.tensor(v, requires_grad=True)
    (torch.remainder(torch.stack([tu, tv]), 1.5) * (torch.div(tu, 0.7, rounding_mode="floor") + 1)).sum().add(
        torch.cat((tu, tv), 1).std(unbiased=False)).backward()
    np.testing.assert_allclose(got[0].asnumpy(), tu.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got[1].asnumpy(), tv.grad.numpy(), rtol=1e-10)


def test_autograd_tutorial(where: str) -> None:
    """MindSpore's "Automatic Differentiation" tutorial: ms.grad over (w, b) of a binary cross-entropy with logits,
    has_aux, stop_gradient, and value_and_grad over a Network's weights with nn.BCEWithLogitsLoss; against PyTorch."""
    x = ops.ones(5, ms.float32)  # input tensor
    y = ops.zeros(3, ms.float32)  # expected output
    w = ms.Parameter(Tensor(RNG.standard_normal((5, 3)), ms.float32), name='w')  # weight
    b = ms.Parameter(Tensor(RNG.standard_normal((3,)), ms.float32), name='b')  # bias

    def function(x, y, w, b):
        z = ops.matmul(x, w) + b
        loss = ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))
        return loss

    grad_fn = ms.grad(function, (2, 3))
    grads = grad_fn(x, y, w, b)

    def function_with_logits(x, y, w, b):
        z = ops.matmul(x, w) + b
        loss = ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))
        return loss, z

    aux_grads, (z,) = ms.grad(function_with_logits, (2, 3), has_aux=True)(x, y, w, b)

    def function_stop_gradient(x, y, w, b):
        z = ops.matmul(x, w) + b
        loss = ops.binary_cross_entropy_with_logits(z, y, ops.ones_like(z), ops.ones_like(z))
        return loss, ops.stop_gradient(z)

    stop_grads = ms.grad(function_stop_gradient, (2, 3))(x, y, w, b)

    class Network(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = w
            self.b = b

        def construct(self, x):
            z = ops.matmul(x, self.w) + self.b
            return z

    model = Network()
    loss_fn = nn.BCEWithLogitsLoss()

    def forward_fn(x, y):
        z = model(x)
        loss = loss_fn(z, y)
        return loss

    loss, net_grads = ms.value_and_grad(forward_fn, None, weights=model.trainable_params())(x, y)

    tw = torch.tensor(w.asnumpy(), requires_grad=True)
    tb = torch.tensor(b.asnumpy(), requires_grad=True)
    tz = torch.ones(5) @ tw + tb
    want = torch.nn.functional.binary_cross_entropy_with_logits(tz, torch.zeros(3))
    want.backward()
    for got in (grads, aux_grads, stop_grads, net_grads):
        np.testing.assert_allclose(got[0].asnumpy(), tw.grad.numpy(), rtol=1e-5)
        np.testing.assert_allclose(got[1].asnumpy(), tb.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(loss.asnumpy(), want.item(), rtol=1e-6)
    np.testing.assert_allclose(z.asnumpy(), tz.detach().numpy(), rtol=1e-6)
    assert len(stop_grads) == 2  # the stop_gradient output adds nothing: grads of the first output only


def test_dcgan_two_optimizers(where: str) -> None:
    """MindSpore's DCGAN tutorial, scaled down: Conv2dTranspose/BatchNorm2d generator, Conv2d/LeakyReLU discriminator,
    two Adam optimizers renamed with update_parameters_name, two value_and_grad functions (one has_aux) inside an
    ms.jit step; generator_forward draws z with ops.standard_normal inside the traced function, as the tutorial does,
    a new z at each step. After training, both losses and all gradients equal a PyTorch twin's at the trained weights,
    fed the z that call drew (the StandardNormal op's values at the call site's seeds and step)."""
    ms.set_seed(3)
    nz, ngf, ndf = 8, 4, 4

    class Generator(nn.Cell):
        def __init__(self):
            super(Generator, self).__init__()
            self.generator = nn.SequentialCell(
                nn.Conv2dTranspose(nz, ngf * 2, 4, 1, 'valid', weight_init=Normal(0.02)),
                nn.BatchNorm2d(ngf * 2),
                nn.ReLU(),
                nn.Conv2dTranspose(ngf * 2, 1, 4, 2, 'pad', 1, weight_init=Normal(0.02)),
                nn.Tanh())

        def construct(self, x):
            return self.generator(x)

    class Discriminator(nn.Cell):
        def __init__(self):
            super(Discriminator, self).__init__()
            self.discriminator = nn.SequentialCell(
                nn.Conv2d(1, ndf, 4, 2, 'pad', 1, weight_init=Normal(0.02)),
                nn.LeakyReLU(0.2),
                nn.Conv2d(ndf, 1, 4, 1, 'valid', weight_init=Normal(0.02)))
            self.adv_layer = nn.Sigmoid()

        def construct(self, x):
            out = self.discriminator(x)
            out = out.reshape(out.shape[0], -1)
            return self.adv_layer(out)

    generator, discriminator = Generator(), Discriminator()
    adversarial_loss = nn.BCELoss(reduction='mean')
    optimizer_D = nn.Adam(discriminator.trainable_params(), learning_rate=2e-3, beta1=0.5)
    optimizer_G = nn.Adam(generator.trainable_params(), learning_rate=2e-3, beta1=0.5)
    optimizer_G.update_parameters_name('optim_g.')
    optimizer_D.update_parameters_name('optim_d.')

    def generator_forward(real_imgs, valid):
        z = ops.standard_normal((real_imgs.shape[0], nz, 1, 1))
        gen_imgs = generator(z)
        g_loss = adversarial_loss(discriminator(gen_imgs), valid)
        return g_loss, gen_imgs

    def discriminator_forward(real_imgs, gen_imgs, valid, fake):
        real_loss = adversarial_loss(discriminator(real_imgs), valid)
        fake_loss = adversarial_loss(discriminator(gen_imgs), fake)
        return (real_loss + fake_loss) / 2

    grad_generator_fn = ms.value_and_grad(generator_forward, None, optimizer_G.parameters, has_aux=True)
    grad_discriminator_fn = ms.value_and_grad(discriminator_forward, None, optimizer_D.parameters)

    @ms.jit
    def train_step(imgs):
        valid = ops.ones((imgs.shape[0], 1), ms.float32)
        fake = ops.zeros((imgs.shape[0], 1), ms.float32)
        (g_loss, gen_imgs), g_grads = grad_generator_fn(imgs, valid)
        optimizer_G(g_grads)
        d_loss, d_grads = grad_discriminator_fn(imgs, gen_imgs, valid, fake)
        optimizer_D(d_grads)
        return g_loss, d_loss, gen_imgs

    generator.set_train()
    discriminator.set_train()
    imgs = Tensor(RNG.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32))
    d_losses, outputs = [], []
    for _ in range(3):
        g_loss, d_loss, gen_imgs = train_step(imgs)
        d_losses.append(float(d_loss.asnumpy()))
        outputs.append(gen_imgs.asnumpy())
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])  # a new z each step

    assert gen_imgs.shape == (4, 1, 8, 8) and np.isfinite(float(g_loss.asnumpy()))
    assert d_losses[2] < d_losses[1] < d_losses[0]
    # MindSpore's update_parameters_name renames every Parameter the optimizer holds, the network's included
    assert [p.name for p in discriminator.trainable_params()] == ['optim_d.discriminator.0.weight', 'optim_d.discriminator.2.weight']

    # the gradients at the trained weights against a PyTorch twin (float32; BatchNorm on the batch's statistics)
    valid, fake = ops.ones((4, 1), ms.float32), ops.zeros((4, 1), ms.float32)
    (g_now, gen_now), g_grads = grad_generator_fn(imgs, valid)
    # generator_forward's call site, one step per train_step since set_seed(3): this call draws the fourth
    z_now = drawn("StandardNormal", (4, nz, 1, 1), site_seeds(test_dcgan_two_optimizers, "z = ops.standard_normal(", "generator_forward"),
                  first_step(3) + 3)
    d_now, d_grads = grad_discriminator_fn(imgs, gen_now, valid, fake)
    g1, gamma, beta, g2 = (torch.tensor(p.asnumpy(), requires_grad=True) for p in generator.trainable_params())
    d1, d2 = (torch.tensor(p.asnumpy(), requires_grad=True) for p in discriminator.trainable_params())
    tF = torch.nn.functional

    def t_generator(z):
        h = tF.relu(tF.batch_norm(tF.conv_transpose2d(z, g1), None, None, gamma, beta, training=True, eps=1e-5))
        return torch.tanh(tF.conv_transpose2d(h, g2, stride=2, padding=1))

    def t_discriminator(x):
        return torch.sigmoid(tF.conv2d(tF.leaky_relu(tF.conv2d(x, d1, stride=2, padding=1), 0.2), d2).reshape(4, -1))

    t_gen = t_generator(torch.tensor(z_now))
    t_g = tF.binary_cross_entropy(t_discriminator(t_gen), torch.ones(4, 1))
    t_g.backward()
    t_d = (tF.binary_cross_entropy(t_discriminator(torch.tensor(imgs.asnumpy())), torch.ones(4, 1))
           + tF.binary_cross_entropy(t_discriminator(t_gen.detach()), torch.zeros(4, 1))) / 2
    d1.grad = d2.grad = None
    t_d.backward()
    np.testing.assert_allclose(gen_now.asnumpy(), t_gen.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([float(g_now.asnumpy()), float(d_now.asnumpy())], [t_g.item(), t_d.item()], rtol=1e-5)
    for got, want in zip(list(g_grads) + list(d_grads), (g1, gamma, beta, g2, d1, d2)):
        np.testing.assert_allclose(got.asnumpy(), want.grad.numpy(), rtol=1e-4, atol=1e-8)
