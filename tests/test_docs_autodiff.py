"""docs/autodiff.md: every example runs, in order in one session, and prints exactly the output shown after it."""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "autodiff.md"
PAIR = re.compile(r"```python\n(.*?)```\n\nOutput:\n\n```text\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(code, printed output) of each example, in document order."""
    return PAIR.findall(DOC.read_text())


def test_every_example_prints_what_the_page_shows(clean_context: None) -> None:
    """Each block's stdout equals the output block after it (the blocks share one namespace, like a session)."""
    pairs = examples()
    assert len(pairs) >= 6, "docs/autodiff.md lost its examples"
    env: dict = {}
    for i, (code, want) in enumerate(pairs):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"docs/autodiff.md example {i + 1}", "exec"), env)
        assert buf.getvalue() == want, f"example {i + 1} printed:\n{buf.getvalue()}\nthe page shows:\n{want}"


@pytest.mark.parametrize("name", ["grad", "value_and_grad", "jvp", "vjp", "jacfwd", "jacrev", "hessian"])
def test_each_transform_has_an_example(name: str) -> None:
    """The page shows every transform in code, not only in prose."""
    assert any(f"gs.{name}(" in code for code, _ in examples()), f"no example calls gs.{name}"
