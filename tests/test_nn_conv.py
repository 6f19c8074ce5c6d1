"""Convolution, pooling and batch-norm layers against PyTorch with the same weights in float64: LeNet-5 and a ResNet
basic block (forward and gradients w.r.t. input and every weight to 1e-9), layer arguments and parameter names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nnkit import F64, LeNet5, assert_same, gs_grads, randomize, torch_grads

import gradserve as gs
from gradserve import nn, ops
from gradserve.engine import OPS

RNG = np.random.default_rng(12)


def copy_params(ours: nn.Cell, theirs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy our trainable parameters, in order, into ``theirs``."""
    ps = ours.trainable_params()
    assert len(ps) == len(theirs)
    with torch.no_grad():
        for p, t in zip(ps, theirs):
            t.copy_(torch.tensor(p.asnumpy()).reshape(t.shape))
    return theirs


def torch_lenet() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    t = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, dtype=torch.float64), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5, dtype=torch.float64), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120, dtype=torch.float64), torch.nn.ReLU(), torch.nn.Linear(120, 84, dtype=torch.float64),
        torch.nn.ReLU(), torch.nn.Linear(84, 10, dtype=torch.float64),
    )
    return t, list(t.parameters())


def test_lenet5_matches_torch() -> None:
    gs.set_seed(0)
    net = LeNet5()
    module, params = torch_lenet()
    copy_params(net, params)
    x = RNG.normal(size=(2, 1, 32, 32))
    r = RNG.normal(size=(2, 10))
    assert_same(gs_grads(net, x, r), torch_grads(module, params, x, r))
    assert [p.name for p in net.get_parameters()][:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


class BasicBlock(nn.Cell):
    """A ResNet basic block: conv-bn-relu-conv-bn plus a 1x1 strided projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, pad_mode="pad", padding=1, dtype=F64)
        self.bn1 = nn.BatchNorm2d(4, dtype=F64)
        self.conv2 = nn.Conv2d(4, 4, 3, pad_mode="same", dtype=F64)
        self.bn2 = nn.BatchNorm2d(4, dtype=F64)
        self.down = nn.Conv2d(3, 4, 1, stride=2, pad_mode="valid", dtype=F64)
        self.relu = nn.ReLU()

    def construct(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.down(x))


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        f = torch.float64
        self.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False, dtype=f)
        self.bn1 = torch.nn.BatchNorm2d(4, dtype=f)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding="same", bias=False, dtype=f)
        self.bn2 = torch.nn.BatchNorm2d(4, dtype=f)
        self.down = torch.nn.Conv2d(3, 4, 1, stride=2, bias=False, dtype=f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


@pytest.mark.parametrize("training", [False, True])
def test_resnet_basic_block_matches_torch(training: bool) -> None:
    block = BasicBlock()
    randomize(block, 4)
    for bn in (block.bn1, block.bn2):
        bn.moving_variance.set_data(RNG.uniform(0.5, 2.0, size=4))
        bn.training = training
    tblock = TorchBlock().train(training)
    params = copy_params(block, [tblock.conv1.weight, tblock.bn1.weight, tblock.bn1.bias, tblock.conv2.weight,
                                 tblock.bn2.weight, tblock.bn2.bias, tblock.down.weight])
    for bn, tbn in ((block.bn1, tblock.bn1), (block.bn2, tblock.bn2)):
        with torch.no_grad():
            tbn.running_mean.copy_(torch.tensor(bn.moving_mean.asnumpy()))
            tbn.running_var.copy_(torch.tensor(bn.moving_variance.asnumpy()))
    x = RNG.normal(size=(3, 3, 8, 8))
    r = RNG.normal(size=(3, 4, 4, 4))
    assert_same(gs_grads(block, x, r), torch_grads(tblock, params, x, r))
    assert [p.name for p in block.bn1.get_parameters()] == ["bn1.gamma", "bn1.beta", "bn1.moving_mean", "bn1.moving_variance"]


def test_conv_transpose_and_pools_match_torch() -> None:
    gs.set_seed(1)
    net = nn.SequentialCell(nn.Conv2dTranspose(3, 4, 3, stride=2, pad_mode="pad", padding=1, has_bias=True, dtype=F64),
                            nn.AvgPool2d(2, 2), nn.Tanh(), nn.AdaptiveAvgPool2d((2, 3)))
    tconv = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dtype=torch.float64)
    module = torch.nn.Sequential(tconv, torch.nn.AvgPool2d(2, 2), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d((2, 3)))
    params = copy_params(net, [tconv.weight, tconv.bias])
    x = RNG.normal(size=(2, 3, 5, 5))
    r = RNG.normal(size=(2, 4, 2, 3))
    assert_same(gs_grads(net, x, r), torch_grads(module, params, x, r))


def test_resnet_stem_pools_with_padding_ceil_mode_and_divisor_match_torch(where: str) -> None:
    """The model zoo's ResNet stem MaxPool2d(3, 2, pad_mode="pad", padding=1), a dilated ceil-mode MaxPool2d and padded
    AvgPool2d variants after a convolution: output, input and weight gradients equal torch's, embedded and remote."""
    gs.set_seed(2)
    pools = [
        (nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1), torch.nn.MaxPool2d(3, 2, padding=1)),
        (nn.MaxPool2d(2, (1, 2), pad_mode="pad", padding=(1, 0), dilation=(2, 1), ceil_mode=True),
         torch.nn.MaxPool2d(2, (1, 2), padding=(1, 0), dilation=(2, 1), ceil_mode=True)),
        (nn.AvgPool2d(3, 2, pad_mode="pad", padding=1, ceil_mode=True), torch.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)),
        (nn.AvgPool2d(3, 2, pad_mode="pad", padding=1, ceil_mode=True, count_include_pad=False),
         torch.nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)),
        (nn.AvgPool2d(2, 1, pad_mode="pad", padding=(1, 1), divisor_override=3), torch.nn.AvgPool2d(2, 1, padding=1, divisor_override=3)),
    ]
    for pool, tpool in pools:
        conv = nn.Conv2d(2, 3, 3, pad_mode="valid", has_bias=True, dtype=F64)
        tconv = torch.nn.Conv2d(2, 3, 3, dtype=torch.float64)
        params = copy_params(conv, [tconv.weight, tconv.bias])
        net, module = nn.SequentialCell(conv, pool), torch.nn.Sequential(tconv, tpool)
        x = RNG.normal(size=(2, 2, 9, 10))
        r = RNG.normal(size=tuple(module(torch.tensor(x)).shape))
        assert_same(gs_grads(net, x, r), torch_grads(module, params, x, r))


