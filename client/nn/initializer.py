"""MindSpore's weight initializers (``gradserve.common.initializer``) and ``set_seed``: NumPy draws from one
seeded generator, so the same seed gives the same weights."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from gradserve.client import dtype as mstype
from gradserve.client.tensor import Tensor

_RNG: list[np.random.Generator] = [np.random.default_rng()]
_SEED: list[int | None] = [None]
_ON_SEED: list[Callable[[int], None]] = []


def set_seed(seed: int) -> None:
    """Seed the generator every initializer draws from (MindSpore's global seed) and restart what ``on_set_seed``
    registered (the random ops' call sites, as MindSpore's set_seed resets its op seeds)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"set_seed: seed must be a non-negative int, got {seed!r}")
    _RNG[0] = np.random.default_rng(seed)
    _SEED[0] = seed
    for hook in _ON_SEED:
        hook(seed)


def on_set_seed(hook: Callable[[int], None]) -> None:
    """Call ``hook(seed)`` at every ``set_seed`` (a module below this one cannot be imported here without a cycle)."""
    _ON_SEED.append(hook)


def get_seed() -> int | None:
    """The global seed ``set_seed`` last set (None before any), as MindSpore's ``get_seed`` returns it."""
    return _SEED[0]


def get_seed_rng() -> np.random.Generator:
    """The generator initializers and Dropout masks draw from."""
    return _RNG[0]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: shape[1] and shape[0] times the receptive field (the trailing axes)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in and fan_out need a shape with at least 2 axes, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (as MindSpore's and PyTorch's initializers define it)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


class Initializer:
    """Base class: ``init(arr)`` fills a NumPy array in place."""

    def __call__(self, arr: np.ndarray) -> None:
        arr[...] = self._values(arr.shape)

    def _values(self, shape: tuple[int, ...]) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Zero(Initializer):
    """All zeros."""

    def _values(self, shape: tuple[int, ...]) -> Any:
        return 0


class One(Initializer):
    """All ones."""

    def _values(self, shape: tuple[int, ...]) -> Any:
        return 1


class Constant(Initializer):
    """Every element ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def _values(self, shape: tuple[int, ...]) -> Any:
        return self.value


class Normal(Initializer):
    """N(mean, sigma^2)."""

    def __init__(self, sigma: float = 0.01, mean: float = 0.0) -> None:
        self.sigma, self.mean = sigma, mean

    def _values(self, shape: tuple[int, ...]) -> Any:
        return get_seed_rng().normal(self.mean, self.sigma, shape)


class Uniform(Initializer):
    """U(-scale, scale)."""

    def __init__(self, scale: float = 0.07) -> None:
        self.scale = scale

    def _values(self, shape: tuple[int, ...]) -> Any:
        return get_seed_rng().uniform(-self.scale, self.scale, shape)


class TruncatedNormal(Initializer):
    """N(mean, sigma^2) restricted to [a, b] (redrawn until inside)."""

    def __init__(self, sigma: float = 0.01, mean: float = 0.0, a: float = -2.0, b: float = 2.0) -> None:
        if not a < b:
            raise ValueError(f"TruncatedNormal: a ({a}) must be less than b ({b})")
        self.sigma, self.mean, self.a, self.b = sigma, mean, a, b

    def _values(self, shape: tuple[int, ...]) -> Any:
        rng = get_seed_rng()
        out = rng.normal(self.mean, self.sigma, shape)
        bad = (out < self.a) | (out > self.b)
        while bad.any():
            out[bad] = rng.normal(self.mean, self.sigma, int(bad.sum()))
            bad = (out < self.a) | (out > self.b)
        return out


class XavierUniform(Initializer):
    """U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out))."""

    def __init__(self, gain: float = 1) -> None:
        self.gain = gain

    def _values(self, shape: tuple[int, ...]) -> Any:
        fan_in, fan_out = _fans(shape)
        bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return get_seed_rng().uniform(-bound, bound, shape)


class XavierNormal(Initializer):
    """N(0, sigma^2), sigma = gain * sqrt(2 / (fan_in + fan_out))."""

    def __init__(self, gain: float = 1) -> None:
        self.gain = gain

    def _values(self, shape: tuple[int, ...]) -> Any:
        fan_in, fan_out = _fans(shape)
        return get_seed_rng().normal(0.0, self.gain * math.sqrt(2.0 / (fan_in + fan_out)), shape)


class _He(Initializer):
    def __init__(self, negative_slope: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> None:
        if mode not in ("fan_in", "fan_out"):
            raise ValueError(f"{type(self).__name__}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
        self.negative_slope, self.mode, self.nonlinearity = negative_slope, mode, nonlinearity

    def _std(self, shape: tuple[int, ...]) -> float:
        fan_in, fan_out = _fans(shape)
        fan = fan_in if self.mode == "fan_in" else fan_out
        return calculate_gain(self.nonlinearity, self.negative_slope) / math.sqrt(fan)


class HeUniform(_He):
    """U(-bound, bound), bound = gain * sqrt(3 / fan) (Kaiming uniform)."""

    def _values(self, shape: tuple[int, ...]) -> Any:
        bound = math.sqrt(3.0) * self._std(shape)
        return get_seed_rng().uniform(-bound, bound, shape)


class HeNormal(_He):
    """N(0, (gain / sqrt(fan))^2) (Kaiming normal)."""

    def _values(self, shape: tuple[int, ...]) -> Any:
        return get_seed_rng().normal(0.0, self._std(shape), shape)


_ALIASES: dict[str, type[Initializer]] = {
    "zeros": Zero, "zero": Zero, "ones": One, "one": One, "normal": Normal, "uniform": Uniform,
    "truncatednormal": TruncatedNormal, "truncated_normal": TruncatedNormal,
    "xavieruniform": XavierUniform, "xavier_uniform": XavierUniform,
    "xaviernormal": XavierNormal, "xavier_normal": XavierNormal,
    "heuniform": HeUniform, "he_uniform": HeUniform, "henormal": HeNormal, "he_normal": HeNormal,
}


def initializer(init: Any, shape: Any = None, dtype: Any = mstype.float32) -> Tensor:
    """A Tensor of ``shape`` and ``dtype`` filled by ``init``: an Initializer, its name ('normal', 'he_uniform', ...),
    a number, or a Tensor (returned as it is; its shape must equal ``shape`` when given)."""
    if isinstance(init, Tensor):
        if shape is not None and tuple(_shape(shape)) != init.shape:
            raise ValueError(f"initializer: the Tensor has shape {init.shape}, but shape {tuple(_shape(shape))} was asked for")
        return init
    if isinstance(init, str):
        cls = _ALIASES.get(init.lower())
        if cls is None:
            raise ValueError(f"initializer: unknown initializer {init!r}; known names: {sorted(_ALIASES)}")
        init = cls()
    elif isinstance(init, numbers.Number) and not isinstance(init, bool):
        init = Constant(init)
    if not isinstance(init, Initializer):
        raise TypeError(f"initializer: init must be a Tensor, str, Initializer or number, got {type(init).__name__}")
    if shape is None:
        raise ValueError("initializer: shape is required unless init is a Tensor")
    arr = np.zeros(_shape(shape), dtype=np.float64)
    init(arr)
    return Tensor(arr.astype(mstype.to_numpy(dtype)))


def _shape(shape: Any) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"initializer: shape must be non-negative ints, got {shape!r}")
    return dims
