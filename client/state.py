"""The non-Parameter state a network's trace bakes in as constants: Tensor, NumPy-array and Python-number attributes
of its Cells, and the Tensors, arrays and numbers its construct (or function) reads from closures and globals. A trace is reused only while
this state is the same, so ``net.scale = Tensor([3.0])`` is seen by the next call."""
from __future__ import annotations

import hashlib
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import epoch
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
        return self is other or self.items == other.items


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


def _code_reads(fn: Any, items: list[tuple[str, Any]], tensors: list[Tensor]) -> None:
    """The closure variables and globals a function's code names."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        _reads(code, fn.__closure__, fn.__globals__, items, tensors)


def _reads(code: Any, closure: Any, names: dict[str, Any], items: list[tuple[str, Any]], tensors: list[Tensor]) -> None:
    for name, cell in zip(code.co_freevars, closure or ()):
        try:
            _collect(f"<closure {name}>", cell.cell_contents, items, tensors)
        except ValueError:
            continue
    for name in code.co_names:
        if name in names:
            _collect(f"<global {name}>", names[name], items, tensors)


def _code_holder(fn: Any) -> Any:
    """What holds the code whose closure and globals a network's state includes: a Cell's construct, else the
    function (the one a jit function wraps)."""
    return type(fn).construct if hasattr(fn, "cells_and_names") else getattr(fn, "wrapped", fn)


IN_PLACE = (list, np.ndarray)
"""Attribute values whose collected items can change without an assignment (read again on every call)."""


def _changeable(v: Any) -> bool:
    """True for an attribute value whose collected items can change in place: a list or a NumPy array, or a tuple
    holding one."""
    return isinstance(v, IN_PLACE) or (isinstance(v, tuple) and any(isinstance(x, IN_PLACE) for x in v[:MAX_ITEMS]))


def network_state(fn: Any) -> State:
    """The state of a Cell (its and its children's attributes, its construct's closure and globals) or function."""
    return _Snapshot.of(fn).state


class StateWatch:
    """A network's state, and what must be read again to know that it still holds. Cell attributes change only
    through Cell's setters, which move the epoch (client/epoch.py); closures, globals, and lists and arrays held by
    attributes change without them, so ``current`` reads those again (a few lookups) and walks the network only on a
    change. Each walk replaces one immutable snapshot (so threads calling at once each see a whole one), and nothing
    here refers to the network itself (trace caches are weakly keyed by it)."""

    def __init__(self, fn: Any) -> None:
        self.snapshot = _Snapshot.of(fn)

    def current(self, fn: Any) -> State:
        """The state of ``fn`` (the network this watch was made for) now: the one recorded while nothing it depends
        on changed, else collected anew."""
        snap = self.snapshot
        if snap.epoch != epoch.value or snap.holder() is not _code_holder(fn) or snap.volatile() != snap.seen:
            snap = self.snapshot = _Snapshot.of(fn)
        return snap.state


@dataclass(frozen=True)
class _Snapshot:
    """A network's whole state at one epoch, where it can change without moving the epoch (``lists``: list and
    array attributes; ``code``: the code, closure and globals its construct or function reads), and what those held."""

    epoch: int
    state: State
    holder: Callable[[], Any]
    lists: tuple[tuple[str, Any], ...]
    code: tuple[Any, Any, dict[str, Any]] | None
    seen: list[tuple[str, Any]] = field(default_factory=list)

    @staticmethod
    def of(fn: Any) -> _Snapshot:
        """Collect the whole state of ``fn``."""
        at = epoch.value
        items: list[tuple[str, Any]] = []
        tensors: list[Tensor] = []
        lists: list[tuple[str, Any]] = []
        if hasattr(fn, "cells_and_names"):
            for path, cell in fn.cells_and_names():
                for key, v in vars(cell).items():
                    where = f"{path}.{key}" if path else key
                    _collect(where, v, items, tensors)
                    if _changeable(v):
                        lists.append((where, v))
        holder = _code_holder(fn)
        try:
            ref: Callable[[], Any] = weakref.ref(holder)
        except TypeError:
            ref = lambda: holder  # noqa: E731  (not weakly referable: a builtin, which reads no state)
        code = inspect.unwrap(getattr(holder, "__func__", holder))
        reads = (code.__code__, code.__closure__, code.__globals__) if hasattr(code, "__code__") else None
        _code_reads(code, items, tensors)
        snap = _Snapshot(at, State(tuple(items), tuple(tensors)), ref, tuple(lists), reads)
        snap.seen.extend(snap.volatile())
        return snap

    def volatile(self) -> list[tuple[str, Any]]:
        """The items that can change without moving the epoch (lists, arrays, closures, globals), as they are now."""
        items: list[tuple[str, Any]] = []
        tensors: list[Tensor] = []
        for where, v in self.lists:
            _collect(where, v, items, tensors)
        if self.code is not None:
            _reads(*self.code, items, tensors)
        return items
