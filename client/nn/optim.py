"""Optimizers with MindSpore 2.x names and hyper-parameters (SGD, Momentum, Adam, AdamWeightDecay): ``optimizer(grads)``
updates the Parameters in the client process, in NumPy, in each parameter's own dtype."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gradserve.client.cell import Cell
from gradserve.client.parameter import Parameter, ParameterTuple
from gradserve.client.tensor import Tensor

from .learning_rate_schedule import LearningRateSchedule


def _lr_fn(learning_rate: Any, where: str) -> Callable[[int], float]:
    """The learning rate at a step: a number, one value per step (the last one kept after the end), a
    LearningRateSchedule Cell (``nn.ExponentialDecayLR`` ...) or a callable of the step."""
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        if learning_rate < 0:
            raise ValueError(f"{where}: learning_rate must be non-negative, got {learning_rate!r}")
        value = float(learning_rate)
        return lambda step: value
    if isinstance(learning_rate, Tensor) and learning_rate.ndim == 0:
        return _lr_fn(float(learning_rate.asnumpy()), where)
    if isinstance(learning_rate, (list, tuple, np.ndarray, Tensor)):
        values = [float(v) for v in np.asarray(learning_rate, dtype=np.float64).reshape(-1)]
        if not values:
            raise ValueError(f"{where}: learning_rate list is empty")
        return lambda step: values[min(step, len(values) - 1)]
    if isinstance(learning_rate, LearningRateSchedule):
        return learning_rate.at
    if callable(learning_rate):
        return lambda step: float(np.asarray(learning_rate(step)))
    raise TypeError(f"{where}: learning_rate must be a number, a list of numbers, a 1-D Tensor or a schedule, "
                    f"got {type(learning_rate).__name__}")


@dataclass
class _Slot:
    """One parameter's hyper-parameters and optimizer state."""

    param: Parameter
    lr: Callable[[int], float]
    weight_decay: float
    state: dict[str, np.ndarray]


def _buffer_or_zeros(slot: _Slot, key: str, w: np.ndarray) -> np.ndarray:
    """``slot``'s buffer ``key``, or zeros shaped like ``w`` before its first step (made only then, not on every step)."""
    held = slot.state.get(key)
    return np.zeros_like(w) if held is None else held


def _default_decay(p: Parameter) -> bool:
    """MindSpore's default: weight decay skips parameters whose names contain 'beta' or 'gamma'."""
    return "beta" not in p.name and "gamma" not in p.name


