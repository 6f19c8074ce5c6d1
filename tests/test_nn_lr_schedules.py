"""Learning-rate schedule Cells (ExponentialDecayLR, NaturalExpDecayLR, InverseDecayLR, CosineDecayLR,
PolynomialDecayLR, WarmUpLR) against their closed forms and MindSpore's documented examples, used as an optimizer's
learning_rate (and a group's lr) step by step; parameter groups with order_params; pooling layers' MindSpore 2.x
arguments the engine cannot honour raise naming the argument."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest

import gradserve as gs
from gradserve import nn

STEPS = range(13)


def exp_decay(lr: float, rate: float, steps: int, stair: bool) -> Callable[[int], float]:
    return lambda s: lr * rate ** (math.floor(s / steps) if stair else s / steps)


def natural(lr: float, rate: float, steps: int, stair: bool) -> Callable[[int], float]:
    return lambda s: lr * math.exp(-rate * (math.floor(s / steps) if stair else s / steps))


def inverse(lr: float, rate: float, steps: int, stair: bool) -> Callable[[int], float]:
    return lambda s: lr / (1 + rate * (math.floor(s / steps) if stair else s / steps))


def cosine(lo: float, hi: float, steps: int) -> Callable[[int], float]:
    return lambda s: lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * min(s, steps) / steps))


def poly(lr: float, end: float, steps: int, power: float, update: bool) -> Callable[[int], float]:
    def f(s: int) -> float:
        if update:
            d = steps * max(math.ceil(s / steps), 1)
            return (lr - end) * (1 - s / d) ** power + end
        return (lr - end) * (1 - min(s, steps) / steps) ** power + end
    return f


CASES: list[tuple[Any, Callable[[int], float]]] = [
    (nn.ExponentialDecayLR(0.1, 0.9, 4), exp_decay(0.1, 0.9, 4, False)),
    (nn.ExponentialDecayLR(0.1, 0.9, 4, is_stair=True), exp_decay(0.1, 0.9, 4, True)),
    (nn.NaturalExpDecayLR(0.1, 0.9, 4), natural(0.1, 0.9, 4, False)),
    (nn.NaturalExpDecayLR(0.1, 0.9, 4, is_stair=True), natural(0.1, 0.9, 4, True)),
    (nn.InverseDecayLR(0.1, 0.5, 4), inverse(0.1, 0.5, 4, False)),
    (nn.InverseDecayLR(0.1, 0.5, 4, True), inverse(0.1, 0.5, 4, True)),
    (nn.CosineDecayLR(0.01, 0.1, 4), cosine(0.01, 0.1, 4)),
    (nn.PolynomialDecayLR(0.1, 0.01, 4, 0.5), poly(0.1, 0.01, 4, 0.5, False)),
    (nn.PolynomialDecayLR(0.1, 0.01, 4, 0.5, update_decay_steps=True), poly(0.1, 0.01, 4, 0.5, True)),
    (nn.WarmUpLR(0.1, 4), lambda s: 0.1 * min(s, 4) / 4),
]


@pytest.mark.parametrize("schedule, closed", CASES, ids=lambda c: type(c).__name__ if isinstance(c, nn.Cell) else None)
def test_schedules_called_with_global_step_match_the_closed_form(schedule: Any, closed: Callable[[int], float]) -> None:
    for s in STEPS:
        got = schedule(gs.Tensor(np.array(s, np.int32)))
        assert got.shape == () and got.dtype == gs.float32
        np.testing.assert_allclose(got.asnumpy(), closed(s), rtol=2e-6)


def test_mindsporess_documented_examples() -> None:
    step = gs.Tensor(np.array(2, np.int32))
    np.testing.assert_allclose(nn.ExponentialDecayLR(0.1, 0.9, 4)(step).asnumpy(), 0.09486833, rtol=1e-6)
    np.testing.assert_allclose(nn.CosineDecayLR(0.01, 0.1, 4)(step).asnumpy(), 0.055, rtol=1e-6)
    np.testing.assert_allclose(nn.PolynomialDecayLR(0.1, 0.01, 4, 0.5)(step).asnumpy(), 0.07363961, rtol=1e-6)
    np.testing.assert_allclose(nn.WarmUpLR(0.1, 2)(step).asnumpy(), 0.1, rtol=1e-6)


@pytest.mark.parametrize("schedule, closed", CASES[::2], ids=lambda c: type(c).__name__ if isinstance(c, nn.Cell) else None)
def test_an_optimizer_reads_the_schedule_at_its_global_step(schedule: Any, closed: Callable[[int], float]) -> None:
    w = gs.Parameter(np.zeros(3), name="w")
    opt = nn.SGD([w], learning_rate=schedule)
    g = (gs.Tensor(np.ones(3)),)
    total = 0.0
    for s in range(6):
        np.testing.assert_allclose(opt.get_lr(), closed(s), rtol=2e-6)
        opt(g)
        total += closed(s)
        np.testing.assert_allclose(w.asnumpy(), -total, rtol=2e-6)  # SGD: w -= lr(step) * 1


def test_groups_with_a_schedule_and_order_params() -> None:
    a, b, c = (gs.Parameter(np.zeros(2), name=n) for n in "abc")
    sched = nn.ExponentialDecayLR(0.5, 0.5, 1)
    opt = nn.SGD([{"params": [c, a], "lr": sched}, {"params": [b], "weight_decay": 0.0}, {"order_params": [a, b, c]}],
                 learning_rate=0.1)
    assert [p.name for p in opt.parameters] == ["a", "b", "c"]  # the update order, and so the gradients' order
    grads = tuple(gs.Tensor(np.full(2, v)) for v in (1.0, 10.0, 100.0))
    opt(grads)
    opt(grads)
    lr0, lr1 = 0.5, 0.25
    np.testing.assert_allclose(a.asnumpy(), -(lr0 + lr1) * 1.0)
    np.testing.assert_allclose(b.asnumpy(), -0.2 * 10.0)
    np.testing.assert_allclose(c.asnumpy(), -(lr0 + lr1) * 100.0)


def test_order_params_must_name_each_grouped_parameter_once() -> None:
    a, b, c = (gs.Parameter(np.zeros(2), name=n) for n in "abc")
    with pytest.raises(ValueError, match=r"order_params must list each grouped Parameter once.*missing \['b'\]"):
        nn.SGD([{"params": [a, b]}, {"order_params": [a]}])
    with pytest.raises(ValueError, match=r"Parameter 'c' of order_params is in no parameter group"):
        nn.SGD([{"params": [a, b]}, {"order_params": [a, b, c]}])
    with pytest.raises(ValueError, match=r"one group \{'order_params': \[...\]\} with no other key"):
        nn.SGD([{"params": [a, b]}, {"order_params": [a, b], "lr": 0.1}])


@pytest.mark.parametrize("make, match", [
    (lambda: nn.ExponentialDecayLR(0.1, 0.9, 0), r"ExponentialDecayLR: decay_steps must be >= 1, got 0"),
    (lambda: nn.ExponentialDecayLR(0.1, 0.9, 2.0), r"ExponentialDecayLR: decay_steps must be an int, got float"),
    (lambda: nn.InverseDecayLR(0.0, 0.9, 2), r"InverseDecayLR: learning_rate must be > 0.0, got 0.0"),
    (lambda: nn.CosineDecayLR(-0.1, 0.1, 2), r"CosineDecayLR: min_lr must be >= 0.0, got -0.1"),
    (lambda: nn.PolynomialDecayLR(0.1, 0.0, 2, 0.0), r"PolynomialDecayLR: power must be > 0.0, got 0.0"),
    (lambda: nn.NaturalExpDecayLR(0.1, 0.9, 2, is_stair=1), r"NaturalExpDecayLR: is_stair must be a bool, got int"),
    (lambda: nn.WarmUpLR(0.1, 0), r"WarmUpLR: warmup_steps must be a positive int, got 0"),
])
def test_schedule_arguments_are_checked(make: Callable[[], Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_pooling_2x_arguments_the_defaults_and_zero_padding_work() -> None:
    x = gs.Tensor(np.arange(32.0).reshape(1, 2, 4, 4))
    want = nn.MaxPool2d(2, 2)(x).asnumpy()
    got = nn.MaxPool2d(2, 2, pad_mode="pad", padding=0, dilation=1, return_indices=False, ceil_mode=False)(x)
    np.testing.assert_array_equal(got.asnumpy(), want)
    np.testing.assert_array_equal(want[0, 0], [[5, 7], [13, 15]])
    avg = nn.AvgPool2d(2, 2, pad_mode="PAD", padding=(0, 0), ceil_mode=False, count_include_pad=False)(x).asnumpy()
    np.testing.assert_array_equal(avg[0, 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize("make, match", [
    (lambda: nn.MaxPool2d(3, 2, padding=1), r"nn.MaxPool2d: padding must be 0 unless pad_mode is 'pad'"),
    (lambda: nn.MaxPool2d(3, 2, dilation=0), r"nn.MaxPool2d: dilation must be a positive int or a pair"),
    (lambda: nn.AvgPool2d(3, 2, divisor_override=-4), r"nn.AvgPool2d: divisor_override must be None or a positive int"),
    (lambda: nn.AvgPool2d(3, 2, data_format="NHWC"), r"nn.AvgPool2d: only data_format 'NCHW' is supported"),
    (lambda: nn.AvgPool2d(3, 2, pad_mode="full"), r"nn.AvgPool2d: pad_mode must be 'valid', 'same' or 'pad', got 'full'"),
    (lambda: nn.AvgPool2d(3, 2, pad_mode="pad", padding=-1), r"nn.AvgPool2d: padding must be a non-negative int"),
])
def test_bad_pooling_arguments_raise_naming_them(make: Callable[[], Any], match: str) -> None:
    with pytest.raises((NotImplementedError, ValueError), match=match):
        make()
