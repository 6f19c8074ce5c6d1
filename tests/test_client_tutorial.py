"""The tutorial example prints the tutorial's numbers (and hand-derived ones for the extra sections)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grad_operation_tutorial.py"

X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]])
GRAD_X = [[4.51, 2.7, 3.6000001], [4.51, 2.7, 3.6000001]]
# d/dy sum((x z) @ y) with z = 1: every column of row i holds the sum of x's column i.
GRAD_Y = np.repeat(X.sum(axis=0)[:, None], 3, axis=1)
EXPECTED = [
    ("", GRAD_X),  # In [2], the tutorial's printed numbers from here to In [7]
    ("", [21.536001]),  # In [3]
    ("", [[2.211, 0.51, 1.49], [5.5880003, 2.68, 4.0699997]]),  # In [4]
    ("", GRAD_X),  # In [5], stop_gradient
    ("", [[9.02, 5.4, 7.2000003], [9.02, 5.4, 7.2000003]]),  # In [6], without stop_gradient
    ("", [-5.35897932e-08]),  # In [7], second derivative of sin
    ("get_all dx:", GRAD_X),
    ("get_all dy:", GRAD_Y),
    ("get_all+get_by_list dx:", GRAD_X),
    ("get_all+get_by_list dy:", GRAD_Y),
    ("get_all+get_by_list dz:", [21.536001]),
    ("third derivative of sin at 3.1415926:", [-np.cos(3.1415926)]),
]


def printed_blocks(text: str) -> list[tuple[str, np.ndarray]]:
    """Each printed array with the label line printed just before it (or '')."""
    blocks, label, current, depth = [], "", [], 0
    for line in text.splitlines():
        if not current and not line.startswith("["):
            label = line.strip()
            continue
        current.append(line)
        depth += line.count("[") - line.count("]")
        if depth == 0:
            numbers = re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", " ".join(current))
            blocks.append((label, np.array([float(n) for n in numbers])))
            label, current = "", []
    return blocks


def test_example_prints_the_tutorial_numbers() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=True).stdout
    blocks = printed_blocks(out)
    assert [label for label, _ in blocks] == [label for label, _ in EXPECTED]
    for (label, got), (_, want) in zip(blocks, EXPECTED):
        np.testing.assert_allclose(got, np.ravel(want), rtol=1e-6, atol=1e-12, err_msg=label)
