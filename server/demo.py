"""``gradserve demo``: the tutorial example through a real server, printed next to the tutorial's numbers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .app import running
from .config import ServerConfig
from .tutorial import EXPECTED, printed_blocks


def find_example() -> Path:
    """The tutorial example: in the source tree next to the package, or in the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        path = root / "examples" / "grad_operation_tutorial.py"
        if path.exists():
            return path
    raise SystemExit("gradserve demo: examples/grad_operation_tutorial.py not found; run it from the repository root")


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
