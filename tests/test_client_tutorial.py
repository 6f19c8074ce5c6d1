"""The tutorial example prints the tutorial's numbers (and hand-derived ones for the extra sections)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from gradserve.server.tutorial import EXPECTED, printed_blocks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grad_operation_tutorial.py"

def test_example_prints_the_tutorial_numbers() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=True).stdout
    blocks = printed_blocks(out)
    assert [label for label, _ in blocks] == [label for _, label, _ in EXPECTED]
    for (label, got), (_, _, want) in zip(blocks, EXPECTED):
        np.testing.assert_allclose(got, np.ravel(want), rtol=1e-6, atol=1e-12, err_msg=label)
