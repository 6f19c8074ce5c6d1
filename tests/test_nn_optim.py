"""Optimizers against torch.optim step for step in float32 (to 1e-6) on the same gradient sequence, parameter groups,
per-step learning-rate lists and MindSpore's schedules; AdamWeightDecay (which has no PyTorch twin: no bias
correction) against its documented update in float64."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch

import gradserve as gs
from gradserve import nn

STEPS = 8
SHAPES = [(3, 4), (4,), (2, 2, 3)]
NAMES = ["dense.weight", "dense.bias", "norm.gamma"]


def make_params(dtype: Any = np.float32) -> tuple[list[gs.Parameter], list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype(dtype) for s in SHAPES]
    ours = [gs.Parameter(v, name=n) for v, n in zip(values, NAMES)]
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    return ours, theirs


def gradient_sequence(dtype: Any = np.float32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [[rng.normal(size=s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]


def run_both(make_ours: Callable[[list[gs.Parameter]], nn.Optimizer],
             make_theirs: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
             lr_per_step: list[float] | None = None, loss_scale: float = 1.0) -> None:
    ours, theirs = make_params()
    opt, topt = make_ours(ours), make_theirs(theirs)
    for step, grads in enumerate(gradient_sequence()):
        opt(tuple(gs.Tensor(g * np.float32(loss_scale)) for g in grads))
        if lr_per_step is not None:
            for group in topt.param_groups:
                group["lr"] = lr_per_step[min(step, len(lr_per_step) - 1)]
        for t, g in zip(theirs, grads):
            t.grad = torch.tensor(g)
        topt.step()
        for p, t in zip(ours, theirs):
            assert p.dtype == gs.float32
            np.testing.assert_allclose(p.asnumpy(), t.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=f"{p.name} step {step}")
    assert opt.global_step == STEPS


@pytest.mark.parametrize("kw", [
    {}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3}, {"momentum": 0.8, "nesterov": True},
    {"momentum": 0.9, "weight_decay": 0.01},
])
def test_sgd_matches_torch(kw: dict[str, Any]) -> None:
    # with weight decay one group is passed, so norm.gamma is decayed too, as torch decays every parameter
    if "weight_decay" in kw:
        run_both(lambda ps: nn.SGD([{"params": ps}], learning_rate=0.05, **kw),
                 lambda ts: torch.optim.SGD(ts, lr=0.05, **kw))
    else:
        run_both(lambda ps: nn.SGD(ps, learning_rate=0.05, **kw), lambda ts: torch.optim.SGD(ts, lr=0.05, **kw))


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_torch_sgd_with_momentum(nesterov: bool) -> None:
    run_both(lambda ps: nn.Momentum(ps, 0.03, 0.9, use_nesterov=nesterov),
             lambda ts: torch.optim.SGD(ts, lr=0.03, momentum=0.9, nesterov=nesterov))


@pytest.mark.parametrize("kw, tkw", [
    ({}, {}),
    ({"beta1": 0.8, "beta2": 0.99}, {"betas": (0.8, 0.99)}),
])
def test_adam_matches_torch(kw: dict[str, Any], tkw: dict[str, Any]) -> None:
    run_both(lambda ps: nn.Adam(ps, learning_rate=0.01, **kw), lambda ts: torch.optim.Adam(ts, lr=0.01, **tkw))


def test_adam_weight_decay_on_the_gradient_matches_torch_adam() -> None:
    run_both(lambda ps: nn.Adam([{"params": ps}], learning_rate=0.01, weight_decay=0.1),
             lambda ts: torch.optim.Adam(ts, lr=0.01, weight_decay=0.1))


def test_loss_scale_divides_the_gradients() -> None:
    run_both(lambda ps: nn.Adam(ps, learning_rate=0.01, loss_scale=8.0), lambda ts: torch.optim.Adam(ts, lr=0.01), loss_scale=8.0)


def test_default_weight_decay_skips_beta_and_gamma() -> None:
    """Without groups MindSpore decays only parameters whose names hold neither 'beta' nor 'gamma'."""
    def theirs(ts: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD([{"params": ts[:2], "weight_decay": 0.2}, {"params": ts[2:], "weight_decay": 0.0}],
                               lr=0.1, momentum=0.5)
    run_both(lambda ps: nn.SGD(ps, learning_rate=0.1, momentum=0.5, weight_decay=0.2), theirs)


def test_parameter_groups_with_their_own_lr_and_weight_decay() -> None:
    def ours(ps: list[gs.Parameter]) -> nn.Optimizer:
        return nn.Adam([{"params": ps[:1], "lr": 0.05, "weight_decay": 0.1}, {"params": ps[1:]}], learning_rate=0.01)

    def theirs(ts: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": ts[:1], "lr": 0.05, "weight_decay": 0.1}, {"params": ts[1:]}], lr=0.01)
    run_both(ours, theirs)


def test_learning_rate_list_and_schedules() -> None:
    lrs = nn.exponential_decay_lr(0.1, 0.5, STEPS - 2, 2, 1)
    run_both(lambda ps: nn.SGD(ps, learning_rate=lrs, momentum=0.9), lambda ts: torch.optim.SGD(ts, lr=lrs[0], momentum=0.9),
             lr_per_step=lrs)
    cos = nn.cosine_decay_lr(0.001, 0.02, STEPS, 2, 4)
    run_both(lambda ps: nn.Adam(ps, learning_rate=gs.Tensor(np.array(cos, np.float32))),
             lambda ts: torch.optim.Adam(ts, lr=cos[0]), lr_per_step=[float(np.float32(v)) for v in cos])


def test_schedules_equal_mindspore_documented_examples() -> None:
    np.testing.assert_allclose(nn.cosine_decay_lr(0.01, 0.1, 6, 2, 2), [0.1, 0.1, 0.055, 0.055, 0.01, 0.01])
    np.testing.assert_allclose(nn.exponential_decay_lr(0.1, 0.9, 6, 2, 1), [0.1, 0.1, 0.09, 0.09, 0.081, 0.081])
    np.testing.assert_allclose(nn.exponential_decay_lr(0.1, 0.9, 6, 2, 2, True), [0.1, 0.1, 0.1, 0.1, 0.09, 0.09])
    assert nn.piecewise_constant_lr([2, 5, 6], [0.1, 0.05, 0.01]) == [0.1, 0.1, 0.05, 0.05, 0.05, 0.01]
    np.testing.assert_allclose(nn.natural_exp_decay_lr(0.1, 0.9, 6, 2, 2, True), [0.1] * 4 + [0.016529888822158657] * 2)
    np.testing.assert_allclose(nn.inverse_decay_lr(0.1, 0.5, 6, 1, 1, True),
                               [0.1, 0.06666666666666667, 0.05, 0.04, 0.03333333333333333, 0.028571428571428574])
    np.testing.assert_allclose(nn.polynomial_decay_lr(0.1, 0.01, 6, 2, 2, 0.5), [0.1, 0.1, 0.07363961030678928, 0.07363961030678928, 0.01, 0.01])
    assert nn.warmup_lr(0.1, 6, 2, 2) == [0.0, 0.0, 0.05, 0.05, 0.1, 0.1]


def test_schedules_hold_after_their_decay_epochs() -> None:
    """MindSpore's cosine, polynomial and warm-up lists stop at decay_epoch (cosine stays at min_lr; it used to rise
    again here, cos past pi); polynomial_decay_lr's update_decay_epoch restarts the decay instead."""
    want = [0.01 + 0.045 * (1 + math.cos(math.pi * min(i // 2, 2) / 2)) for i in range(10)]
    np.testing.assert_allclose(nn.cosine_decay_lr(0.01, 0.1, 10, 2, 2), want)
    assert nn.cosine_decay_lr(0.01, 0.1, 10, 2, 2)[-4:] == [0.01] * 4
    np.testing.assert_allclose(nn.polynomial_decay_lr(0.1, 0.01, 8, 1, 2, 1.0), [0.1, 0.055, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    decay = [0.09 * (1 - e / (2 * max(math.ceil(e / 2), 1))) + 0.01 for e in range(6)]
    np.testing.assert_allclose(nn.polynomial_decay_lr(0.1, 0.01, 6, 1, 2, 1.0, update_decay_epoch=True), decay)
    assert nn.warmup_lr(0.2, 5, 1, 2) == [0.0, 0.1, 0.2, 0.2, 0.2]
    np.testing.assert_allclose(nn.natural_exp_decay_lr(0.1, 0.5, 4, 1, 3), [0.1 * math.exp(-0.5 * e) for e in range(4)])
    np.testing.assert_allclose(nn.inverse_decay_lr(0.1, 0.5, 4, 2, 1), [0.1, 0.1, 0.1 / 1.5, 0.1 / 1.5])


def test_get_lr_follows_the_steps() -> None:
    ps, _ = make_params()
    opt = nn.SGD(ps, learning_rate=[0.3, 0.2, 0.1])
    seen = []
    for grads in gradient_sequence()[:4]:
        seen.append(opt.get_lr())
        opt(grads)
    assert seen == [0.3, 0.2, 0.1, 0.1]


def test_adam_eps_is_added_to_sqrt_v_as_mindspore_documents() -> None:
    """MindSpore's Adam: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps); PyTorch adds eps after dividing
    sqrt(v) by sqrt(1 - b2^t), which a large eps makes visible."""
    ps, _ = make_params(np.float64)
    opt = nn.Adam(ps, learning_rate=0.01, eps=1e-2)
    w = [p.asnumpy().copy() for p in ps]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(gradient_sequence(np.float64), start=1):
        opt(tuple(gs.Tensor(g) for g in grads))
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            w[i] = w[i] - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m[i] / (np.sqrt(v[i]) + 1e-2)
    for p, x in zip(ps, w):
        np.testing.assert_allclose(p.asnumpy(), x, rtol=1e-12, atol=1e-12)


def test_adam_weight_decay_follows_its_documented_update() -> None:
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; w -= lr (m / (sqrt(v) + eps) + wd w), decay skipping gamma."""
    ps, _ = make_params(np.float64)
    opt = nn.AdamWeightDecay(ps, learning_rate=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)
    w = [p.asnumpy().copy() for p in ps]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for grads in gradient_sequence(np.float64):
        opt(tuple(gs.Tensor(g) for g in grads))
        for i, g in enumerate(grads):
            m[i] = 0.8 * m[i] + 0.2 * g
            v[i] = 0.95 * v[i] + 0.05 * g * g
            wd = 0.0 if "gamma" in NAMES[i] else 0.1
            w[i] = w[i] - 0.01 * (m[i] / (np.sqrt(v[i]) + 1e-6) + wd * w[i])
    for p, x in zip(ps, w):
        np.testing.assert_allclose(p.asnumpy(), x, rtol=1e-12, atol=1e-12)


def test_bad_optimizer_arguments_are_named() -> None:
    ps, _ = make_params()
    with pytest.raises(ValueError, match="nesterov needs a positive momentum"):
        nn.SGD(ps, nesterov=True)
    with pytest.raises(ValueError, match="appears twice"):
        nn.SGD([ps[0], ps[0]])
    with pytest.raises(ValueError, match="got 2 gradients for 3 parameters"):
        nn.SGD(ps)(gradient_sequence()[0][:2])
    with pytest.raises(ValueError, match=r"'dense.bias' has shape \(3,\)"):
        nn.SGD(ps)([np.zeros(s, np.float32) for s in [(3, 4), (3,), (2, 2, 3)]])


def test_a_step_keeps_the_trace_epoch_and_a_function_reading_the_step_sees_it() -> None:
    """A step counts in place (no Cell attribute assigned, so no gradient call re-walks its network); a function whose
    closure reaches the optimizer still reads each new count, and the setter (checkpoint loading) sets it."""
    from gradserve.client import epoch
    w = gs.Parameter(np.array([2.0], np.float32), name="w")
    opt = nn.SGD([w], learning_rate=0.5)
    grad_fn = gs.value_and_grad(lambda x: (x * w).sum() * float(opt.global_step + 1), None, opt.parameters)
    x = gs.Tensor(np.array([3.0], np.float32))
    for step in range(3):
        at = epoch.value
        loss, (g,) = grad_fn(x)
        w_now = 2.0 - 0.5 * sum(3.0 * (k + 1) for k in range(step))
        assert float(loss.asnumpy()) == pytest.approx(3.0 * w_now * (step + 1))
        np.testing.assert_allclose(g.asnumpy(), [3.0 * (step + 1)])
        opt((g,))
        assert opt.global_step == step + 1 and epoch.value == at
    opt.global_step = 7
    assert opt.global_step == 7 and opt.state_arrays()["global_step"].tolist() == [7]


@pytest.mark.parametrize("call, error, match", [
    (lambda: nn.exponential_decay_lr(1, 0.9, 6, 2, 1), TypeError, "exponential_decay_lr: learning_rate must be a float, got int 1"),
    (lambda: nn.natural_exp_decay_lr(0.1, -0.9, 6, 2, 1), ValueError, "natural_exp_decay_lr: decay_rate must be positive"),
    (lambda: nn.inverse_decay_lr(0.1, 0.5, 6, 1, 1, 1), TypeError, "inverse_decay_lr: is_stair must be a bool, got int"),
    (lambda: nn.inverse_decay_lr(0.1, 0.5, 6.0, 1, 1), TypeError, "inverse_decay_lr: total_step must be an int, got float"),
    (lambda: nn.exponential_decay_lr(0.1, 0.5, 6, 0, 1), ValueError, "exponential_decay_lr: step_per_epoch must be positive"),
    (lambda: nn.polynomial_decay_lr(0.1, 0, 6, 2, 2, 0.5), TypeError, "polynomial_decay_lr: end_learning_rate must be a float"),
    (lambda: nn.polynomial_decay_lr(0.1, -0.01, 6, 2, 2, 0.5), ValueError, "end_learning_rate must be non-negative"),
    (lambda: nn.polynomial_decay_lr(0.1, 0.01, 6, 2, 2, 0.5, update_decay_epoch=1), TypeError, "update_decay_epoch must be a bool"),
    (lambda: nn.polynomial_decay_lr(0.1, 0.01, 6, 2, 2, 0.0), ValueError, "polynomial_decay_lr: power must be positive"),
    (lambda: nn.warmup_lr(1, 6, 2, 2), TypeError, "warmup_lr: learning_rate must be a float, got int"),
    (lambda: nn.warmup_lr(0.1, 6, 2, 0), ValueError, "warmup_lr: warmup_epoch must be positive"),
    (lambda: nn.cosine_decay_lr(0, 0.1, 6, 2, 2), TypeError, "cosine_decay_lr: min_lr must be a float"),
    (lambda: nn.cosine_decay_lr(0.2, 0.1, 6, 2, 2), ValueError, "need min_lr < max_lr"),
])
def test_lr_lists_check_their_arguments_as_mindspore(call: Any, error: type, match: str) -> None:
    """MindSpore's _check_inputs and friends: positive float learning_rate/decay_rate/power, non-negative float
    end_learning_rate/min_lr/warmup learning_rate, positive int steps, bool flags; TypeError for the type, ValueError
    for the value."""
    with pytest.raises(error, match=match):
        call()
