"""Optimizer state in checkpoints: save_checkpoint of an optimizer or a TrainOneStepCell holds MindSpore's names
(global_step, moment1.<param>, ...), and a fresh model loaded from it continues training exactly as the
uninterrupted run does."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from safetensors.numpy import load_file

import gradserve as gs
import gradserve.nn as nn
from gradserve import Tensor

OPTIMIZERS: dict[str, tuple[Callable[[Any], nn.Optimizer], tuple[str, ...], tuple[str, ...]]] = {
    # name: (factory, per-parameter prefixes, other entries)
    "SGD": (lambda ps: nn.SGD(ps, 0.05, momentum=0.9, nesterov=True), ("accum", "stat"), ()),
    "SGD-dampening": (lambda ps: nn.SGD(ps, 0.05, momentum=0.8, dampening=0.3, weight_decay=0.01), ("accum", "stat"), ()),
    "Momentum": (lambda ps: nn.Momentum(ps, 0.05, 0.9), ("moments",), ()),
    "Adam": (lambda ps: nn.Adam(ps, [0.02, 0.01, 0.01, 0.005, 0.005, 0.002, 0.001], weight_decay=0.01),
             ("moment1", "moment2"), ("beta1_power", "beta2_power")),
    "AdamWeightDecay": (lambda ps: nn.AdamWeightDecay(ps, 0.01, weight_decay=0.1), ("adam_m", "adam_v"), ()),
}


def make(kind: str) -> tuple[nn.TrainOneStepCell, nn.Optimizer]:
    nn.set_seed(11)
    net = nn.SequentialCell([nn.Dense(5, 7), nn.Tanh(), nn.Dense(7, 2)])
    opt = OPTIMIZERS[kind][0](net.trainable_params())
    return nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt), opt


def data(steps: int) -> list[tuple[Tensor, Tensor]]:
    rng = np.random.default_rng(4)
    return [(Tensor(rng.normal(size=(6, 5)).astype(np.float32)), Tensor(rng.normal(size=(6, 2)).astype(np.float32)))
            for _ in range(steps)]


def weights(cell: nn.Cell) -> list[np.ndarray]:
    return [p.asnumpy() for p in cell.trainable_params()]


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("save", ["train cell", "optimizer"])
def test_resuming_from_a_checkpoint_equals_training_on(tmp_path: Path, kind: str, save: str) -> None:
    batches = data(6)
    straight, _ = make(kind)
    losses = [float(straight(x, y).asnumpy()) for x, y in batches]

    first, opt = make(kind)
    for x, y in batches[:3]:
        first(x, y)
    path = tmp_path / "ckpt.safetensors"
    gs.save_checkpoint(first if save == "train cell" else opt, path)

    resumed, fresh_opt = make(kind)
    not_loaded, unused = gs.load_param_into_net(resumed, gs.load_checkpoint(path))
    assert not_loaded == [] and unused == []
    assert fresh_opt.global_step == 3
    rest = [float(resumed(x, y).asnumpy()) for x, y in batches[3:]]
    assert rest == losses[3:]
    for a, b in zip(weights(resumed), weights(straight), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_the_checkpoint_uses_mindspore_names(tmp_path: Path, kind: str) -> None:
    cell, opt = make(kind)
    x, y = data(1)[0]
    cell(x, y)
    gs.save_checkpoint(cell, tmp_path / "c.safetensors")
    saved = load_file(tmp_path / "c.safetensors")
    names = [p.name for p in opt.parameters]
    prefixes, others = OPTIMIZERS[kind][1:]
    expected = set(names) | {"global_step", *others} | {f"{k}.{n}" for k in prefixes for n in names}
    assert set(saved) == expected
    assert saved["global_step"].dtype == np.int32 and saved["global_step"].tolist() == [1]
    first = opt.parameters[0]
    for k in prefixes:
        assert saved[f"{k}.{first.name}"].shape == first.shape
    if kind == "Adam":  # m after one step from zero: (1 - beta1) g; beta1_power = beta1^step
        np.testing.assert_allclose(saved["beta1_power"], [0.9], rtol=1e-7)
        assert np.abs(saved[f"moment1.{first.name}"]).max() > 0
    if kind.startswith("SGD"):  # stat: ones until the first step, zeros after it
        assert not saved[f"stat.{first.name}"].any()


def test_a_checkpoint_without_optimizer_state_leaves_it_alone(tmp_path: Path) -> None:
    cell, opt = make("Adam")
    gs.save_checkpoint(cell.network, tmp_path / "net.safetensors")
    fresh, fresh_opt = make("Adam")
    not_loaded, _ = gs.load_param_into_net(fresh, gs.load_checkpoint(tmp_path / "net.safetensors"))
    assert "global_step" in not_loaded and any(n.startswith("moment1.") for n in not_loaded)
    assert fresh_opt.global_step == 0
