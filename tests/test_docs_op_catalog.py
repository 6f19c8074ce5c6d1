"""docs/wire-format.md's op catalog names every op of the engine's table (so a new op without a line there fails),
and its by-family list names no op the table lacks."""
from __future__ import annotations

import re
from pathlib import Path

from gradserve.engine import OPS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
CATALOG = DOC[DOC.index("## The op catalog"):DOC.index("## GradOperation")]
FAMILIES = CATALOG[CATALOG.index("Every op, by family"):CATALOG.index("**Convolution and pooling**")]


def _names(text: str) -> set[str]:
    """The backquoted identifiers of ``text`` that start with a capital letter (op names; attributes are lower case)."""
    return set(re.findall(r"`([A-Z][A-Za-z0-9]*)`", text))


def test_the_catalog_names_every_op_in_the_table() -> None:
    missing = sorted(set(OPS) - _names(CATALOG))
    assert not missing, f"docs/wire-format.md's op catalog does not name {missing}"


def test_the_family_list_names_only_ops_of_the_table() -> None:
    assert sorted(_names(FAMILIES) - set(OPS)) == ["ListOps"]  # the RPC the list points to
    assert len(_names(FAMILIES)) > 80
