"""The GradOperation tutorial's printed numbers (and hand-derived ones for the sections our example adds),
and the parser that reads them back from the example's output: one oracle for the demo and the tests."""
from __future__ import annotations

import re

import numpy as np

X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]])
GRAD_X = [[4.51, 2.7, 3.6000001], [4.51, 2.7, 3.6000001]]
GRAD_Y = np.repeat(X.sum(axis=0)[:, None], 3, axis=1).tolist()
"""d/dy sum((x z) @ y) with z = 1: every column of row i holds the sum of x's column i."""

EXPECTED: list[tuple[str, str, list]] = [
    ("In [2] d/dx", "", GRAD_X),
    ("In [3] d/dz", "", [21.536001]),
    ("In [4] sens_param", "", [[2.211, 0.51, 1.49], [5.5880003, 2.68, 4.0699997]]),
    ("In [5] stop_gradient", "", GRAD_X),
    ("In [6] without stop_gradient", "", [[9.02, 5.4, 7.2000003], [9.02, 5.4, 7.2000003]]),
    ("In [7] d2/dx2 sin", "", [-5.35897932e-08]),
    ("get_all dx", "get_all dx:", GRAD_X),
    ("get_all dy", "get_all dy:", GRAD_Y),
    ("get_all+get_by_list dx", "get_all+get_by_list dx:", GRAD_X),
    ("get_all+get_by_list dy", "get_all+get_by_list dy:", GRAD_Y),
    ("get_all+get_by_list dz", "get_all+get_by_list dz:", [21.536001]),
    ("d3/dx3 sin", "third derivative of sin at 3.1415926:", [-float(np.cos(3.1415926))]),
]
"""(section, label line printed before the result, expected numbers): the tutorial's printed numbers
for In [2]..In [7], hand-derived ones for the sections the example adds."""


def printed_blocks(text: str) -> list[tuple[str, np.ndarray]]:
    """Each printed array with the label line printed just before it (or '')."""
    blocks: list[tuple[str, np.ndarray]] = []
    label, depth = "", 0
    current: list[str] = []
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
