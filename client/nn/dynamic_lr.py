"""MindSpore's dynamic learning-rate lists: one learning rate per step, for an optimizer's ``learning_rate``."""
from __future__ import annotations

import math
from typing import Any


def _positive_int(fn: str, name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__} {v!r}")
    if v <= 0:
        raise ValueError(f"{fn}: {name} must be positive, got {v!r}")


def _float(fn: str, name: str, v: Any, positive: bool) -> None:
    """MindSpore's float checks: a TypeError unless a float, then a ValueError unless positive (or non-negative)."""
    if not isinstance(v, float):
        raise TypeError(f"{fn}: {name} must be a float, got {type(v).__name__} {v!r}")
    if v < 0 or (positive and v == 0):
        raise ValueError(f"{fn}: {name} must be {'positive' if positive else 'non-negative'}, got {v!r}")


def _bool(fn: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__} {v!r}")


def _steps(fn: str, total_step: int, step_per_epoch: int, decay_epoch: int, epoch_name: str = "decay_epoch") -> None:
    for name, v in (("total_step", total_step), ("step_per_epoch", step_per_epoch), (epoch_name, decay_epoch)):
        _positive_int(fn, name, v)


def _check_inputs(fn: str, learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                  decay_epoch: int, is_stair: bool) -> None:
    """MindSpore's checks of the decay lists: positive int steps, positive float rates, a bool is_stair."""
    _steps(fn, total_step, step_per_epoch, decay_epoch)
    _float(fn, "learning_rate", learning_rate, positive=True)
    _float(fn, "decay_rate", decay_rate, positive=True)
    _bool(fn, "is_stair", is_stair)


def _quotients(total_step: int, step_per_epoch: int, decay_epoch: int, is_stair: bool) -> list[float]:
    """epoch / decay_epoch for each step, epoch = i // step_per_epoch (floored when ``is_stair``)."""
    out = []
    for i in range(total_step):
        p = (i // step_per_epoch) / decay_epoch
        out.append(math.floor(p) if is_stair else p)
    return out


def exponential_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                         decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate * decay_rate ** (epoch / decay_epoch), epoch = i // step_per_epoch (the exponent
    floored when ``is_stair``)."""
    _check_inputs("exponential_decay_lr", learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
    return [learning_rate * decay_rate ** p for p in _quotients(total_step, step_per_epoch, decay_epoch, is_stair)]


def natural_exp_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                         decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate * exp(-decay_rate * epoch), epoch = i // step_per_epoch (rounded down to a multiple of
    ``decay_epoch`` when ``is_stair``)."""
    _check_inputs("natural_exp_decay_lr", learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
    out = []
    for i in range(total_step):
        epoch = i // step_per_epoch
        out.append(learning_rate * math.exp(-decay_rate * (epoch // decay_epoch * decay_epoch if is_stair else epoch)))
    return out


def inverse_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                     decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate / (1 + decay_rate * epoch / decay_epoch), epoch = i // step_per_epoch (the quotient
    floored when ``is_stair``)."""
    _check_inputs("inverse_decay_lr", learning_rate, decay_rate, total_step, step_per_epoch, decay_epoch, is_stair)
    return [learning_rate / (1 + decay_rate * p) for p in _quotients(total_step, step_per_epoch, decay_epoch, is_stair)]


def polynomial_decay_lr(learning_rate: float, end_learning_rate: float, total_step: int, step_per_epoch: int,
                        decay_epoch: int, power: float, update_decay_epoch: bool = False) -> list[float]:
    """lr[i] = (learning_rate - end_learning_rate) (1 - e / d) ** power + end_learning_rate with epoch = i //
    step_per_epoch, e = min(epoch, decay_epoch) and d = decay_epoch; with ``update_decay_epoch``, e = epoch and d =
    decay_epoch * max(ceil(epoch / decay_epoch), 1), so the decay restarts each ``decay_epoch`` epochs."""
    fn = "polynomial_decay_lr"
    _float(fn, "learning_rate", learning_rate, positive=True)
    _float(fn, "end_learning_rate", end_learning_rate, positive=False)
    _float(fn, "power", power, positive=True)
    _steps(fn, total_step, step_per_epoch, decay_epoch)
    _bool(fn, "update_decay_epoch", update_decay_epoch)
    out = []
    for i in range(total_step):
        epoch = i // step_per_epoch
        if update_decay_epoch:
            e, d = epoch, decay_epoch * max(math.ceil(epoch / decay_epoch), 1)
        else:
            e, d = min(epoch, decay_epoch), decay_epoch
        out.append((learning_rate - end_learning_rate) * (1 - e / d) ** power + end_learning_rate)
    return out


def warmup_lr(learning_rate: float, total_step: int, step_per_epoch: int, warmup_epoch: int) -> list[float]:
    """lr[i] = learning_rate * min(i // step_per_epoch, warmup_epoch) / warmup_epoch: from 0 up to learning_rate."""
    _float("warmup_lr", "learning_rate", learning_rate, positive=False)
    _steps("warmup_lr", total_step, step_per_epoch, warmup_epoch, "warmup_epoch")
    return [learning_rate * min(i // step_per_epoch, warmup_epoch) / warmup_epoch for i in range(total_step)]


def cosine_decay_lr(min_lr: float, max_lr: float, total_step: int, step_per_epoch: int, decay_epoch: int) -> list[float]:
    """lr[i] = min_lr + 0.5 (max_lr - min_lr) (1 + cos(pi epoch / decay_epoch)), epoch = min(i // step_per_epoch,
    decay_epoch): min_lr from decay_epoch on."""
    _float("cosine_decay_lr", "min_lr", min_lr, positive=False)
    _float("cosine_decay_lr", "max_lr", max_lr, positive=True)
    _steps("cosine_decay_lr", total_step, step_per_epoch, decay_epoch)
    if not min_lr < max_lr:
        raise ValueError(f"cosine_decay_lr: need min_lr < max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    return [
        min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * min(i // step_per_epoch, decay_epoch) / decay_epoch))
        for i in range(total_step)
    ]


def piecewise_constant_lr(milestone: list[int], learning_rates: list[float]) -> list[float]:
    """learning_rates[k] for the steps before milestone[k] (increasing step counts; the last is the total)."""
    if len(milestone) != len(learning_rates) or any(b <= a for a, b in zip(milestone, milestone[1:])):
        raise ValueError("piecewise_constant_lr: milestone must increase and match learning_rates in length")
    out: list[float] = []
    for end, lr in zip(milestone, learning_rates):
        out.extend([lr] * (end - len(out)))
    return out
