"""A process that runs programs keeps the pages its intermediates freed for the next run (engine/heap.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RUNS = 20
FAULTS = """
import json, resource, sys
import numpy as np
from gradserve.engine import GraphBuilder, compile_graph
b = GraphBuilder()
x = b.input("x", "float32", (1000, 64))
ys = [b.op("Tanh", x * float(k)) for k in range(1, 9)]
out = b.op("ReduceSum", b.op("AddN", *[ys[i] * ys[-1 - i] for i in range(8)]))
program = compile_graph(b.build(out))
data = np.linspace(-1, 1, 64000, dtype=np.float32).reshape(1000, 64)
for _ in range(5):
    program(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[1])):
    program(data)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def page_faults(env: dict[str, str]) -> int:
    """Minor page faults of RUNS runs of a program whose 256 KiB intermediates live together, in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FAULTS, str(RUNS)], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return int(json.loads(out.stdout))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_programs_intermediates_reuse_the_pages_the_last_run_freed() -> None:
    # glibc's default thresholds (128 KiB), fixed by its own variables, which keep_heap leaves alone: each run maps its
    # intermediates afresh, a page fault per 4 KiB of each (63 for one 1000x64 float32 array, 256000 bytes and its header).
    assert page_faults({"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}) >= 64 * RUNS
    assert page_faults({}) < RUNS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_glibc_tunables_setting_a_threshold_win_over_keep_heap() -> None:
    # The same 128 KiB thresholds as glibc tunables, the other way glibc reads them: keep_heap leaves them alone too.
    tunables = "glibc.malloc.check=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072"
    assert page_faults({"GLIBC_TUNABLES": tunables}) >= 64 * RUNS
