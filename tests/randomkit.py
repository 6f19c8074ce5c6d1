"""The SDK's seeding of traced random draws, written out independently of client/functional.py: a call site's
seeds from its location, every site's first step from ``set_seed``'s seed, and the engine op's values at a step."""
from __future__ import annotations

import hashlib
import inspect
import os
from typing import Any, Callable

import numpy as np

from gradserve.engine import OPS


def first_step(seed: int) -> int:
    """The step every call site's counter starts at after ``set_seed(seed)``: SHA-256 of "gradserve random ops
    <seed>", its first 8 bytes as a little-endian int, shifted right by 2."""
    return int.from_bytes(hashlib.sha256(f"gradserve random ops {seed}".encode()).digest()[:8], "little") >> 2


def site_seeds(fn: Callable[..., Any], text: str, function: str | None = None) -> tuple[int, int]:
    """Seed0 and Seed1 of the call site on the one line of ``fn``'s source holding ``text`` (lines calling this
    helper aside), in the function named
    ``function`` (``fn``'s own by default; "<lambda>" for a lambda on that line): the first two little-endian 32-bit
    words of the SHA-256 of "<file name>:<line>:<function>" (no folder), each shifted right by 1."""
    lines, start = inspect.getsourcelines(fn)
    (line,) = [start + i for i, src in enumerate(lines) if text in src and "site_seeds(" not in src]
    site = f"{os.path.basename(fn.__code__.co_filename)}:{line}:{function or fn.__code__.co_name}"
    digest = hashlib.sha256(site.encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1, int.from_bytes(digest[4:8], "little") >> 1


def drawn(op: str, shape: tuple[int, ...], seeds: tuple[int, int], step: int, **attrs: Any) -> np.ndarray:
    """The engine op's values at these seeds and step (float32 unless ``dtype``; UniformInt takes minval, maxval)."""
    if op != "UniformInt":
        attrs = {"dtype": np.dtype(attrs.get("dtype", np.float32))}
    return OPS[op].forward(np.array(step, np.int64), shape=shape, Seed0=seeds[0], Seed1=seeds[1], **attrs)