def test_max_pool2d_returns_plane_indices_as_torch(where: str) -> None:
    """return_indices=True gives (output, argmax), argmax torch's indices into each H * W plane; 3-D input works too."""
    x = RNG.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7).astype(np.float64)
    out, argmax = nn.MaxPool2d(3, 2, pad_mode="pad", padding=1, return_indices=True, ceil_mode=True)(gs.Tensor(x))
    want, wanted = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(out.asnumpy(), want.numpy())
    np.testing.assert_array_equal(argmax.asnumpy(), wanted.numpy())
    out3, argmax3 = nn.MaxPool2d(3, 2, pad_mode="pad", padding=1, return_indices=True, ceil_mode=True)(gs.Tensor(x[0]))
    np.testing.assert_array_equal(out3.asnumpy(), want.numpy()[0])
    np.testing.assert_array_equal(argmax3.asnumpy(), wanted.numpy()[0])


def test_layer_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="padding must be 0 unless pad_mode is 'pad'"):
        nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(ValueError, match="group 2 must divide"):
        nn.Conv2d(3, 4, 3, group=2)
    with pytest.raises(ValueError, match="rank 4"):
        nn.BatchNorm2d(3)(gs.Tensor(np.ones((2, 3), np.float32)))


def test_exact_gelu_matches_torch() -> None:
    x = RNG.normal(size=(3, 4))
    r = RNG.normal(size=(3, 4))
    assert_same(gs_grads(nn.GELU(approximate=False), x, r), torch_grads(torch.nn.GELU(), [], x, r))


def test_dropout_masks_are_reproducible_and_new_each_call() -> None:
    x = gs.Tensor(np.ones((40, 50)))
    assert nn.Dropout(p=0.3)(x).asnumpy().min() == 1.0  # inference (the default mode) is the identity
    gs.set_seed(8)
    drop = nn.Dropout(p=0.3)
    drop.training = True
    first = drop(x).asnumpy()
    kept = first != 0
    assert abs(kept.mean() - 0.7) < 0.03
    np.testing.assert_allclose(first[kept], 1 / 0.7)
    second = drop(x).asnumpy()
    assert (second != first).any()  # each call draws a new mask, as MindSpore's Dropout does
    grad = ops.GradOperation()(drop)(x).asnumpy()  # a gradient call is a call too: the third mask
    assert drop.step == 3
    gs.set_seed(8)
    again = nn.Dropout(p=0.3)
    again.training = True
    for want in (first, second, grad):
        np.testing.assert_array_equal(again(x).asnumpy(), want)


def test_train_one_step_advances_dropout_once_per_step() -> None:
    gs.set_seed(9)
    net = nn.SequentialCell(nn.Dense(4, 4, dtype=F64), nn.Dropout(p=0.5))
    net[1].training = True
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.SGD(net.trainable_params(), 0.0))
    x, y = gs.Tensor(RNG.normal(size=(8, 4))), gs.Tensor(np.zeros((8, 4)))
    first = net(x).asnumpy()
    assert net[1].step == 1
    step(x, y)
    assert net[1].step == 2
    assert not np.array_equal(net(x).asnumpy() != 0, first != 0)


def test_dropout_has_no_parameters_and_stays_out_of_checkpoints(tmp_path: Path) -> None:
    gs.set_seed(10)
    net = nn.SequentialCell(nn.Dense(4, 4, dtype=F64), nn.Dropout(p=0.5), nn.Dense(4, 2, dtype=F64), nn.Dropout(p=0.5))
    assert [name for name, _ in net.parameters_and_names()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    path = tmp_path / "net.ckpt"
    gs.save_checkpoint(net, str(path))
    assert sorted(gs.load_checkpoint(str(path))) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_dropout_masks_are_the_same_embedded_and_remote(where: str) -> None:
    x = gs.Tensor(np.ones((30, 20)))
    gs.set_seed(11)
    drop = nn.Dropout(p=0.4)
    drop.set_train(True)
    masks = []
    for _ in range(2):
        masks.append(drop(x).asnumpy() != 0)
        masks.append(ops.GradOperation()(drop)(x).asnumpy() != 0)
    assert drop.step == 4
    # The reference: the engine's own op, called eagerly with the seeds and the step (the recipe of docs/wire-format.md).
    for k, mask in enumerate(masks):
        expected = OPS["Dropout"].forward(np.ones((30, 20)), np.array(k, np.int64), keep_prob=0.6, Seed0=drop.seed0, Seed1=drop.seed1)
        np.testing.assert_array_equal(mask, expected[1] != 0)
    assert (masks[0] != masks[1]).any()
