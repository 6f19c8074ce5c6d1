"""MindSpore's learning-rate schedule Cells (``nn.ExponentialDecayLR``, ``nn.WarmUpLR`` ...): called with ``global_step`` (an integer
Tensor) they return the learning rate of that step as a float32 scalar, built from ops; an optimizer given one as its
``learning_rate`` (or a group's ``lr``) evaluates it at its own global step before each update."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op
from gradserve.client.tensor import Tensor

_F32 = np.dtype(np.float32)


def _real(layer: str, name: str, v: Any, low: float, strict: bool) -> float:
    """``v`` as a float, checked to be a number above ``low`` (or at least ``low``)."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"nn.{layer}: {name} must be a float, got {type(v).__name__}")
    if v < low or (strict and v == low):
        raise ValueError(f"nn.{layer}: {name} must be {'>' if strict else '>='} {low}, got {v!r}")
    return float(v)


def _steps(layer: str, decay_steps: Any) -> int:
    if not isinstance(decay_steps, int) or isinstance(decay_steps, bool):
        raise TypeError(f"nn.{layer}: decay_steps must be an int, got {type(decay_steps).__name__}")
    if decay_steps < 1:
        raise ValueError(f"nn.{layer}: decay_steps must be >= 1, got {decay_steps!r}")
    return decay_steps


def _flag(layer: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"nn.{layer}: {name} must be a bool, got {type(v).__name__}")
    return v


class LearningRateSchedule(Cell):
    """Base of the schedules: ``construct(global_step)`` returns the step's learning rate."""

    def construct(self, global_step: Any) -> Any:
        raise NotImplementedError

    def at(self, step: int) -> float:
        """The learning rate at ``step`` (a Python int), computed in this process: what an optimizer reads."""
        return float(self.construct(Tensor(np.array(step, np.int32))).asnumpy())

    @staticmethod
    def _step(global_step: Any) -> Any:
        return apply_op("Cast", global_step, dtype=_F32)


class _Decay(LearningRateSchedule):
    """The exponent-style schedules: p = step / decay_steps, floored with ``is_stair``."""

    def __init__(self, learning_rate: float, decay_rate: float, decay_steps: int, is_stair: bool = False) -> None:
        super().__init__()
        layer = type(self).__name__
        self.learning_rate = _real(layer, "learning_rate", learning_rate, 0.0, strict=True)
        self.decay_rate = _real(layer, "decay_rate", decay_rate, 0.0, strict=True)
        self.decay_steps = _steps(layer, decay_steps)
        self.is_stair = _flag(layer, "is_stair", is_stair)

    def _p(self, global_step: Any) -> Any:
        p = self._step(global_step) / float(self.decay_steps)
        return apply_op("Floor", p) if self.is_stair else p


class ExponentialDecayLR(_Decay):
    """``ExponentialDecayLR(learning_rate, decay_rate, decay_steps, is_stair=False)``: learning_rate * decay_rate^p."""

    def construct(self, global_step: Any) -> Any:
        return self.learning_rate * apply_op("Pow", Tensor(np.array(self.decay_rate, _F32)), self._p(global_step))


class NaturalExpDecayLR(_Decay):
    """``NaturalExpDecayLR(learning_rate, decay_rate, decay_steps, is_stair=False)``:
    learning_rate * e^(-decay_rate * p)."""

    def construct(self, global_step: Any) -> Any:
        return self.learning_rate * apply_op("Exp", self._p(global_step) * -self.decay_rate)


class InverseDecayLR(_Decay):
    """``InverseDecayLR(learning_rate, decay_rate, decay_steps, is_stair=False)``:
    learning_rate / (1 + decay_rate * p)."""

    def construct(self, global_step: Any) -> Any:
        return self.learning_rate / (self._p(global_step) * self.decay_rate + 1.0)


class CosineDecayLR(LearningRateSchedule):
    """``CosineDecayLR(min_lr, max_lr, decay_steps)``: min_lr + (max_lr - min_lr)(1 + cos(pi * s / decay_steps)) / 2
    with s = min(step, decay_steps), so it stays at min_lr after decay_steps, as MindSpore's does."""

    def __init__(self, min_lr: float, max_lr: float, decay_steps: int) -> None:
        super().__init__()
        self.min_lr = _real("CosineDecayLR", "min_lr", min_lr, 0.0, strict=False)
        self.max_lr = _real("CosineDecayLR", "max_lr", max_lr, 0.0, strict=True)
        self.decay_steps = _steps("CosineDecayLR", decay_steps)

    def construct(self, global_step: Any) -> Any:
        s = apply_op("Minimum", self._step(global_step), float(self.decay_steps))
        cos = apply_op("Cos", s * (math.pi / self.decay_steps))
        return (cos + 1.0) * (0.5 * (self.max_lr - self.min_lr)) + self.min_lr


class PolynomialDecayLR(LearningRateSchedule):
    """``PolynomialDecayLR(learning_rate, end_learning_rate, decay_steps, power, update_decay_steps=False)``:
    (learning_rate - end_learning_rate) (1 - s / d)^power + end_learning_rate, with s = min(step, decay_steps) and
    d = decay_steps; with ``update_decay_steps``, s = step and d = decay_steps * max(ceil(step / decay_steps), 1)."""

    def __init__(self, learning_rate: float, end_learning_rate: float, decay_steps: int, power: float,
                 update_decay_steps: bool = False) -> None:
        super().__init__()
        self.learning_rate = _real("PolynomialDecayLR", "learning_rate", learning_rate, 0.0, strict=True)
        self.end_learning_rate = _real("PolynomialDecayLR", "end_learning_rate", end_learning_rate, 0.0, strict=False)
        self.decay_steps = _steps("PolynomialDecayLR", decay_steps)
        self.power = _real("PolynomialDecayLR", "power", power, 0.0, strict=True)
        self.update_decay_steps = _flag("PolynomialDecayLR", "update_decay_steps", update_decay_steps)

    def construct(self, global_step: Any) -> Any:
        s = self._step(global_step)
        if self.update_decay_steps:
            d = apply_op("Maximum", apply_op("Ceil", s / float(self.decay_steps)), 1.0) * float(self.decay_steps)
            p = s / d
        else:
            p = apply_op("Minimum", s, float(self.decay_steps)) / float(self.decay_steps)
        decayed = apply_op("Pow", 1.0 - p, Tensor(np.array(self.power, _F32)))
        return decayed * (self.learning_rate - self.end_learning_rate) + self.end_learning_rate


class WarmUpLR(LearningRateSchedule):
    """``WarmUpLR(learning_rate, warmup_steps)``: learning_rate * min(step, warmup_steps) / warmup_steps, rising from
    0 and held at learning_rate after warmup_steps."""

    def __init__(self, learning_rate: float, warmup_steps: int) -> None:
        super().__init__()
        self.learning_rate = _real("WarmUpLR", "learning_rate", learning_rate, 0.0, strict=True)
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 1:
            raise ValueError(f"nn.WarmUpLR: warmup_steps must be a positive int, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps

    def construct(self, global_step: Any) -> Any:
        s = apply_op("Minimum", self._step(global_step), float(self.warmup_steps))
        return s * (self.learning_rate / self.warmup_steps)