class Optimizer(Cell):
    """``Optimizer(learning_rate, parameters, weight_decay=0.0, loss_scale=1.0)``: parameters are Parameters or
    groups (dicts with 'params' and optional 'lr' and 'weight_decay', plus at most one ``{'order_params': [...]}``
    giving the update order); ``optimizer(grads)`` applies one step with gradients in ``optimizer.parameters``
    order. A learning rate is a number, a list per step, or a LearningRateSchedule evaluated at ``global_step``."""

    def __init__(self, learning_rate: Any, parameters: Any, weight_decay: float = 0.0, loss_scale: float = 1.0) -> None:
        super().__init__(auto_prefix=False)
        name = type(self).__name__
        if not loss_scale > 0:
            raise ValueError(f"nn.{name}: loss_scale must be positive, got {loss_scale!r}")
        self.loss_scale = float(loss_scale)
        self._step = [0]
        items = list(parameters)
        if not items:
            raise ValueError(f"nn.{name}: the parameter list is empty")
        grouped = isinstance(items[0], dict)
        groups = items if grouped else [{"params": items}]
        order = [g for g in groups if isinstance(g, dict) and "order_params" in g]
        groups = [g for g in groups if not (isinstance(g, dict) and "order_params" in g)]
        self._slots: list[_Slot] = []
        seen: set[int] = set()
        for gi, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"nn.{name}: parameter group {gi} must be a dict with 'params' (all groups or none)")
            unknown = set(group) - {"params", "lr", "weight_decay"}
            if unknown:
                raise ValueError(f"nn.{name}: parameter group {gi} has unsupported keys {sorted(unknown)}")
            lr = _lr_fn(group.get("lr", learning_rate), f"nn.{name} group {gi}")
            wd = float(group.get("weight_decay", weight_decay))
            if wd < 0:
                raise ValueError(f"nn.{name}: weight_decay must be non-negative, got {wd!r}")
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"nn.{name}: group {gi} holds a {type(p).__name__}, not a Parameter")
                if id(p) in seen:
                    raise ValueError(f"nn.{name}: Parameter {p.name!r} appears twice")
                seen.add(id(p))
                decay = wd if grouped or _default_decay(p) else 0.0
                self._slots.append(_Slot(p, lr, decay, {}))
        if order:
            self._slots = self._ordered(order, name)
        self.parameters = ParameterTuple(s.param for s in self._slots)

    @property
    def global_step(self) -> int:
        """Steps taken. Held in the one-element list ``_step``, which a step changes in place: assigning an attribute
        moves the trace epoch (client/epoch.py), so every gradient call after each step would walk its whole network
        again; a network whose state reaches the optimizer still sees the count, as a list attribute it re-reads."""
        return self._step[0]

    @global_step.setter
    def global_step(self, value: int) -> None:
        self._step[0] = int(value)

    def _ordered(self, order: list[dict[str, Any]], name: str) -> list[_Slot]:
        """The slots in the order of the group ``{"order_params": [...]}`` (MindSpore's: the update order, and so the
        order of the gradients; it names exactly the groups' Parameters and holds no other key)."""
        if len(order) > 1 or set(order[0]) != {"order_params"}:
            raise ValueError(f"nn.{name}: give one group {{'order_params': [...]}} with no other key")
        by_id = {id(s.param): s for s in self._slots}
        params = list(order[0]["order_params"])
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"nn.{name}: order_params holds a {type(p).__name__}, not a Parameter")
            if id(p) not in by_id:
                raise ValueError(f"nn.{name}: Parameter {p.name!r} of order_params is in no parameter group")
        if len(params) != len(self._slots) or len({id(p) for p in params}) != len(params):
            missing = [s.param.name for s in self._slots if all(s.param is not p for p in params)]
            raise ValueError(f"nn.{name}: order_params must list each grouped Parameter once; "
                             f"it has {len(params)} entries for {len(self._slots)} Parameters (missing {missing})")
        return [by_id[id(p)] for p in params]

    STATE: tuple[str, ...] = ()
    """The per-parameter buffers, by MindSpore's prefix: a checkpoint holds ``<prefix>.<parameter name>``."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's state by MindSpore's checkpoint names: ``global_step`` (int32, shape (1,)) and each
        parameter's buffers (``moment1.<name>`` ...; zeros before the first step, as MindSpore initializes them)."""
        out = {"global_step": np.array([self.global_step], np.int32)}
        for slot in self._slots:
            for key in self.STATE:
                out[f"{key}.{slot.param.name}"] = self._buffer(slot, key)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """Restore the state from ``state_arrays``' names; returns (state names missing from ``arrays``, names used)."""
        missing: list[str] = []
        used: list[str] = []
        for name, want in self.state_arrays().items():
            if name not in arrays:
                missing.append(name)
                continue
            got = np.asarray(arrays[name])
            if got.shape != want.shape:
                raise ValueError(f"nn.{type(self).__name__}: checkpoint entry {name!r} has shape {got.shape}, the optimizer's {want.shape}")
            used.append(name)
        if missing:
            return missing, used
        self.global_step = int(np.asarray(arrays["global_step"]).reshape(-1)[0])
        for slot in self._slots:
            dtype = slot.param._array_dtype()
            self._restore(slot, {key: np.array(arrays[f"{key}.{slot.param.name}"], dtype) for key in self.STATE})
        return missing, used

    def _buffer(self, slot: _Slot, key: str) -> np.ndarray:
        """Buffer ``key`` of ``slot`` as a checkpoint holds it."""
        return slot.state.get(key, np.zeros(slot.param.shape, slot.param._array_dtype()))

    def _restore(self, slot: _Slot, buffers: dict[str, np.ndarray]) -> None:
        """Set ``slot``'s state from its checkpoint buffers."""
        slot.state.update(buffers)

    def get_lr(self) -> float | tuple[float, ...]:
        """The learning rate of the coming step (a tuple, one per parameter, when groups differ)."""
        rates = tuple(s.lr(self.global_step) for s in self._slots)
        return rates[0] if len(set(rates)) == 1 else rates

    def __call__(self, gradients: Sequence[Any]) -> bool:
        return self.construct(gradients)

    def construct(self, gradients: Sequence[Any]) -> bool:
        """One update of every parameter from its gradient; True when done."""
        grads = tuple(gradients)
        if len(grads) != len(self._slots):
            raise ValueError(f"nn.{type(self).__name__}: got {len(grads)} gradients for {len(self._slots)} parameters")
        step = self.global_step
        for slot, g in zip(self._slots, grads):
            p = slot.param
            w = p.asnumpy()
            g = np.asarray(g.asnumpy() if isinstance(g, Tensor) else g)
            if g.shape != w.shape:
                raise ValueError(f"nn.{type(self).__name__}: the gradient of {p.name!r} has shape {g.shape}, "
                                 f"the parameter {w.shape}")
            g = g.astype(w.dtype, copy=False)
            if self.loss_scale != 1.0:
                g = g / w.dtype.type(self.loss_scale)
            p.set_data(self._update(slot, w, g, w.dtype.type(slot.lr(step)), step + 1))
        self._step[0] = step + 1
        return True

    def _update(self, slot: _Slot, w: np.ndarray, g: np.ndarray, lr: Any, t: int) -> np.ndarray:
        """The new value of one parameter at step ``t`` (counted from 1)."""
        raise NotImplementedError


