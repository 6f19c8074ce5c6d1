"""The package, installed as a user gets it, type-checks with mypy (generated protobuf stubs aside)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_type_checks(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    assert (site / "gradserve" / "py.typed").exists()
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                                str(site / "gradserve")])
    assert status == 0, out + err
