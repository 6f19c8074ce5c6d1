"""The non-Parameter state a network's trace bakes in as constants: Tensor, NumPy-array and Python-number attributes
of its Cells, and the Tensors, arrays and numbers its construct (or function) reads from closures and globals,
following the Cells and functions those hold (``lambda x: net(x)`` depends on ``net``'s attributes and training
flag). A trace is reused only while this state is the same, so ``net.scale = Tensor([3.0])``, ``t[0] = 4.0`` or
``net.set_train(False)`` is seen by the next call."""
from __future__ import annotations

import hashlib
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import epoch
from .parameter import Parameter
from .tensor import Tensor

SCALARS = (bool, int, float, complex, str, bytes, type(None), np.generic)
"""Values compared by value (floats by their bits); NumPy arrays by their bytes (they may change in place); Tensors
by identity and ``version`` (which every in-place change moves)."""
MAX_ITEMS = 64
"""Most elements of one tuple or list attribute looked into."""
MAX_CODES = 64
"""Most functions and constructs whose closures and globals one network's state follows."""
LIBRARY = "gradserve."
"""Functions of this package read no user state: their closures and globals are not followed."""


@dataclass
class State:
    """What a trace read besides its inputs and Parameters: (where, value) pairs. Tensors, and Cells reached through
    closures and globals (whose Parameters the trace reads), are items by identity and held, so their identity
    cannot be taken over by a new object while the trace is cached."""

    items: tuple[tuple[str, Any], ...] = ()
    tensors: tuple[Tensor, ...] = field(default=(), repr=False)
    cells: tuple[Any, ...] = field(default=(), repr=False)

    def same(self, other: State) -> bool:
        """True when every item is the same Tensor object at the same version or an equal value, in the same place."""
        return self is other or self.items == other.items


def _scalar_key(v: Any) -> Any:
    return (type(v).__name__, np.asarray(v).tobytes() if isinstance(v, (float, complex, np.floating)) else v)


def _array_key(a: np.ndarray) -> Any:
    """A NumPy array by value (it may be changed in place): dtype, shape and a digest of its bytes."""
    digest = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
    return ("ndarray", a.dtype.str, a.shape, digest)


def _is_cell(v: Any) -> bool:
    return hasattr(type(v), "cells_and_names")


def _function(v: Any) -> types.FunctionType | None:
    """The Python function behind ``v`` (itself, a method's, or the one a jit function or a transform's staged
    network wraps) when its closure and globals may hold user state, else None."""
    for _ in range(8):
        own = getattr(v, "__dict__", None) if not isinstance(v, (types.FunctionType, types.ModuleType, type)) else None
        wrapped = own.get("wrapped") if isinstance(own, dict) else None
        if wrapped is None:
            break
        v = wrapped
    v = getattr(v, "__func__", v)
    if not isinstance(v, types.FunctionType) or (v.__module__ or "").startswith(LIBRARY):
        return None
    return v


_EMPTY = object()
"""An empty closure cell's or a deleted global's value."""


class _Read:
    """One closure variable or global a function's code names: where it is, and how to read it now."""

    __slots__ = ("where", "cell", "names", "name")

    def __init__(self, where: str, cell: Any, names: dict[str, Any] | None, name: str) -> None:
        self.where, self.cell, self.names, self.name = where, cell, names, name

    def get(self) -> Any:
        """The value now (``_EMPTY`` when there is none)."""
        if self.names is not None:
            return self.names.get(self.name, _EMPTY)
        try:
            return self.cell.cell_contents
        except ValueError:
            return _EMPTY


def _reads(where: str, fn: types.FunctionType) -> list[_Read]:
    """The closure variables of ``fn`` and the globals its code names (those that exist now: a name that is no
    global now was a builtin or an attribute when traced)."""
    code, names = fn.__code__, fn.__globals__
    out = [_Read(f"{where} <closure {n}>", c, None, n) for n, c in zip(code.co_freevars, fn.__closure__ or ())]
    return out + [_Read(f"{where} <global {n}>", None, names, n) for n in code.co_names if n in names]


