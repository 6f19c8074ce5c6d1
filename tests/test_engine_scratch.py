"""OpDef.scratch_bytes: a convolution's or a pooling's temporaries, which grow with the kernel and output
geometry rather than with input 0, are counted in peak_bytes, checked against tracemalloc's measured peak."""
from __future__ import annotations

import numpy as np
import pytest
from enginekit import measured_peak

from gradserve.engine.builder import GraphBuilder
from gradserve.engine.compiler import compile_graph

C8 = {"out_channel": 8, "kernel_size": (3, 3)}
X = (4, 8, 32, 32)
"""256 KiB of float64: the columns of a 3x3 kernel are about 2 MiB, far above Python objects' noise."""


def op_peaks(op: str, shapes: tuple[tuple[int, ...], ...], attrs: dict) -> tuple[int, int, int]:
    """(bytes measured during one run beyond the inputs, peak_bytes less the inputs, input 0's bytes)."""
    b = GraphBuilder(op)
    xs = [b.input(f"x{i}", "float64", s) for i, s in enumerate(shapes)]
    p = compile_graph(b.build(b.op(op, *xs, **attrs)))
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s) for s in shapes]
    given = sum(a.nbytes for a in args)
    measured, _ = measured_peak(p, args)
    return measured, p.peak_bytes - given, args[0].nbytes


@pytest.mark.parametrize(
    ("op", "shapes", "attrs"),
    [
        ("Conv2D", (X, (8, 8, 3, 3)), C8),
        ("Conv2D", (X, (8, 4, 3, 3)), {**C8, "group": 2, "pad_mode": "pad", "pad": (1, 2, 0, 1), "stride": 2, "dilation": 2}),
        ("Conv2D", (X, (8, 8, 3, 3)), {**C8, "pad_mode": "same", "dilation": (1, 1, 2, 3)}),
        ("Conv2D", (X, (32, 2, 1, 1)), {"out_channel": 32, "kernel_size": 1, "group": 4}),
        ("Conv2DBackpropInput", ((4, 8, 30, 30), (8, 8, 3, 3)), {**C8, "input_size": X}),
        ("Conv2DTranspose", ((4, 8, 16, 16), (8, 4, 3, 3)), {**C8, "input_size": X, "pad_mode": "same", "stride": 2, "group": 2}),
        ("Conv2DBackpropInput", ((4, 8, 28, 28), (8, 8, 3, 3)), {**C8, "input_size": X, "dilation": 2}),
        ("Conv2DBackpropFilter", ((4, 8, 30, 30), X), {**C8, "filter_size": (8, 8, 3, 3)}),
        ("Conv2DBackpropFilter", ((4, 8, 16, 16), X), {**C8, "filter_size": (8, 4, 3, 3), "pad_mode": "pad", "pad": 1, "stride": 2, "group": 2}),
        ("AvgPoolGrad", ((4, 8, 16, 16),), {"kernel_size": 2, "strides": 2, "input_size": X}),
        ("AvgPoolGrad", ((4, 8, 11, 11),), {"kernel_size": 3, "strides": 3, "pad_mode": "same", "input_size": X}),
        ("AvgPoolGrad", ((4, 8, 32, 32),), {"kernel_size": 3, "strides": 1, "pad_mode": "same", "input_size": X}),
        ("MaxPool", (X,), {"kernel_size": 2, "strides": 2}),
        ("MaxPool", (X,), {"kernel_size": 3, "strides": 1, "pad_mode": "same"}),
        ("MaxPool", ((8, 16, 40, 24),), {"kernel_size": (3, 2), "strides": (2, 1)}),
        ("MaxPoolWithArgmax", (X,), {"kernel_size": 2, "strides": 2}),
        ("MaxPoolWithArgmax", (X,), {"kernel_size": 3, "strides": 1, "pad_mode": "same"}),
        ("MaxPoolWithArgmax", ((8, 16, 40, 24),), {"kernel_size": (3, 2), "strides": (2, 1), "pad_mode": "same"}),
        ("AvgPool", (X,), {"kernel_size": 2, "strides": 2}),
        ("AvgPool", (X,), {"kernel_size": 3, "strides": 2, "pad_mode": "same"}),
        ("AvgPool", ((8, 16, 40, 24),), {"kernel_size": (3, 2), "strides": (2, 1), "pad_mode": "same"}),
        ("MaxPool", (X,), {"kernel_size": 3, "strides": 2, "pad_mode": "pad", "pad": 1, "ceil_mode": True, "dilation": 2}),
        ("MaxPoolWithArgmax", (X,), {"kernel_size": 3, "strides": 2, "pad_mode": "pad", "pad": (1, 0), "ceil_mode": True}),
        ("AvgPool", (X,), {"kernel_size": 3, "strides": 2, "pad_mode": "pad", "pad": 1, "ceil_mode": True, "count_include_pad": False}),
        ("AvgPool", (X,), {"kernel_size": 2, "strides": 1, "pad_mode": "pad", "pad": 1, "divisor_override": 3}),
        ("AvgPoolGrad", ((4, 8, 17, 17),), {"kernel_size": 3, "strides": 2, "pad_mode": "pad", "pad": 1, "ceil_mode": True, "input_size": X}),
        ("AdaptiveAvgPool2D", (X,), {"output_size": (32, 32)}),
        ("AdaptiveAvgPool2D", (X,), {"output_size": (5, 7)}),
    ],
)
def test_peak_bytes_bounds_the_measured_run_closely(op: str, shapes: tuple, attrs: dict) -> None:
    """The run's own peak is at most peak_bytes less the inputs (plus 64 KiB of Python objects) and at least
    three quarters of it: the attribute-dependent temporaries (several times input 0) are neither missed nor
    grossly overstated."""
    measured, static, _ = op_peaks(op, shapes, attrs)
    assert measured <= static + (64 << 10), (measured, static)
    assert measured >= 0.75 * static, (measured, static)


def test_a_convolution_needs_many_times_its_input() -> None:
    """The case a fixed multiple of input 0 under-counts: a 3x3 convolution's columns are about 9x its input."""
    measured, static, x_bytes = op_peaks("Conv2D", (X, (8, 8, 3, 3)), C8)
    assert measured > 8 * x_bytes
    assert static > 8 * x_bytes
