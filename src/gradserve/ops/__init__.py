"""``import gradserve.ops as ops``: a primitive class per engine op (``ops.MatMul``), the lower-case functions named by
the ops' ``functional`` fields (``ops.matmul``, ``ops.cat``), MindSpore 2.x's other functions (``ops.sum``, ``ops.split``,
``ops.topk``, ...),
``ops.assign``/``ops.Assign`` (a Parameter's new value, written after the call when traced), ``ops.GradOperation`` and
the functional transforms (``ops.grad``, ``ops.jvp``, ...). Ops are looked up in the engine's op table on use, so ops
added to the engine appear here without changes."""
from typing import Any

from gradserve.client.functional import FUNCTIONS
from gradserve.client.grad import GradOperation, grad, hessian, jacfwd, jacrev, jvp, value_and_grad, vjp
from gradserve.client.nn.wrap import clip_by_global_norm
from gradserve.client.primitives import Primitive, lookup, public_names
from gradserve.client.runner import assign

__all__ = [
    "Assign", "GradOperation", "Primitive", "assign", "clip_by_global_norm", "grad", "hessian", "jacfwd", "jacrev", "jvp", "value_and_grad", "vjp",
]


class Assign:
    """MindSpore's ``ops.Assign()``: ``Assign()(variable, value)`` is ``ops.assign(variable, value)``."""

    def __call__(self, variable: Any, value: Any) -> Any:
        return assign(variable, value)


def __getattr__(name: str) -> Any:
    obj = FUNCTIONS.get(name) or lookup(name)
    if obj is None:
        raise AttributeError(f"module 'gradserve.ops' has no attribute {name!r} (no such op in the engine's table)")
    return obj


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(public_names()) | set(FUNCTIONS))