class _Walk:
    """One collection of a network's state. ``deep``: Cells and functions reached through closures, globals and
    attributes are walked (their attributes, their code's reads); otherwise (the per-call re-read of what can change
    without moving the epoch) they are recorded by identity, since their own state is watched separately."""

    def __init__(self, deep: bool) -> None:
        self.deep = deep
        self.items: list[tuple[str, Any]] = []
        self.tensors: list[Tensor] = []
        self.lists: list[tuple[str, Any]] = []
        self.reads: list[_Read] = []
        self.codes = 0
        self.visited: set[int] = set()
        self.cells: list[Any] = []

    def value(self, where: str, v: Any, depth: int = 0) -> None:
        """Record ``v`` found at ``where``."""
        if isinstance(v, Parameter):
            return
        if isinstance(v, Tensor):
            if not v.is_traced:
                self.items.append((where, ("Tensor", id(v), v._version)))
                self.tensors.append(v)
        elif isinstance(v, SCALARS):
            self.items.append((where, _scalar_key(v)))
        elif isinstance(v, np.ndarray):
            self.items.append((where, _array_key(v)))
        elif isinstance(v, (tuple, list)):
            if depth < 2:
                self.items.append((where, (type(v).__name__, len(v))))
                for i, x in enumerate(v[:MAX_ITEMS]):
                    self.value(f"{where}[{i}]", x, depth + 1)
        elif _is_cell(v) or _function(v) is not None:
            if self.deep:
                self.reach(where, v)
            else:
                self.items.append((where, ("object", id(v))))

    def reach(self, where: str, v: Any) -> None:
        """Walk a Cell (its and its children's attributes and constructs) or a function (its closure and globals)
        reached at ``where``, once."""
        if id(v) in self.visited:
            self.items.append((where, ("seen", type(v).__qualname__)))
            return
        self.visited.add(id(v))
        if _is_cell(v):
            self.items.append((where, ("Cell", type(v), id(v) if where else None)))
            if where:
                self.cells.append(v)
            prefix = "" if not where else f"{where}."
            for path, cell in v.cells_and_names():
                self.visited.add(id(cell))
                at = f"{prefix}{path}." if path else prefix
                for key, x in vars(cell).items():
                    self.value(f"{at}{key}", x)
                    if _changeable(x):
                        self.lists.append((f"{at}{key}", x))
                self.code(f"{at}construct", getattr(type(cell), "construct", None), type(cell))
        else:
            self.code(where, v)

    def code(self, where: str, v: Any, owner: type | None = None) -> None:
        """Follow the closure and globals of the function behind ``v`` (a construct of class ``owner`` also follows
        the methods of ``owner`` its code names, as ``self.helper(x)`` calls)."""
        fn = _function(v)
        if fn is None or self.codes >= MAX_CODES:
            return
        self.codes += 1
        self.items.append((where, ("code", fn.__code__)))
        for read in _reads(where, fn):
            self.reads.append(read)
            value = read.get()
            if value is not _EMPTY:
                self.value(read.where, value)
        if owner is not None:
            for name in fn.__code__.co_names:
                method = getattr(owner, name, None)
                if name != "construct" and _function(method) is not None and id(method) not in self.visited:
                    self.visited.add(id(method))
                    self.code(f"{where} self.{name}", method)


def _code_holder(fn: Any) -> Any:
    """What holds the code whose closure and globals a network's state includes: a Cell's construct, else the
    function (the one a jit function or a transform's staged network wraps)."""
    while not _is_cell(fn) and getattr(fn, "wrapped", None) is not None:
        fn = fn.wrapped
    return type(fn).construct if _is_cell(fn) else fn


