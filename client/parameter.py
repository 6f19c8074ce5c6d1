"""Parameter (a named Tensor whose value a network reads at run time) and ParameterTuple."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import epoch
from .tensor import Tensor, _array_from, _versions

DEFAULT_NAME = "Parameter"
"""MindSpore's name for a Parameter created without one; a Cell renames it after the attribute holding it."""
VALUE_KEYS = frozenset({"_value", "_frame", "_version"})
"""Attributes that change with a Parameter's value (item assignment rebinds them), not with what a trace holds."""


class Parameter(Tensor):
    """``Parameter(default_input, name=None, requires_grad=True)``: a network weight, passed to the graph by name."""

    def __init__(self, default_input: Any, name: str | None = None, requires_grad: bool = True) -> None:
        super().__init__(default_input)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Parameter name must be a str, got {type(name).__name__}")
        self.name = name or DEFAULT_NAME
        self.requires_grad = bool(requires_grad)

    def __setattr__(self, key: str, value: Any) -> None:
        """Every change moves ``version``; a new name, requires_grad, shape or dtype also moves the trace epoch."""
        if key == "_version":
            object.__setattr__(self, key, value)
            return
        if key not in VALUE_KEYS and (key != "_array" or not _same_layout(self.__dict__.get("_array"), value)):
            epoch.bump()
        object.__setattr__(self, key, value)
        object.__setattr__(self, "_version", next(_versions))

    @property
    def data(self) -> Parameter:
        """The parameter itself (MindSpore's ``param.data``)."""
        return self

    def set_data(self, data: Any) -> Parameter:
        """Replace the value (same shape; cast to the parameter's dtype); the next run uses it without retracing."""
        arr = _array_from(data, None)
        if arr.shape != self.shape:
            raise ValueError(f"Parameter {self.name!r}: set_data got shape {arr.shape}, the parameter has shape {self.shape}")
        arr = arr.astype(self._array_dtype(), copy=False)
        arr.setflags(write=False)
        self._array = arr
        return self

    def array(self) -> np.ndarray:
        """The current value as a read-only array (a new object after every set_data)."""
        return self._array  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Parameter (name={self.name}, shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"


def _same_layout(old: np.ndarray | None, new: np.ndarray | None) -> bool:
    """True when a new value has the shape and dtype of the old one (so a trace over the parameter still holds)."""
    return old is not None and new is not None and old.shape == new.shape and old.dtype == new.dtype


class ParameterTuple(tuple):
    """An immutable tuple of Parameters, for ``GradOperation(get_by_list=True)(net, params)``."""

    def __new__(cls, iterable: Iterable[Parameter]) -> ParameterTuple:
        items = tuple(iterable)
        for i, p in enumerate(items):
            if not isinstance(p, Parameter):
                raise TypeError(f"ParameterTuple item {i} must be a Parameter, got {type(p).__name__}")
        return super().__new__(cls, items)
