"""Data parallelism over replicas: one gradient call whose batch is split along an axis across every server the
target names, computed at once, and the shards' gradients combined per the loss's reduction (``mean``: weighted by
each shard's share of the batch; ``sum``: added), so that the result equals the gradient of the whole batch.
``set_context(batch_split=True)`` sends every top-level weights' gradient call through here (``split_call``).

Parameter writes (BatchNorm's moving statistics, Dropout's step counter): a split call writes once, as the whole
call would, with the first shard's written values: every shard reads the same values before the call (so Dropout's
step advances once per call) and BatchNorm's moving statistics take the first shard's batch statistics. That is what
MindSpore's data parallelism without SyncBatchNorm keeps: each device updates its statistics from its own shard, and
device 0's are the ones its checkpoint saves. (A batch-weighted mean of the shards' statistics would not equal the
whole batch's either: the moving variance would miss the spread between the shards' means.)"""
from __future__ import annotations

import inspect
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from .backends import get_backend, register_batch_splitter
from .cell import Cell
from .grad import GradFunction, _GradFn
from .nn.loss import LossBase
from .runner import forward_recorded
from .tensor import Tensor

REDUCTIONS = ("mean", "sum")


def loss_reduction(fn: Any) -> str | None:
    """The reduction ('mean' or 'sum') of the one kind of loss Cell that ``fn`` uses, when it can be seen: a Cell's
    descendants, or the Cells a function holds in its closure or names as globals; None when there is none or
    several kinds."""
    roots: list[Any] = [fn]
    if inspect.isfunction(fn):
        names = inspect.getclosurevars(fn)
        roots += [*names.nonlocals.values(), *names.globals.values()]
    found = {cell.reduction for root in roots if isinstance(root, Cell)
             for _, cell in root.cells_and_names() if isinstance(cell, LossBase)}
    return found.pop() if len(found) == 1 and found <= set(REDUCTIONS) else None