def _root(fn: Any) -> Any:
    """The Cell or function whose state stands for ``fn``'s."""
    while not _is_cell(fn) and getattr(fn, "wrapped", None) is not None:
        fn = fn.wrapped
    return fn


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
    through Cell's setters, which move the epoch (client/epoch.py); a Tensor's value changes in place only with its
    ``version``; closures, globals, and lists and arrays held by attributes change without either, so ``current``
    reads those again (a few lookups, an identity test for each closure and global value that cannot change in
    place), compares the held Tensors' versions, and walks the network only on a change. Each walk replaces one
    immutable snapshot (so threads calling at once each see a whole one)."""

    def __init__(self, fn: Any) -> None:
        self.snapshot = _Snapshot.of(fn)

    def current(self, fn: Any) -> State:
        """The state of ``fn`` (the network this watch was made for) now: the one recorded while nothing it depends
        on changed, else collected anew."""
        snap = self.snapshot
        if snap.epoch != epoch.value or not snap.same_code(fn) or not (snap.fixed or snap.holds()):
            snap = self.snapshot = _Snapshot.of(fn)
        return snap.state


def _shallow(where: str, v: Any) -> list[tuple[str, Any]]:
    """The items of a value that can change in place (a list, tuple or array), Cells and functions by identity."""
    walk = _Walk(deep=False)
    walk.value(where, v)
    return walk.items


@dataclass(frozen=True)
class _Snapshot:
    """A network's whole state at one epoch, and where it can change without moving the epoch: ``lists``, the list
    and array attributes with their items then; ``reads``, the closure variables and globals of its constructs and
    the functions they reach, each with the value it held (kept alive, so its identity cannot pass to a new object)
    and, for a list, tuple or array, its items then; ``versions``, the versions of the Tensors it holds."""

    epoch: int
    state: State
    holder: Callable[[], Any]
    lists: tuple[tuple[str, Any, list[tuple[str, Any]]], ...]
    reads: tuple[tuple[_Read, Any, list[tuple[str, Any]] | None], ...] = field(repr=False)
    versions: tuple[int, ...]
    cell_type: type | None = None
    """The Cell's class when ``fn`` is a Cell (whose code holder is that class's construct), else None."""
    fixed: bool = False
    """Nothing can change without moving the epoch (no lists, closures, globals or Tensors to read again)."""

    @staticmethod
    def of(fn: Any) -> _Snapshot:
        """Collect the whole state of ``fn``."""
        at = epoch.value
        walk = _Walk(deep=True)
        walk.reach("", _root(fn))
        holder = _code_holder(fn)
        try:
            ref: Callable[[], Any] = weakref.ref(holder)
        except TypeError:
            ref = lambda: holder  # noqa: E731  (not weakly referable: a builtin, which reads no state)
        state = State(tuple(walk.items), tuple(walk.tensors), tuple(walk.cells))
        lists = tuple((where, v, _shallow(where, v)) for where, v in walk.lists)
        reads = []
        for read in walk.reads:
            v = read.get()
            reads.append((read, v, _shallow(read.where, v) if isinstance(v, (list, tuple, np.ndarray)) else None))
        versions = _versions(state.tensors)
        fixed = not (lists or reads or versions)
        return _Snapshot(at, state, ref, lists, tuple(reads), versions, type(fn) if _is_cell(fn) else None, fixed)

    def same_code(self, fn: Any) -> bool:
        """True when ``fn``'s code holder is still the one walked (a Cell's class's construct, checked without
        unwrapping)."""
        cls = self.cell_type
        if cls is not None and fn.__class__ is cls:
            return cls.construct is self.holder()  # type: ignore[attr-defined]
        return self.holder() is _code_holder(fn)

    def holds(self) -> bool:
        """True when nothing that can change without moving the epoch has changed since the snapshot."""
        if self.versions and _versions(self.state.tensors) != self.versions:
            return False
        for read, v, items in self.reads:
            now = read.get()
            if now is not v or (items is not None and _shallow(read.where, now) != items):
                return False
        return all(_shallow(where, v) == items for where, v, items in self.lists)


def _versions(tensors: tuple[Tensor, ...]) -> tuple[int, ...]:
    return tuple(t._version for t in tensors)
