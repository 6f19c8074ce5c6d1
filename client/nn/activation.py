"""Activation Cells (MindSpore's nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Softmax, nn.LogSoftmax), each one op
or a composition of ops, and ``get_activation`` for the ``activation=`` argument of layers."""
from __future__ import annotations

from typing import Any

from gradserve.client.cell import Cell
from gradserve.client.dispatch import apply_op


class ReLU(Cell):
    """max(x, 0)."""

    def construct(self, x: Any) -> Any:
        return apply_op("ReLU", x)


class LeakyReLU(Cell):
    """``LeakyReLU(alpha=0.2)``: x where x > 0, else alpha * x (the slope at 0 is alpha, as PyTorch's)."""

    def __init__(self, alpha: float = 0.2) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def construct(self, x: Any) -> Any:
        return apply_op("Select", x > 0, x, x * self.alpha)


class Identity(Cell):
    """``Identity()``: its input, unchanged."""

    def construct(self, x: Any) -> Any:
        return x


class Sigmoid(Cell):
    """1 / (1 + exp(-x))."""

    def construct(self, x: Any) -> Any:
        return apply_op("Sigmoid", x)


class Tanh(Cell):
    """tanh(x)."""

    def construct(self, x: Any) -> Any:
        return apply_op("Tanh", x)


class SiLU(Cell):
    """x * sigmoid(x)."""

    def construct(self, x: Any) -> Any:
        return x * apply_op("Sigmoid", x)


class GELU(Cell):
    """``GELU(approximate=True)``: the tanh approximation (MindSpore's default), or the exact x Phi(x) with erf."""

    def __init__(self, approximate: bool = True) -> None:
        super().__init__()
        self.approximate = bool(approximate)

    def construct(self, x: Any) -> Any:
        return apply_op("GeLU", x, approximate="tanh" if self.approximate else "none")


class Softmax(Cell):
    """``Softmax(axis=-1)``: exp(x) / sum(exp(x)) over ``axis``."""

    def __init__(self, axis: int | tuple[int, ...] = -1) -> None:
        super().__init__()
        self.axis = axis

    def construct(self, x: Any) -> Any:
        return apply_op("Softmax", x, axis=self.axis)


class LogSoftmax(Cell):
    """``LogSoftmax(axis=-1)``: x - log(sum(exp(x))) over ``axis``."""

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = axis

    def construct(self, x: Any) -> Any:
        return apply_op("LogSoftmax", x, axis=self.axis)


_ACTIVATIONS: dict[str, type[Cell]] = {
    "relu": ReLU, "leakyrelu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": GELU, "silu": SiLU, "softmax": Softmax, "logsoftmax": LogSoftmax,
}


def get_activation(name: str | Cell | None) -> Cell | None:
    """The activation Cell for ``name`` ('relu', 'tanh', ...), a Cell as it is, or None."""
    if name is None or isinstance(name, Cell):
        return name
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)} or a Cell")
    return _ACTIVATIONS[name.lower()]()
