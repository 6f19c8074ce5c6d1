"""One counter for what a cached trace depends on besides values: Cell attributes and children, and each Parameter's
name, requires_grad, shape and dtype. Every change to them moves it, so the trace cache compares one number on each
call instead of walking the network again."""
from __future__ import annotations

import itertools

_counter = itertools.count(1)
value = 0
"""The current epoch: equal to an earlier reading while none of that state has changed since."""


def bump() -> None:
    """Record that a Cell attribute or a Parameter's name, requires_grad, shape or dtype changed."""
    global value
    value = next(_counter)
