"""The non-Parameter state a network's trace bakes in as constants: Tensor, NumPy-array and Python-number attributes
of its Cells, and the Tensors, arrays and numbers its construct (or function) reads from closures and globals. A trace is reused only while
this state is the same, so ``net.scale = Tensor([3.0])`` is seen by the next call."""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .parameter import Parameter
from .tensor import Tensor

SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)
"""Values compared by value (floats by their bits); NumPy arrays by their bytes (they may change in place); Tensors
by identity (they are immutable)."""
MAX_ITEMS = 64
"""Most elements of one tuple or list attribute looked into."""


@dataclass
class State:
    """What a trace read besides its inputs and Parameters: (where, value) pairs. Tensors are held, so their
    identity cannot be taken over by a new object while the trace is cached."""

    items: tuple[tuple[str, Any], ...] = ()
    tensors: tuple[Tensor, ...] = field(default=(), repr=False)

    def same(self, other: State) -> bool:
        """True when every item is the same Tensor object or an equal value, in the same place."""
        return self.items == other.items


def _scalar_key(v: Any) -> Any:
    return (type(v).__name__, np.asarray(v).tobytes() if isinstance(v, (float, complex, np.floating)) else v)


def _array_key(a: np.ndarray) -> Any:
    """A NumPy array by value (it may be changed in place): dtype, shape and a digest of its bytes."""
    digest = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
    return ("ndarray", a.dtype.str, a.shape, digest)


def _collect(where: str, v: Any, items: list[tuple[str, Any]], tensors: list[Tensor], depth: int = 0) -> None:
    if isinstance(v, Parameter):
        return
    if isinstance(v, Tensor):
        if not v.is_traced:
            items.append((where, ("Tensor", id(v))))
            tensors.append(v)
    elif isinstance(v, SCALARS):
        items.append((where, _scalar_key(v)))
    elif isinstance(v, np.ndarray):
        items.append((where, _array_key(v)))
    elif isinstance(v, (tuple, list)) and depth < 2:
        items.append((where, (type(v).__name__, len(v))))
        for i, x in enumerate(v[:MAX_ITEMS]):
            _collect(f"{where}[{i}]", x, items, tensors, depth + 1)


def _code_reads(fn: Callable[..., Any], items: list[tuple[str, Any]], tensors: list[Tensor]) -> None:
    """The closure variables and globals a function's code names."""
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            _collect(f"<closure {name}>", cell.cell_contents, items, tensors)
        except ValueError:
            continue
    names = fn.__globals__
    for name in code.co_names:
        if name in names:
            _collect(f"<global {name}>", names[name], items, tensors)


def network_state(fn: Any) -> State:
    """The state of a Cell (its and its children's attributes, its construct's closure and globals) or function."""
    items: list[tuple[str, Any]] = []
    tensors: list[Tensor] = []
    if hasattr(fn, "cells_and_names"):
        for path, cell in fn.cells_and_names():
            for key, v in vars(cell).items():
                _collect(f"{path}.{key}" if path else key, v, items, tensors)
        _code_reads(type(fn).construct, items, tensors)
    else:
        _code_reads(getattr(fn, "wrapped", fn), items, tensors)
    return State(tuple(items), tuple(tensors))
