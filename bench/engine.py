"""Engine benchmark: ratios against hand-written NumPy, measured in one run (not a test).

Prints three figures with their targets:
  1. gradient of a tanh MLP (batch 128, 784-512-512-10, float32, w.r.t. all weights) vs hand-written NumPy;
  2. per-call time of the tutorial's tiny MatMul gradient vs its hand-written NumPy version;
  3. cost of a second-order gradient (Hessian-vector product of the MLP loss) relative to first order;
  4. forward over reverse: the same Hessian-vector product as the JVP of the gradient, relative to first order;
  5. forward mode against reverse mode: jvp / vjp of the MLP loss along all weights.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from gradserve.engine import GraphBuilder, compile_graph, grad_operation, jvp, vjp

SIZES = (784, 512, 512, 10)
BATCH = 128


def timeit(fn: Callable[[], Any], repeat: int, inner: int = 1) -> float:
    """Median seconds per call over ``repeat`` samples of ``inner`` calls, after a warm-up."""
    for _ in range(max(3, inner)):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t) / inner)
    return statistics.median(samples)


def mlp_graph(weights: dict[str, np.ndarray], as_inputs: bool = False):  # type: ignore[no-untyped-def]
    """The MLP's mean-squared-error loss as an engine graph over inputs x and t, with the weights as
    parameters, or as the inputs after x and t (``as_inputs``: forward mode differentiates inputs)."""
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", (BATCH, SIZES[0]))
    t = b.input("t", "float32", (BATCH, SIZES[-1]))
    declare = b.input if as_inputs else b.param
    ws = {k: (declare(k, a.dtype, a.shape) if as_inputs else declare(k, a)) for k, a in weights.items()}
    h = x
    for i in range(len(SIZES) - 1):
        h = b.op("MatMul", h, ws[f"w{i}"]) + ws[f"b{i}"]
        if i < len(SIZES) - 2:
            h = b.op("Tanh", h)
    d = h - t
    return b.build(b.op("ReduceMean", d * d))


def mlp_by_hand(x: np.ndarray, t: np.ndarray, w: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The same gradient written directly in NumPy: the baseline."""
    hs = [x]
    for i in range(len(SIZES) - 2):
        hs.append(np.tanh(hs[-1] @ w[f"w{i}"] + w[f"b{i}"]))
    out = hs[-1] @ w[f"w{len(SIZES) - 2}"] + w[f"b{len(SIZES) - 2}"]
    g = (out - t) * np.float32(2.0 / out.size)
    grads: list[np.ndarray] = []
    for i in reversed(range(len(SIZES) - 1)):
        grads[:0] = [hs[i].T @ g, g.sum(axis=0)]
        if i:
            g = (g @ w[f"w{i}"].T) * (1 - hs[i] * hs[i])
    return grads


def tiny_by_hand(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """d sum(MatMul(x * z, y)) / dx in NumPy: the tutorial's gradient by hand."""
    return (np.ones((x.shape[0], y.shape[1]), np.float32) @ y.T) * z


def main() -> None:
    rng = np.random.default_rng(0)
    w = {}
    for i in range(len(SIZES) - 1):
        w[f"w{i}"] = (rng.standard_normal((SIZES[i], SIZES[i + 1])) / np.sqrt(SIZES[i])).astype(np.float32)
        w[f"b{i}"] = (0.1 * rng.standard_normal(SIZES[i + 1])).astype(np.float32)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    t = rng.standard_normal((BATCH, SIZES[-1])).astype(np.float32)
    names = [f"{k}{i}" for i in range(len(SIZES) - 1) for k in ("w", "b")]

    net = mlp_graph(w)
    first = grad_operation(net, get_by_list=True, weights=names)
    prog = compile_graph(first)
    engine_grads = prog(x, t)
    for a, b in zip(engine_grads, mlp_by_hand(x, t, w)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)
    t_engine = timeit(lambda: prog(x, t), repeat=30)
    t_hand = timeit(lambda: mlp_by_hand(x, t, w), repeat=30)

    second = compile_graph(grad_operation(first, get_by_list=True, weights=names))
    t_second = timeit(lambda: second(x, t), repeat=30)

    wnet = mlp_graph({k: w[k] for k in names}, as_inputs=True)
    wpos = tuple(range(2, 2 + len(names)))
    warrays = [w[k] for k in names]
    directions = [rng.standard_normal(a.shape).astype(np.float32) for a in warrays]
    first_w = vjp(wnet, wpos)
    prog_w = compile_graph(first_w)
    t_first_w = timeit(lambda: prog_w(x, t, *warrays), repeat=30)
    hvp_fwd = compile_graph(jvp(first_w, wpos))
    t_hvp_fwd = timeit(lambda: hvp_fwd(x, t, *warrays, *directions), repeat=30)
    jvp_prog = compile_graph(jvp(wnet, wpos))
    vjp_prog = compile_graph(vjp(wnet, wpos, sens_param=True))
    one = np.ones((), np.float32)
    t_jvp = timeit(lambda: jvp_prog(x, t, *warrays, *directions), repeat=30)
    t_vjp = timeit(lambda: vjp_prog(x, t, *warrays, one), repeat=30)

    b = GraphBuilder("tiny")
    xi, yi = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    zv = np.array([1.0], np.float32)
    tiny = compile_graph(grad_operation(b.build(b.op("MatMul", xi * b.param("z", zv), yi))))
    X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
    Y = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)
    np.testing.assert_allclose(tiny(X, Y), tiny_by_hand(X, Y, zv), rtol=1e-6)
    t_tiny = timeit(lambda: tiny(X, Y), repeat=30, inner=2000)
    t_tiny_hand = timeit(lambda: tiny_by_hand(X, Y, zv), repeat=30, inner=2000)

    rows = [
        ("MLP gradient, engine / hand-written NumPy", t_engine / t_hand, 1.10, f"{t_engine * 1e3:.2f} ms vs {t_hand * 1e3:.2f} ms"),
        ("tiny MatMul gradient, engine / hand-written NumPy", t_tiny / t_tiny_hand, 4.0, f"{t_tiny * 1e6:.1f} us vs {t_tiny_hand * 1e6:.1f} us"),
        ("MLP second order (HVP) / first order", t_second / t_engine, 4.0, f"{t_second * 1e3:.2f} ms vs {t_engine * 1e3:.2f} ms"),
        ("MLP forward-over-reverse HVP / first order", t_hvp_fwd / t_first_w, 3.0,
         f"{t_hvp_fwd * 1e3:.2f} ms vs {t_first_w * 1e3:.2f} ms; static cost {hvp_fwd.flops / prog_w.flops:.2f}x"),
        ("MLP jvp / vjp (all weights)", t_jvp / t_vjp, 1.5,
         f"{t_jvp * 1e3:.2f} ms vs {t_vjp * 1e3:.2f} ms; static cost {jvp_prog.flops / vjp_prog.flops:.2f}x"),
    ]
    for name, ratio, target, detail in rows:
        verdict = "ok" if ratio <= target else "OVER TARGET"
        print(f"{name:52s} {ratio:6.2f}x  (target <= {target}x, {verdict})  {detail}")


if __name__ == "__main__":
    main()
