"""Python's operators as graph ops, one table shared by the engine's Value and the client's Tensor.

Each class provides ``_apply(op, *inputs, **attrs)``, which adds (or runs) one op; ``/`` and ``**`` go through
``_divide`` and ``_power`` so that a class with its own dtype rules (the client's MindSpore semantics)
can supply them without a second table.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class Arithmetic:
    """``+ - * / ** @``, unary ``-`` and ``abs``; ``_apply`` is provided by the class using it."""

    __slots__ = ()

    @property
    def ndim(self) -> int:
        """The number of axes, which picks MatMul or BatchMatMul for ``@``; provided by the class."""
        raise NotImplementedError

    def _apply(self, op: str, *inputs: Any, **attrs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} provides no _apply for {op}")

    def _divide(self, x: Any, y: Any) -> Any:
        return self._apply("RealDiv", x, y)

    def _power(self, x: Any, y: Any) -> Any:
        return self._apply("Pow", x, y)

    def __add__(self, o: Any) -> Any:
        return self._apply("Add", self, o)

    def __radd__(self, o: Any) -> Any:
        return self._apply("Add", o, self)

    def __sub__(self, o: Any) -> Any:
        return self._apply("Sub", self, o)

    def __rsub__(self, o: Any) -> Any:
        return self._apply("Sub", o, self)

    def __mul__(self, o: Any) -> Any:
        return self._apply("Mul", self, o)

    def __rmul__(self, o: Any) -> Any:
        return self._apply("Mul", o, self)

    def __truediv__(self, o: Any) -> Any:
        return self._divide(self, o)

    def __rtruediv__(self, o: Any) -> Any:
        return self._divide(o, self)

    def __pow__(self, o: Any) -> Any:
        return self._power(self, o)

    def __rpow__(self, o: Any) -> Any:
        return self._power(o, self)

    def __matmul__(self, o: Any) -> Any:
        return self._apply("MatMul" if self.ndim == 2 and np.ndim(o) == 2 else "BatchMatMul", self, o)

    def __rmatmul__(self, o: Any) -> Any:
        return self._apply("MatMul" if self.ndim == 2 and np.ndim(o) == 2 else "BatchMatMul", o, self)

    def __neg__(self) -> Any:
        return self._apply("Neg", self)

    def __abs__(self) -> Any:
        return self._apply("Abs", self)


class Operators(Arithmetic):
    """Arithmetic plus ``== != < <= > >=`` as element-wise ops (hashing stays by identity): for array-like
    classes such as the client's Tensor; the engine's Value keeps identity equality, which graphs rely on."""

    __slots__ = ()

    __hash__ = object.__hash__

    def __eq__(self, o: Any) -> Any:
        return self._apply("Equal", self, o)

    def __ne__(self, o: Any) -> Any:
        return self._apply("NotEqual", self, o)

    def __lt__(self, o: Any) -> Any:
        return self._apply("Less", self, o)

    def __le__(self, o: Any) -> Any:
        return self._apply("LessEqual", self, o)

    def __gt__(self, o: Any) -> Any:
        return self._apply("Greater", self, o)

    def __ge__(self, o: Any) -> Any:
        return self._apply("GreaterEqual", self, o)
