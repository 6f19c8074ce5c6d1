"""``jit`` (and its older name ``ms_function``): a function or ``construct`` run as one traced, cached graph."""
from __future__ import annotations

import functools
from typing import Any, Callable

from .runner import run_network
from .tracing import current_frame

JIT_OPTIONS = frozenset({
    "capture_mode", "jit_level", "dynamic", "fullgraph", "backend", "mode", "input_signature", "hash_args",
    "jit_config", "compile_once", "options", "infer_boost", "exc_mode",
})
"""MindSpore's keyword arguments of ``jit`` and ``ms_function``: accepted; every jit function here is traced into
an engine graph, cached per input signature, network state and guarded values, whatever they say."""


class JitFunction:
    """A function that runs as one graph when called outside a trace and is inlined when called inside one.
    As a method (``@jit def construct(self, ...)``) it is inlined when its Cell is traced and runs op by op
    (PyNative) when called directly."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.wrapped = fn
        self.options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{self.wrapped.__qualname__}: pass inputs positionally (got keywords {sorted(kwargs)})")
        if current_frame() is not None:
            return self.wrapped(*args)
        return run_network(self, args)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.wrapped, obj)


def jit(function: Callable[..., Any] | None = None, *args: Any, **options: Any) -> Any:
    """``@jit``, ``@jit(...)`` or ``jit(fn, ...)`` with MindSpore's keyword arguments."""
    if args:
        raise TypeError("jit takes the function positionally and its options as keywords")
    unknown = sorted(set(options) - JIT_OPTIONS)
    if unknown:
        raise TypeError(f"jit: unknown keyword argument(s) {unknown}; MindSpore's are {sorted(JIT_OPTIONS)}")
    if function is None:
        return lambda fn: JitFunction(fn, options)
    if not callable(function):
        raise TypeError(f"jit decorates a function or a construct method, got {type(function).__name__}")
    return JitFunction(function, options)


def ms_function(fn: Callable[..., Any] | None = None, input_signature: Any = None, hash_args: Any = None,
                jit_config: Any = None) -> Any:
    """MindSpore 1.x/2.0's name for ``jit``."""
    return jit(fn, input_signature=input_signature, hash_args=hash_args, jit_config=jit_config)
