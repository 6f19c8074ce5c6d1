"""Data parallelism over replicas: one gradient call whose batch is split along an axis across every server the
target names, computed at once, and the shards' gradients combined per the loss's reduction (``mean``: weighted by
each shard's share of the batch; ``sum``: added), so that the result equals the gradient of the whole batch."""
from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from .cell import Cell
from .context import get_backend
from .grad import GradFunction, _GradFn
from .nn.loss import LossBase
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
    ``GradOperation(get_by_list=True)`` or ``grad``/``value_and_grad`` with ``grad_position=None``. Gradients are
    summed, weighted by each shard's share of the batch for ``reduction='mean'``; a value (``value_and_grad``'s
    outputs, ``has_aux``'s aux) that is a scalar is reduced the same way, any other is concatenated along ``axis``
    (a per-sample output). ``reduction=None`` takes the loss Cell's own (see ``loss_reduction``). A replica that
    fails with UNAVAILABLE (stopped, unreachable) has its shard computed by the next one."""

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
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def __call__(self, *args: Any) -> Any:
        backend = get_backend()
        batch = self._batch_size(args)
        replicas = backend.replicas()
        count = min(batch, self.shards or replicas)
        bounds = np.linspace(0, batch, count + 1).round().astype(int)
        sizes = [int(b - a) for a, b in zip(bounds[:-1], bounds[1:])]
        prepared = [self.grad_fn.prepare_call(backend, self._shard(args, batch, int(a), int(b)))
                    for a, b in zip(bounds[:-1], bounds[1:])]
        if replicas == 1 or count == 1:
            outs = [backend.call_on(i, call) for i, (call, _) in enumerate(prepared)]
        else:
            if self._pool is None or self._pool_size < count:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool, self._pool_size = ThreadPoolExecutor(max_workers=count, thread_name_prefix="data_parallel"), count
            futures = [self._pool.submit(backend.call_on, i, call) for i, (call, _) in enumerate(prepared)]
            outs = [f.result() for f in futures]
        results = [finish(out) for (_, finish), out in zip(prepared, outs)]
        weights = [s / batch if self.reduction == "mean" else 1.0 for s in sizes]
        return self.split_result(results, lambda leaves, value: self._combine(leaves, weights, value))

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
        if not op.get_by_list or op.get_all or op.sens_param:
            raise ValueError("data_parallel: a GradOperation must be GradOperation(get_by_list=True) (weights' gradients "
                             "only, no sens): inputs' gradients do not add up over a split batch")
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


def data_parallel(grad_fn: Any, axis: int = 0, reduction: str | None = None, shards: int | None = None) -> DataParallel:
    """``grad_fn`` with its batch split along ``axis`` across the target's replicas at once (see ``DataParallel``)."""
    return DataParallel(grad_fn, axis, reduction, shards)
