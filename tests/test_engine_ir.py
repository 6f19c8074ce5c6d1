"""engine/ir.py: graph listings (library functions once) and the structural hash (names and parameter
values ignored; structure and constants that print alike told apart) and tensor types that keep their hash
across processes."""
from __future__ import annotations

import concurrent.futures
import os
import pickle
import subprocess
import sys

import numpy as np

from gradserve.engine import GraphBuilder, TensorType, grad_operation
from gradserve.engine.ir import DERIVED_KEPT


def test_gradient_program_prints_as_a_listing() -> None:
    g = GraphBuilder("SinNet")
    net = g.build(g.op("Sin", g.input("x", "float64", (1,))))
    assert str(grad_operation(net)) == "\n".join([
        "graph grad_SinNet(x: f64[1])",
        "  %0: f64[1] = Sin(x)",
        "  %1: f64[1] = OnesLike(%0)",
        "  %2: f64[1] = Cos(x)",
        "  %3: f64[1] = Mul(%1, %2)",
        "  return %3",
    ])


def test_listing_shows_each_library_function_once() -> None:
    lib: dict = {}
    for name in ("sin", "cos"):
        g = GraphBuilder(name, library=lib)
        lib[name] = g.build(g.op(name.capitalize(), g.input("x", "float64", (1,))))
    g = GraphBuilder("both", library=lib)
    x = g.input("x", "float64", (1,))
    (ds,) = g.op("GradOperation", x, fn="sin")
    (dc,) = g.op("GradOperation", x, fn="cos")
    text = str(g.build(ds + dc))
    assert text.count("where sin =") == 1 and text.count("where cos =") == 1
    assert "GradOperation[fn='cos'" in text


def test_structural_hash_ignores_names_and_parameter_values_but_not_structure() -> None:
    def net(in_name: str, w: np.ndarray, transpose: bool):  # type: ignore[no-untyped-def]
        g = GraphBuilder("h")
        x = g.input(in_name, "float32", (3, 3))
        return g.build(g.op("MatMul", x, g.param("w", w), transpose_b=transpose))

    base = net("x", np.ones((3, 3), np.float32), False).structural_hash()
    assert net("x", np.zeros((3, 3), np.float32), False).structural_hash() == base
    assert net("x", np.ones((3, 3), np.float32), True).structural_hash() != base
    assert net("other", np.ones((3, 3), np.float32), False).structural_hash() != base


def test_structural_hash_tells_apart_constants_that_print_alike() -> None:
    def scaled(c: float) -> str:
        g = GraphBuilder("scale")
        return g.build(g.input("x", "float64", (2,)) * c).structural_hash()

    base = scaled(0.1)
    assert scaled(0.1000000001) != base
    with np.printoptions(precision=2):
        assert scaled(0.1) == base


def test_tensor_type_pickled_in_another_process_finds_its_equal_in_a_dict() -> None:
    # A dtype's hash differs between processes (it hashes bytes), so a hash cached at construction must not travel.
    code = "import pickle, sys, numpy as np; from gradserve.engine import TensorType; " \
           "sys.stdout.buffer.write(pickle.dumps(TensorType(np.dtype('float32'), (2, 3))))"
    blobs = [subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    here = TensorType(np.dtype("float32"), (2, 3))
    for blob in blobs:
        there = pickle.loads(blob)
        assert there == here and hash(there) == hash(here)
        assert {here: "found"}[there] == "found"
    assert here != TensorType(np.dtype("float32"), (3, 2)) and here != TensorType(np.dtype("float64"), (2, 3))


def test_graphs_derived_from_one_graph_in_many_threads_stay_bounded_and_none_is_lost_twice() -> None:
    """Threads deriving from one graph at once (the SDK's embedded backend serves several) each keep their graph and
    drop the oldest: unguarded, two could drop the same one (a KeyError) or keep more than DERIVED_KEPT."""
    b = GraphBuilder()
    network = b.build(b.op("ReduceSum", b.input("x", "float32", (2,))))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, where an unguarded drop would interleave
    try:
        def derive(t: int) -> None:
            for k in range(20_000):
                network.keep_derived((t, k), network)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(derive, t) for t in range(4)]:
                f.result()
    finally:
        sys.setswitchinterval(switch)
    assert len(network.derived) == DERIVED_KEPT
