"""Streaming calls: the results of a gradient function (or any network) over a sequence of batches, in order,
with several requests in flight at once on the remote backend (one GradStream), one by one on the embedded one.

Parameter writes (BatchNorm's moving statistics, Dropout's step counter) are applied for each batch in order, as its
result is given. A batch is prepared, and so reads the Parameters' values, when it is read ahead: with ``in_flight``
above 1 it reads the values from before the writes of up to ``in_flight - 1`` earlier batches whose results had not
arrived yet, the same lag as for weights changed during a stream."""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Iterable, Iterator

from .backend import Backend, Call, OutputTree
from .backends import get_backend
from .runner import apply_writes, traced_for, wrapped_leaves, writing_network_id
from .tracing import rebuild

Prepare = Callable[[Backend, tuple[Any, ...]], tuple[Call, Callable[[OutputTree], Any]]]
"""What a streamable function provides: for a backend and one batch's arguments, the call to make and the function
that turns its result into the Python result a direct call returns."""


def batch_args(batch: Any) -> tuple[Any, ...]:
    """One batch as the function's arguments: a tuple is the arguments, any other value the only one."""
    return batch if isinstance(batch, tuple) else (batch,)


def stream_prepared(prepare: Prepare, batches: Iterable[Any], in_flight: int = 4) -> Iterator[Any]:
    """For each batch in order, what calling the function on it returns; at most ``in_flight`` batches are read ahead
    of the results given (each is prepared, its parameters' values taken, when it is read)."""
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ValueError(f"stream: in_flight must be an int >= 1, got {in_flight!r}")
    backend = get_backend()
    finishers: collections.deque[Callable[[OutputTree], Any]] = collections.deque()

    def calls() -> Iterator[Call]:
        for batch in batches:
            call, finish = prepare(backend, batch_args(batch))
            finishers.append(finish)
            yield call

    for out in backend.stream(calls(), in_flight):
        yield finishers.popleft()(out)


def prepare_forward(fn: Any) -> Prepare:
    """The forward call of a Cell or traced function ``fn`` (as ``fn(*args)`` at top level runs it, writing the
    Parameters it writes when its result is given)."""
    def prepare(backend: Backend, args: tuple[Any, ...]) -> tuple[Call, Callable[[OutputTree], Any]]:
        entry = traced_for(fn, args)
        if entry.traced.writes:
            call = Call(writing_network_id(entry, backend), None, entry.inputs(args), entry.param_values())
            return call, lambda out: rebuild(entry.traced.skeleton, iter(apply_writes(entry.traced, out)))
        call = Call(entry.network_id(backend), None, entry.inputs(args), entry.param_values())
        return call, lambda out: rebuild(entry.traced.skeleton, iter(wrapped_leaves(out)))

    return prepare


def stream(fn: Any, batches: Iterable[Any], in_flight: int = 4) -> Iterator[Any]:
    """``fn(*batch)`` for each batch, in order, with up to ``in_flight`` calls in flight: ``fn`` is a gradient function
    (``GradOperation(...)(net)``, ``grad``, ``value_and_grad``: the same as its ``.stream``) or a Cell or function,
    whose forward outputs are streamed. Each batch is a tuple of arguments, or one argument."""
    prepare = getattr(fn, "prepare_call", None)
    return stream_prepared(functools.partial(prepare, write=True) if callable(prepare) else prepare_forward(fn),
                           batches, in_flight)
