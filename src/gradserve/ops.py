"""``import gradserve.ops as ops``: a primitive class per engine op (``ops.MatMul``), lower-case functional forms
(``ops.matmul``, ``ops.stop_gradient``), ``ops.GradOperation`` and the functional transforms (``ops.grad``, ``ops.jvp``, ...). Ops are looked up in the engine's op table on
use, so ops added to the engine appear here without changes."""
from typing import Any

from gradserve.client.grad import GradOperation, grad, hessian, jacfwd, jacrev, jvp, value_and_grad, vjp
from gradserve.client.primitives import Primitive, lookup, public_names

__all__ = ["GradOperation", "Primitive", "grad", "hessian", "jacfwd", "jacrev", "jvp", "value_and_grad", "vjp"]


def __getattr__(name: str) -> Any:
    obj = lookup(name)
    if obj is None:
        raise AttributeError(f"module 'gradserve.ops' has no attribute {name!r} (no such op in the engine's table)")
    return obj


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(public_names()))
