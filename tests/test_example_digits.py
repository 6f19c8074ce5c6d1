"""examples/train_digits.py, run short as a user would: it starts its own server on a free port, trains, reports a
test accuracy well above chance, writes a real PNG and exits (its server shut down)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
MIN_ACCURACY = 85.0
"""Two epochs with the script's fixed seeds give 90.56% (the same on a server and embedded); chance is 10%."""


@pytest.mark.timeout(400)
def test_short_run_learns_and_draws_its_figure(tmp_path: Path) -> None:
    out = tmp_path / "figure" / "digits.png"
    env = {k: v for k, v in os.environ.items() if k != "GRADSERVE_TARGET"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^gradients from: local server started by this script at 127\.0\.0\.1:\d+ \(2 workers\)$",
                     done.stdout, re.M), done.stdout
    accuracy = re.search(r"^test accuracy: ([\d.]+)% \(360 images\) after 2 epochs$", done.stdout, re.M)
    assert accuracy and float(accuracy.group(1)) >= MIN_ACCURACY, done.stdout
    assert re.search(r"^time: [\d.]+ s, 90 steps, [\d.]+ steps/s \(batch 32\)$", done.stdout, re.M), done.stdout
    assert re.search(rf"^figure: {re.escape(str(out.resolve()))}$", done.stdout, re.M), done.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out).shape  # decodes every row: a truncated file fails here
    assert (width, height) == (900, 350)
