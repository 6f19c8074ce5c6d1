"""Training cells and checkpoints: TrainOneStepCell steps equal PyTorch's (float64, SGD with momentum, with sens and
with gradient clipping), WithEvalCell's outputs, clip_by_global_norm, and safetensors checkpoints whose round trip
gives identical outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import gradserve as gs
from gradserve import nn
from gradserve.ops import clip_by_global_norm

RNG = np.random.default_rng(9)
X = RNG.normal(size=(8, 3))
Y = RNG.normal(size=(8, 2))


def make_net(seed: int) -> nn.SequentialCell:
    gs.set_seed(seed)
    return nn.SequentialCell(nn.Dense(3, 5, activation="tanh", dtype=gs.float64), nn.Dense(5, 2, dtype=gs.float64))


def torch_copy(net: nn.SequentialCell) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    layers = []
    for dense in (net[0], net[1]):
        lin = torch.nn.Linear(dense.in_channels, dense.out_channels, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(dense.weight.asnumpy()))
            lin.bias.copy_(torch.tensor(dense.bias.asnumpy()))
        layers.append(lin)
    module = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])
    return module, list(module.parameters())


class ClippedStep(nn.TrainOneStepCell):
    """MindSpore's way to clip: override construct and clip the gradients before the optimizer."""

    def construct(self, *inputs: Any) -> Any:
        loss = self.network(*inputs)
        grads = self.grad(self.network, self.weights)(*inputs, self.sens_like(loss))
        self.optimizer(clip_by_global_norm(grads, 0.5))
        return loss


@pytest.mark.parametrize("cell, sens, clip", [(nn.TrainOneStepCell, None, None), (nn.TrainOneStepCell, 3.0, None),
                                              (ClippedStep, None, 0.5)])
def test_train_one_step_matches_torch(cell: type, sens: float | None, clip: float | None) -> None:
    net = make_net(1)
    module, params = torch_copy(net)
    opt = nn.SGD(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    step = cell(nn.WithLossCell(net, nn.MSELoss()), opt, sens)
    topt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = step(gs.Tensor(X), gs.Tensor(Y))
        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(module(torch.tensor(X)), torch.tensor(Y))
        (tloss * (sens or 1.0)).backward()
        if clip is not None:
            norm = torch.sqrt(sum((t.grad * t.grad).sum() for t in params))
            for t in params:  # MindSpore's rule: scale by clip / max(norm, clip) (torch adds 1e-6 to the norm)
                t.grad *= clip / torch.clamp(norm, min=clip)
        topt.step()
        np.testing.assert_allclose(loss.asnumpy(), tloss.item(), rtol=1e-9, atol=1e-12)
        losses.append(float(loss.asnumpy()))
        for p, t in zip(net.trainable_params(), params):
            np.testing.assert_allclose(p.asnumpy(), t.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert losses[-1] < losses[0]


def test_clip_by_global_norm_scales_only_when_the_norm_is_larger() -> None:
    grads = [RNG.normal(size=(3, 4)), RNG.normal(size=(5,))]
    norm = np.sqrt(sum((g * g).sum() for g in grads))
    clipped = clip_by_global_norm(tuple(gs.Tensor(g) for g in grads), norm / 2)
    for c, g in zip(clipped, grads):
        np.testing.assert_allclose(c.asnumpy(), g / 2, rtol=1e-12)
    kept = clip_by_global_norm(tuple(gs.Tensor(g) for g in grads), norm * 2)
    for c, g in zip(kept, grads):
        np.testing.assert_allclose(c.asnumpy(), g, rtol=1e-12)


def test_with_eval_cell_returns_loss_outputs_and_label() -> None:
    net = make_net(2)
    loss, out, label = nn.WithEvalCell(net, nn.MSELoss())(gs.Tensor(X), gs.Tensor(Y))
    module, _ = torch_copy(net)
    expected = module(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(loss.asnumpy(), ((expected - Y) ** 2).mean(), rtol=1e-12)
    np.testing.assert_array_equal(label.asnumpy(), Y)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    trained = make_net(3)
    step = nn.TrainOneStepCell(nn.WithLossCell(trained, nn.MSELoss()), nn.Adam(trained.trainable_params(), 0.01))
    for _ in range(3):
        step(gs.Tensor(X), gs.Tensor(Y))
    path = tmp_path / "net.safetensors"
    gs.save_checkpoint(trained, path, append_dict={"epoch": np.array(3)})
    stored = load_file(str(path))
    assert sorted(stored) == ["0.bias", "0.weight", "1.bias", "1.weight", "epoch"]
    fresh = make_net(4)
    assert not np.array_equal(fresh(gs.Tensor(X)).asnumpy(), trained(gs.Tensor(X)).asnumpy())
    params = gs.load_checkpoint(path)
    assert isinstance(params["0.weight"], gs.Parameter) and params["0.weight"].name == "0.weight"
    not_loaded, unused = gs.load_param_into_net(fresh, params)
    assert (not_loaded, unused) == ([], ["epoch"])
    np.testing.assert_array_equal(fresh(gs.Tensor(X)).asnumpy(), trained(gs.Tensor(X)).asnumpy())
    for p in fresh.get_parameters():
        assert p.dtype == gs.float64


def test_checkpoint_filters_and_partial_loads(tmp_path: Path) -> None:
    net = make_net(5)
    path = tmp_path / "part.safetensors"
    gs.save_checkpoint([{"name": p.name, "data": p} for p in net.get_parameters()], path)
    params = gs.load_checkpoint(path, filter_prefix="1.")
    assert sorted(params) == ["0.bias", "0.weight"]
    other = make_net(6)
    kept = other[1].weight.asnumpy().copy()
    gs.load_checkpoint(path, net=other, filter_prefix="1.")
    np.testing.assert_array_equal(other[0].weight.asnumpy(), net[0].weight.asnumpy())
    np.testing.assert_array_equal(other[1].weight.asnumpy(), kept)
    assert gs.load_param_into_net(other, params)[0] == ["1.weight", "1.bias"]


def test_save_checkpoint_takes_mindspore_s_positional_arguments(tmp_path: Path) -> None:
    """MindSpore's order is (save_obj, ckpt_file_name, integrated_save, async_save, append_dict, enc_key, enc_mode,
    choice_func, ...): a script passing integrated_save positionally, or choice_func, saves what MindSpore saves."""
    net = make_net(8)
    path = tmp_path / "pos.safetensors"
    gs.save_checkpoint(net, path, True, False, {"epoch": 2}, None, "AES-GCM", lambda name: name.startswith("0."))
    assert sorted(load_file(str(path))) == ["0.bias", "0.weight", "epoch"]
    np.testing.assert_array_equal(load_file(str(path))["0.weight"], net[0].weight.asnumpy())
    with pytest.raises(TypeError, match="integrated_save must be a bool"):
        gs.save_checkpoint(net, path, {"epoch": 2})
    with pytest.raises(NotImplementedError, match="enc_key is not supported"):
        gs.save_checkpoint(net, path, enc_key=b"0123456789abcdef")


def test_checkpoint_errors_name_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    gs.save_checkpoint({"0.weight": gs.Tensor(np.zeros((2, 2)))}, path)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(5, 3\) in the net but \(2, 2\)"):
        gs.load_checkpoint(path, net=make_net(7))
    with pytest.raises(ValueError, match="only format='safetensors'"):
        gs.save_checkpoint(make_net(7), path, format="ckpt")
