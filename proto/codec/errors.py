"""The codec's errors (a field path and a message, ready for a google.rpc.BadRequest) and the text
helpers their messages share."""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence

import numpy as np

from gradserve.engine.errors import NAME_LIMIT, shown


class WireError(ValueError):
    """A message that breaks the wire contract; ``field`` is the offending field's path (INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str, node: str = "") -> None:
        self.field = field
        self.description = f"{node}: {message}" if node else message
        super().__init__(f"{field} {self.description}" if node else f"{field}: {message}")


class LimitError(WireError):
    """A message beyond a configured size or nesting limit (RESOURCE_EXHAUSTED)."""


HINT_CANDIDATES = 1000
"""Most known names a "did you mean" hint compares a name with, so that a hint costs little whatever the graph's size."""


def names_hint(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'a', 'b'?`` for the closest known names, or an empty string. Only names whose length
    allows a match are compared, at most HINT_CANDIDATES of them, and none for a name too long to echo."""
    if len(name) > NAME_LIMIT:
        return ""
    near = [k for k in known if 2 * min(len(k), len(name)) >= 0.6 * (len(k) + len(name))]  # difflib's own first filter
    close = difflib.get_close_matches(name, near[:HINT_CANDIDATES], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(map(shown, close))}?" if close else ""


def bare(name: str) -> str:
    """A caller's name unquoted where messages list names plainly, or :func:`shown` when too long to echo."""
    return name if len(name) <= NAME_LIMIT else shown(name)


def field_key(name: str) -> str:
    """A map key as written in field paths: ``["name"]`` (a name too long to echo is cut, with ``...``)."""
    cut = name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT] + "..."
    return '["' + cut.replace("\\", "\\\\").replace('"', '\\"') + '"]'


def type_text(dt: np.dtype, shape: Sequence[int]) -> str:
    """``float32[2,3]``: a type as error messages spell it for readers of any language."""
    return f"{dt.name}[{','.join(map(str, shape))}]"