class DataParallel:
    """``data_parallel(grad_fn, axis=0, reduction=None, shards=None)``: call it as ``grad_fn``. Each Tensor argument
    whose size along ``axis`` is the batch size (that of the first Tensor argument) is cut into ``shards`` nearly
    equal pieces (default: one per replica of the current target, 1 on the embedded engine); other arguments go
    whole to every shard. Only weights' gradients combine this way, so ``grad_fn`` must differentiate weights only:
    ``GradOperation(get_by_list=True)`` (its sens, when ``sens_param``, a scalar given whole to every shard, as
    ``TrainOneStepCell``'s) or ``grad``/``value_and_grad`` with ``grad_position=None``. Gradients are
    summed, weighted by each shard's share of the batch for ``reduction='mean'``; a value (``value_and_grad``'s
    outputs, ``has_aux``'s aux) that is a scalar is reduced the same way, any other is concatenated along ``axis``
    (a per-sample output). ``reduction=None`` takes the loss Cell's own (see ``loss_reduction``). A replica that
    fails with UNAVAILABLE (stopped, unreachable) has its shard computed by the next one. Parameter writes: see the
    module's docstring."""

    def __init__(self, grad_fn: Any, axis: int = 0, reduction: str | None = None, shards: int | None = None) -> None:
        self.grad_fn, self.axis, self.shards = grad_fn, axis, shards
        self.split_result = _result_kinds(grad_fn)
        if reduction is None:
            reduction = loss_reduction(grad_fn.fn)
            if reduction is None:
                raise ValueError(f"data_parallel: cannot tell whether the loss of {getattr(grad_fn.fn, '__name__', grad_fn.fn)!r} "
                                 "averages or sums over the batch; pass reduction='mean' or reduction='sum'")
        if reduction not in REDUCTIONS:
            raise ValueError(f"data_parallel: reduction must be 'mean' or 'sum', got {reduction!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"data_parallel: axis must be an int, got {axis!r}")
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
            raise ValueError(f"data_parallel: shards must be None or an int >= 1, got {shards!r}")
        self.reduction = reduction

    def __call__(self, *args: Any) -> Any:
        backend = get_backend()
        inputs, sens = self.split_args(args)
        batch = self._batch_size(inputs)
        replicas = backend.replicas()
        count = min(batch, self.shards or replicas)
        bounds = np.linspace(0, batch, count + 1).round().astype(int)
        sizes = [int(b - a) for a, b in zip(bounds[:-1], bounds[1:])]
        # a forward of the same inputs just run and recorded (TrainOneStepCell's) wrote already: every shard reads
        # what it read; otherwise the first shard writes (module docstring)
        read = forward_recorded(self.grad_fn.fn, inputs)
        prepared = [self.grad_fn.prepare_call(backend, (*self._shard(inputs, batch, int(a), int(b)), *sens),
                                              write=i == 0 and read is None, read=read)
                    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        if replicas == 1 or count == 1:
            outs = [backend.call_on(i, call) for i, (call, _) in enumerate(prepared)]
        else:
            pool = _pool(count)
            futures = [pool.submit(backend.call_on, i, call) for i, (call, _) in enumerate(prepared)]
            outs = [f.result() for f in futures]
        results = [finish(out) for (_, finish), out in zip(prepared, outs)]
        weights = [s / batch if self.reduction == "mean" else 1.0 for s in sizes]
        return self.split_result(results, lambda leaves, value: self._combine(leaves, weights, value))

    def split_args(self, args: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The inputs to split and the sens (empty, or one scalar given whole to every shard)."""
        if not (isinstance(self.grad_fn, GradFunction) and self.grad_fn.op.sens_param):
            return tuple(args), ()
        if not args:
            raise TypeError("data_parallel: GradOperation(sens_param=True) needs the inputs followed by sens")
        sens = args[-1]
        if np.size(sens.asnumpy() if isinstance(sens, Tensor) else sens) != 1:
            raise ValueError("data_parallel: sens must be a scalar (it scales every shard's loss); a sens of shape "
                             f"{np.shape(sens.asnumpy() if isinstance(sens, Tensor) else sens)} does not split")
        return tuple(args[:-1]), (sens,)

    def check(self, args: Sequence[Any]) -> None:
        """Raise ValueError or TypeError when these arguments cannot be split (as ``__call__`` would)."""
        self._batch_size(self.split_args(args)[0])

    def _batch_size(self, args: Sequence[Any]) -> int:
        for a in args:
            if isinstance(a, Tensor):
                if a.ndim <= self.axis or a.shape[self.axis] == 0:
                    raise ValueError(f"data_parallel: the first Tensor argument has shape {a.shape}, nothing to split along axis {self.axis}")
                return int(a.shape[self.axis])
        raise TypeError("data_parallel: no Tensor argument to split")

    def _shard(self, args: Sequence[Any], batch: int, a: int, b: int) -> tuple[Any, ...]:
        """The arguments of one shard: rows ``a:b`` along the axis of each batched Tensor."""
        return tuple(Tensor(np.take(x.asnumpy(), np.arange(a, b), axis=self.axis))
                     if isinstance(x, Tensor) and x.ndim > self.axis and x.shape[self.axis] == batch else x
                     for x in args)

    def _combine(self, leaves: list[Tensor], weights: list[float], value: bool) -> Tensor:
        """One result leaf from the shards' leaves: a weighted sum, or (a non-scalar value) their concatenation."""
        arrays = [t.asnumpy() for t in leaves]
        if value and arrays[0].ndim:
            return Tensor(np.concatenate(arrays, axis=self.axis))
        dtype = arrays[0].dtype
        total = sum(np.asarray(a, np.float64) * w for a, w in zip(arrays, weights))
        return Tensor(np.asarray(total).astype(dtype))


def _result_kinds(grad_fn: Any) -> Callable[[list[Any], Callable[[list[Tensor], bool], Tensor]], Any]:
    """How the results of ``grad_fn`` combine: ``combine(shards' results, leaf(leaves, is_value))``; refuses what
    cannot be split (inputs' gradients, sens, ids)."""
    if isinstance(grad_fn, GradFunction):
        op = grad_fn.op
        if not op.get_by_list or op.get_all:
            raise ValueError("data_parallel: a GradOperation must be GradOperation(get_by_list=True) (weights' gradients "
                             "only): inputs' gradients do not add up over a split batch")
        return lambda rs, leaf: _map(rs, lambda ls: leaf(ls, False))
    if isinstance(grad_fn, _GradFn):
        if grad_fn.positions is not None or grad_fn.return_ids:
            raise ValueError("data_parallel: grad/value_and_grad must have grad_position=None and return_ids=False "
                             "(weights' gradients only: inputs' gradients do not add up over a split batch)")
        if grad_fn.value:
            return lambda rs, leaf: (_map([r[0] for r in rs], lambda ls: leaf(ls, True)),
                                     _map([r[1] for r in rs], lambda ls: leaf(ls, False)))
        if grad_fn.has_aux:
            return lambda rs, leaf: (_map([r[0] for r in rs], lambda ls: leaf(ls, False)),
                                     _map([r[1] for r in rs], lambda ls: leaf(ls, True)))
        return lambda rs, leaf: _map(rs, lambda ls: leaf(ls, False))
    raise TypeError(f"data_parallel: needs what GradOperation, grad or value_and_grad return, got {type(grad_fn).__name__}")


def _map(trees: list[Any], leaf: Callable[[list[Tensor]], Tensor]) -> Any:
    """``leaf`` applied across the same position of several trees of tuples, lists and dicts of Tensors."""
    first = trees[0]
    if isinstance(first, Tensor):
        return leaf(trees)
    if isinstance(first, (tuple, list)):
        return type(first)(_map([t[i] for t in trees], leaf) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _map([t[k] for t in trees], leaf) for k in first}
    return first


_POOL: list[Any] = [None, 0]
_POOL_LOCK = threading.Lock()


def _pool(count: int) -> ThreadPoolExecutor:
    """The threads that make the shards' calls at once, shared by every split call (one per shard, grown as needed)."""
    with _POOL_LOCK:
        if _POOL[1] < count:
            if _POOL[0] is not None:
                _POOL[0].shutdown(wait=False)
            _POOL[:] = [ThreadPoolExecutor(max_workers=count, thread_name_prefix="data_parallel"), count]
        return _POOL[0]  # type: ignore[no-any-return]


_SPLITS: weakref.WeakKeyDictionary[Any, DataParallel | None] = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def split_call(grad_fn: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    """``set_context(batch_split=True)``'s path for a top-level gradient call: ``(True, result)`` split across the
    target's replicas when it has several, else ``(False, None)``: a call that cannot be split (inputs' gradients, a
    non-scalar sens, a loss whose reduction cannot be seen, no batched Tensor) runs whole on one replica, with a
    warning once per reason, so that a training script works unchanged with the flag on."""
    if get_backend().replicas() < 2:
        return False, None
    if grad_fn not in _SPLITS:
        try:
            _SPLITS[grad_fn] = DataParallel(grad_fn)
        except (TypeError, ValueError) as exc:
            _SPLITS[grad_fn] = None
            _warn_once(exc)
    parallel = _SPLITS[grad_fn]
    if parallel is None:
        return False, None
    try:
        parallel.check(args)
    except (TypeError, ValueError) as exc:
        _warn_once(exc)
        return False, None
    return True, parallel(*args)


def _warn_once(exc: Exception) -> None:
    """Warn, once per message, that a gradient call runs whole on one replica although batch_split is on."""
    message = f"batch_split: this gradient call runs whole on one replica: {exc}"
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)


register_batch_splitter(split_call)


def data_parallel(grad_fn: Any, axis: int = 0, reduction: str | None = None, shards: int | None = None) -> DataParallel:
    """``grad_fn`` with its batch split along ``axis`` across the target's replicas at once (see ``DataParallel``)."""
    return DataParallel(grad_fn, axis, reduction, shards)
