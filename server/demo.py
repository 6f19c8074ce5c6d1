"""``gradserve demo``: the tutorial example through a real server, printed next to the tutorial's numbers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from .app import running
from .config import ServerConfig

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


def find_example() -> Path:
    """The tutorial example: in the source tree next to the package, or in the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        path = root / "examples" / "grad_operation_tutorial.py"
        if path.exists():
            return path
    raise SystemExit("gradserve demo: examples/grad_operation_tutorial.py not found; run it from the repository root")


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


def compare(text: str) -> list[tuple[str, np.ndarray | None, np.ndarray, bool]]:
    """(section, served numbers, expected numbers, match) for every expected section."""
    blocks = printed_blocks(text)
    rows = []
    for k, (section, label, want) in enumerate(EXPECTED):
        expected = np.ravel(np.array(want, dtype=float))
        got = blocks[k][1] if k < len(blocks) and blocks[k][0] == label else None
        ok = got is not None and got.shape == expected.shape and bool(np.allclose(got, expected, rtol=1e-6, atol=1e-12))
        rows.append((section, got, expected, ok))
    return rows


def _text(a: np.ndarray | None) -> str:
    return "missing" if a is None else np.array2string(a, precision=7, separator=", ")


def run(workers: int = 2) -> int:
    """Start a server on a free port, run the example against it, print the comparison; 0 if all match."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=workers)) as server:
        port = server.port
        env = dict(os.environ, GRADSERVE_TARGET=f"127.0.0.1:{port}")
        proc = subprocess.run([sys.executable, str(find_example())], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)
        return proc.returncode
    rows = compare(proc.stdout)
    print(f"tutorial run through gradserve at 127.0.0.1:{port} (gRPC), {workers} workers\n")
    for section, got, want, ok in rows:
        print(f"{'ok ' if ok else 'BAD'} {section}\n    served:   {_text(got)}\n    tutorial: {_text(want)}")
    bad = sum(not ok for *_, ok in rows)
    print(f"\n{len(rows) - bad}/{len(rows)} sections match the tutorial")
    return 1 if bad else 0