class SGD(Optimizer):
    """``SGD(params, learning_rate=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
    loss_scale=1.0)``: the first step's momentum buffer is the gradient itself, later ones
    momentum * buf + (1 - dampening) * grad."""

    STATE = ("accum", "stat")
    """MindSpore's names: ``accum`` the momentum buffer, ``stat`` ones until the first step (the buffer then starts as
    the gradient itself), zeros after it."""

    def __init__(self, params: Any, learning_rate: Any = 0.1, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, loss_scale: float = 1.0) -> None:
        if momentum < 0:
            raise ValueError(f"nn.SGD: momentum must be non-negative, got {momentum!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nn.SGD: nesterov needs a positive momentum and zero dampening")
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), bool(nesterov)

    def _update(self, slot: _Slot, w: np.ndarray, g: np.ndarray, lr: Any, t: int) -> np.ndarray:
        dt = w.dtype.type
        if slot.weight_decay:
            g = g + dt(slot.weight_decay) * w
        if self.momentum:
            buf = slot.state.get("accum")
            buf = g.copy() if buf is None else dt(self.momentum) * buf + dt(1 - self.dampening) * g
            slot.state["accum"] = buf
            g = g + dt(self.momentum) * buf if self.nesterov else buf
        return w - lr * g

    def _buffer(self, slot: _Slot, key: str) -> np.ndarray:
        if key == "stat":
            started = "accum" in slot.state
            return np.full(slot.param.shape, 0 if started else 1, slot.param._array_dtype())
        return super()._buffer(slot, key)

    def _restore(self, slot: _Slot, buffers: dict[str, np.ndarray]) -> None:
        slot.state.pop("accum", None)
        if self.momentum and not buffers["stat"].any():
            slot.state["accum"] = buffers["accum"]


