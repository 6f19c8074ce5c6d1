"""``gradserve.ops.composite``: MindSpore's module of composite operations (``from mindspore.ops import composite as C``; ``C.GradOperation``), so scripts importing it run unchanged; every name resolves as in ``gradserve.ops``."""
from typing import Any

import gradserve.ops as _ops


def __getattr__(name: str) -> Any:
    return getattr(_ops, name)


def __dir__() -> list[str]:
    return dir(_ops)
