"""MindSpore's dynamic learning-rate lists: one learning rate per step, for an optimizer's ``learning_rate``."""
from __future__ import annotations

import math


def _check(total_step: int, step_per_epoch: int, decay_epoch: int) -> None:
    for name, v in (("total_step", total_step), ("step_per_epoch", step_per_epoch), ("decay_epoch (warmup_epoch)", decay_epoch)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def exponential_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                         decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate * decay_rate ** (epoch / decay_epoch), epoch = i // step_per_epoch (the exponent
    floored when ``is_stair``)."""
    _check(total_step, step_per_epoch, decay_epoch)
    out = []
    for i in range(total_step):
        p = (i // step_per_epoch) / decay_epoch
        out.append(learning_rate * decay_rate ** (math.floor(p) if is_stair else p))
    return out


def natural_exp_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                         decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate * exp(-decay_rate * epoch), epoch = i // step_per_epoch (rounded down to a multiple of
    ``decay_epoch`` when ``is_stair``)."""
    _check(total_step, step_per_epoch, decay_epoch)
    out = []
    for i in range(total_step):
        epoch = i // step_per_epoch
        out.append(learning_rate * math.exp(-decay_rate * (epoch // decay_epoch * decay_epoch if is_stair else epoch)))
    return out


def inverse_decay_lr(learning_rate: float, decay_rate: float, total_step: int, step_per_epoch: int,
                     decay_epoch: int, is_stair: bool = False) -> list[float]:
    """lr[i] = learning_rate / (1 + decay_rate * epoch / decay_epoch), epoch = i // step_per_epoch (the quotient
    floored when ``is_stair``)."""
    _check(total_step, step_per_epoch, decay_epoch)
    out = []
    for i in range(total_step):
        p = (i // step_per_epoch) / decay_epoch
        out.append(learning_rate / (1 + decay_rate * (math.floor(p) if is_stair else p)))
    return out


def polynomial_decay_lr(learning_rate: float, end_learning_rate: float, total_step: int, step_per_epoch: int,
                        decay_epoch: int, power: float, update_decay_epoch: bool = False) -> list[float]:
    """lr[i] = (learning_rate - end_learning_rate) (1 - e / d) ** power + end_learning_rate with epoch = i //
    step_per_epoch, e = min(epoch, decay_epoch) and d = decay_epoch; with ``update_decay_epoch``, e = epoch and d =
    decay_epoch * max(ceil(epoch / decay_epoch), 1), so the decay restarts each ``decay_epoch`` epochs."""
    _check(total_step, step_per_epoch, decay_epoch)
    if not power > 0:
        raise ValueError(f"polynomial_decay_lr: power must be positive, got {power!r}")
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
    _check(total_step, step_per_epoch, warmup_epoch)
    return [learning_rate * min(i // step_per_epoch, warmup_epoch) / warmup_epoch for i in range(total_step)]


def cosine_decay_lr(min_lr: float, max_lr: float, total_step: int, step_per_epoch: int, decay_epoch: int) -> list[float]:
    """lr[i] = min_lr + 0.5 (max_lr - min_lr) (1 + cos(pi epoch / decay_epoch)), epoch = min(i // step_per_epoch,
    decay_epoch): min_lr from decay_epoch on."""
    _check(total_step, step_per_epoch, decay_epoch)
    if not 0 <= min_lr < max_lr:
        raise ValueError(f"cosine_decay_lr: need 0 <= min_lr < max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
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