class Momentum(Optimizer):
    """``Momentum(params, learning_rate, momentum, weight_decay=0.0, loss_scale=1.0, use_nesterov=False)``:
    accum = momentum * accum + grad; w -= lr * accum (or lr * (grad + momentum * accum) with use_nesterov)."""

    STATE = ("moments",)

    def __init__(self, params: Any, learning_rate: Any, momentum: float, weight_decay: float = 0.0,
                 loss_scale: float = 1.0, use_nesterov: bool = False) -> None:
        if not isinstance(momentum, numbers.Real) or momentum < 0:
            raise ValueError(f"nn.Momentum: momentum must be a non-negative number, got {momentum!r}")
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.momentum: float = float(momentum)
        self.use_nesterov: bool = bool(use_nesterov)

    def _update(self, slot: _Slot, w: np.ndarray, g: np.ndarray, lr: Any, t: int) -> np.ndarray:
        dt = w.dtype.type
        if slot.weight_decay:
            g = g + dt(slot.weight_decay) * w
        accum = dt(self.momentum) * _buffer_or_zeros(slot, "moments", w) + g
        slot.state["moments"] = accum
        return w - lr * (g + dt(self.momentum) * accum if self.use_nesterov else accum)


class Adam(Optimizer):
    """``Adam(params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, use_locking=False, use_nesterov=False,
    weight_decay=0.0, loss_scale=1.0)``: w -= lr sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps), with the
    weight decay added to the gradient."""

    STATE = ("moment1", "moment2")

    def __init__(self, params: Any, learning_rate: Any = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, use_locking: bool = False, use_nesterov: bool = False, weight_decay: float = 0.0,
                 loss_scale: float = 1.0, use_amsgrad: bool = False) -> None:
        _check_betas("Adam", beta1, beta2, eps)
        if use_amsgrad:
            raise NotImplementedError("nn.Adam: use_amsgrad is not supported")
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.use_locking, self.use_nesterov = use_locking, bool(use_nesterov)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """MindSpore's names, with ``beta1_power`` and ``beta2_power`` (beta^step, float32, shape (1,)) as it keeps them."""
        out = super().state_arrays()
        for name, beta in (("beta1_power", self.beta1), ("beta2_power", self.beta2)):
            out[name] = np.array([beta**self.global_step], np.float32)
        return out

    def _update(self, slot: _Slot, w: np.ndarray, g: np.ndarray, lr: Any, t: int) -> np.ndarray:
        dt = w.dtype.type
        if slot.weight_decay:
            g = g + dt(slot.weight_decay) * w
        b1, b2, c1, c2 = dt(self.beta1), dt(self.beta2), dt(1 - self.beta1), dt(1 - self.beta2)
        m = b1 * _buffer_or_zeros(slot, "moment1", w) + c1 * g
        v = b2 * _buffer_or_zeros(slot, "moment2", w) + c2 * g * g
        slot.state["moment1"], slot.state["moment2"] = m, v
        lr_t = lr * dt(math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t))
        num = b1 * m + c1 * g if self.use_nesterov else m
        return w - lr_t * num / (np.sqrt(v) + dt(self.eps))


class AdamWeightDecay(Optimizer):
    """``AdamWeightDecay(params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0)``:
    w -= lr (m / (sqrt(v) + eps) + weight_decay w), with no bias correction, as MindSpore defines it."""

    STATE = ("adam_m", "adam_v")

    def __init__(self, params: Any, learning_rate: Any = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        _check_betas("AdamWeightDecay", beta1, beta2, eps)
        super().__init__(learning_rate, params, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, slot: _Slot, w: np.ndarray, g: np.ndarray, lr: Any, t: int) -> np.ndarray:
        dt = w.dtype.type
        b1, b2, c1, c2 = dt(self.beta1), dt(self.beta2), dt(1 - self.beta1), dt(1 - self.beta2)
        m = b1 * _buffer_or_zeros(slot, "adam_m", w) + c1 * g
        v = b2 * _buffer_or_zeros(slot, "adam_v", w) + c2 * g * g
        slot.state["adam_m"], slot.state["adam_v"] = m, v
        update = m / (np.sqrt(v) + dt(self.eps))
        if slot.weight_decay:
            update = update + dt(slot.weight_decay) * w
        return w - lr * update


def _check_betas(name: str, beta1: float, beta2: float, eps: float) -> None:
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"nn.{name}: beta1 and beta2 must be in [0, 1), got {beta1!r} and {beta2!r}")
    if not eps > 0:
        raise ValueError(f"nn.{name}: eps must be positive, got {eps!r}")
