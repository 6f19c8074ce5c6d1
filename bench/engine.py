"""Engine benchmark: ratios against hand-written NumPy and, when installed, JAX (jit) and PyTorch (eager), measured in
one run (not a test; JAX and PyTorch are optional peers, never required).

Each case checks that the sides agree, then times them alternating rep by rep (the order rotates every rep), so machine
load hits all sides alike; a round gives each side's median, and the figures printed are the median over ``--rounds``
rounds with the spread (lowest to highest round) of the ratio; a sample of a short case times several calls in a row
(``inner``). One BLAS thread everywhere (XLA's too), the process pinned to one core.

Cases: the MLP 128x784-512-512-10 gradient (w.r.t. all weights), the tutorial's tiny gradient, a chain of 100
tanh(16x16) layers (steady, and first call: build + grad + compile + run, for 100 and 1000 layers), the 4th derivative
of sin(tanh(x)) on 1000 points, a PINN's d2u/dx2 (1-64-64-64-1, 1000 points), second order and forward mode of the MLP,
the weights a network's graphs and programs hold, and the MLP's peak memory at batch 4096. ``--cases`` runs some of
them (the random data stay those of a full run).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # thread counts are read when the libraries load
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import gc
import statistics
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from gradserve.engine import Graph, GraphBuilder, compile_graph, grad_operation, jvp, vjp

SIZES = (784, 512, 512, 10)
BATCH = 128
DEPTH = 100
WIDTH = 16
POINTS = 1000
PINN = (1, 64, 64, 64, 1)
CASES = ("mlp", "tiny", "chain", "first", "4th", "pinn", "second", "memory")
"""The cases ``--cases`` selects from, in the order they run."""
INNER = {"4th": 20, "PINN": 3}
"""Calls timed as one sample for the 4th-order and PINN cases (about 1 ms each), so a sample outlasts the clock's and the
scheduler's jitter instead of being one 40 us call."""

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", False)
except ImportError:
    jax = None
try:
    import torch

    torch.set_num_threads(1)
except ImportError:
    torch = None


def alternate(sides: dict[str, Callable[[], Any]], reps: int, rounds: int, inner: int = 1) -> dict[str, list[float]]:
    """Per side, its median seconds per call in each round; sides run alternately, the order rotating every rep."""
    names = list(sides)
    for fn in sides.values():
        for _ in range(10):  # past the engine's switch to its straight-line plan (after 8 runs)
            fn()
    medians: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        samples: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(reps):
            for n in names[rep % len(names):] + names[: rep % len(names)]:
                fn = sides[n]
                t = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[n].append((time.perf_counter() - t) / inner)
        for n in names:
            medians[n].append(statistics.median(samples[n]))
    return medians


def report(case: str, medians: dict[str, list[float]], targets: dict[str, float] | None = None) -> None:
    """One line per peer: gradserve's time over the peer's (median of the rounds' ratios, with their spread)."""
    ours = medians["gradserve"]
    line = f"{case:44s} gradserve {_ms(statistics.median(ours))}"
    for peer, theirs in medians.items():
        if peer == "gradserve":
            continue
        ratios = [a / b for a, b in zip(ours, theirs)]
        target = (targets or {}).get(peer)
        verdict = "" if target is None else f" (target <= {target}: {'ok' if statistics.median(ratios) <= target else 'OVER'})"
        line += f" | {peer} {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]{verdict}"
    print(line, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def blas_kernels() -> str:
    """NumPy's BLAS library and the kernel set it loaded: OpenBLAS picks one by CPU when it loads, unless
    ``OPENBLAS_CORETYPE`` names another, and the matrix products of these cases run on it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "not known (threadpoolctl is not installed)"
    found = [f"{i['internal_api']} {i.get('version') or ''} {i.get('architecture') or ''}".strip()
             for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")]
    return ", ".join(found) or "not known"


def close(a: Any, b: Any, rtol: float = 2e-3, atol: float = 1e-5) -> None:
    """Sides must agree before they are timed."""
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---- MLP ----

def mlp_weights(rng: np.random.Generator, sizes: tuple[int, ...] = SIZES) -> dict[str, np.ndarray]:
    w = {}
    for i in range(len(sizes) - 1):
        w[f"w{i}"] = (rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32)
        w[f"b{i}"] = (0.1 * rng.standard_normal(sizes[i + 1])).astype(np.float32)
    return w


def mlp_graph(weights: dict[str, np.ndarray], batch: int = BATCH, as_inputs: bool = False) -> Graph:
    """The MLP's mean-squared-error loss over inputs x and t, weights as parameters (or as inputs after x and t)."""
    b = GraphBuilder("mlp")
    x = b.input("x", "float32", (batch, SIZES[0]))
    t = b.input("t", "float32", (batch, SIZES[-1]))
    ws = {k: (b.input(k, a.dtype, a.shape) if as_inputs else b.param(k, a)) for k, a in weights.items()}
    h = x
    for i in range(len(SIZES) - 1):
        h = b.op("MatMul", h, ws[f"w{i}"]) + ws[f"b{i}"]
        if i < len(SIZES) - 2:
            h = b.op("Tanh", h)
    d = h - t
    return b.build(b.op("ReduceMean", d * d))


def mlp_by_hand(x: np.ndarray, t: np.ndarray, w: dict[str, np.ndarray]) -> list[np.ndarray]:
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


def mlp_peers(x: np.ndarray, t: np.ndarray, w: dict[str, np.ndarray], names: list[str]) -> dict[str, Callable[[], Any]]:
    peers: dict[str, Callable[[], Any]] = {"hand NumPy": lambda: mlp_by_hand(x, t, w)}
    if jax is not None:
        def loss(ws: list[Any], x: Any, t: Any) -> Any:
            h = x
            for i in range(len(SIZES) - 1):
                h = h @ ws[2 * i] + ws[2 * i + 1]
                if i < len(SIZES) - 2:
                    h = jnp.tanh(h)
            return jnp.mean((h - t) ** 2)
        g = jax.jit(jax.grad(loss))
        jw, jx, jt = [jnp.asarray(w[k]) for k in names], jnp.asarray(x), jnp.asarray(t)
        peers["JAX jit"] = lambda: [a.block_until_ready() for a in g(jw, jx, jt)]
    if torch is not None:
        tw = [torch.tensor(w[k], requires_grad=True) for k in names]
        tx, tt = torch.tensor(x), torch.tensor(t)

        def torch_grad() -> Any:
            h = tx
            for i in range(len(SIZES) - 1):
                h = h @ tw[2 * i] + tw[2 * i + 1]
                if i < len(SIZES) - 2:
                    h = torch.tanh(h)
            return torch.autograd.grad(((h - tt) ** 2).mean(), tw)
        peers["PyTorch"] = torch_grad
    return peers


# ---- deep chain ----

def chain_graph(ws: list[np.ndarray]) -> Graph:
    b = GraphBuilder("chain")
    h = b.input("x", "float32", (WIDTH, WIDTH))
    for i, w in enumerate(ws):
        h = b.op("Tanh", b.op("MatMul", h, b.param(f"w{i}", w)))
    return b.build(b.op("ReduceSum", h, axis=(), keep_dims=False))


def chain_first_call(ws: list[np.ndarray], x: np.ndarray) -> float:
    """Seconds of CPU for build + grad + compile + one run of the chain's weight gradient."""
    gc.collect()
    t = time.process_time()
    prog = compile_graph(grad_operation(chain_graph(ws), get_by_list=True, weights=[f"w{i}" for i in range(len(ws))]))
    prog(x)
    return time.process_time() - t


def chain_by_hand(x: np.ndarray, ws: list[np.ndarray]) -> list[np.ndarray]:
    hs = [x]
    for w in ws:
        hs.append(np.tanh(hs[-1] @ w))
    g = np.ones_like(hs[-1])
    out: list[np.ndarray] = [x] * len(ws)
    for i in reversed(range(len(ws))):
        g = g * (1 - hs[i + 1] * hs[i + 1])
        out[i] = hs[i].T @ g
        g = g @ ws[i].T
    return out


def chain_peers(x: np.ndarray, ws: list[np.ndarray]) -> dict[str, Callable[[], Any]]:
    peers: dict[str, Callable[[], Any]] = {"hand NumPy": lambda: chain_by_hand(x, ws)}
    if jax is not None:
        def f(ws: list[Any], x: Any) -> Any:
            for w in ws:
                x = jnp.tanh(x @ w)
            return jnp.sum(x)
        g = jax.jit(jax.grad(f))
        jw, jx = [jnp.asarray(w) for w in ws], jnp.asarray(x)
        peers["JAX jit"] = lambda: [a.block_until_ready() for a in g(jw, jx)]
    if torch is not None:
        tw = [torch.tensor(w, requires_grad=True) for w in ws]
        tx = torch.tensor(x)

        def torch_grad() -> Any:
            h = tx
            for w in tw:
                h = torch.tanh(h @ w)
            return torch.autograd.grad(h.sum(), tw)
        peers["PyTorch"] = torch_grad
    return peers


# ---- higher order ----

def nested_grad(g: Graph, order: int) -> Graph:
    """The ``order``-th derivative of an elementwise function of input 0 (each gradient of the sum of the last)."""
    for _ in range(order):
        g = grad_operation(g)
    return g


def fourth_order_graph() -> Graph:
    b = GraphBuilder("f")
    x = b.input("x", "float32", (POINTS,))
    return nested_grad(b.build(b.op("ReduceSum", b.op("Sin", b.op("Tanh", x)), axis=(), keep_dims=False)), 4)


def fourth_order_peers(x: np.ndarray) -> dict[str, Callable[[], Any]]:
    peers: dict[str, Callable[[], Any]] = {}
    if jax is not None:
        f: Callable[[Any], Any] = lambda x: jnp.sin(jnp.tanh(x))  # noqa: E731
        for _ in range(4):
            f = (lambda h: jax.grad(lambda x: jnp.sum(h(x))))(f)
        jf, jx = jax.jit(f), jnp.asarray(x)
        peers["JAX jit"] = lambda: jf(jx).block_until_ready()
    if torch is not None:
        def torch_d4() -> Any:
            tx = torch.tensor(x, requires_grad=True)
            y = torch.sin(torch.tanh(tx))
            for k in range(4):
                (y,) = torch.autograd.grad(y.sum(), tx, create_graph=k < 3)
            return y
        peers["PyTorch"] = torch_d4
    return peers


def pinn_graph(w: dict[str, np.ndarray]) -> Graph:
    """u(x) of a tanh MLP on POINTS points, then d2u/dx2 by two nested gradients."""
    b = GraphBuilder("u")
    h = b.input("x", "float32", (POINTS, 1))
    n = len(PINN) - 1
    for i in range(n):
        h = b.op("MatMul", h, b.param(f"w{i}", w[f"w{i}"])) + b.param(f"b{i}", w[f"b{i}"])
        if i < n - 1:
            h = b.op("Tanh", h)
    return nested_grad(b.build(b.op("ReduceSum", h, axis=(), keep_dims=False)), 2)


def pinn_by_hand(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """d2u/dx2 by forward propagation of first and second derivatives through the layers."""
    a, da, dda = x, np.ones_like(x), np.zeros_like(x)
    n = len(PINN) - 1
    for i in range(n):
        W = w[f"w{i}"]
        z, dz, ddz = a @ W + w[f"b{i}"], da @ W, dda @ W
        if i == n - 1:
            return ddz
        a = np.tanh(z)
        s = 1 - a * a
        da, dda = s * dz, s * ddz - 2 * a * s * dz * dz
    raise AssertionError


def pinn_peers(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    peers: dict[str, Callable[[], Any]] = {"hand NumPy": lambda: pinn_by_hand(x, w)}
    n = len(PINN) - 1
    names = [f"{k}{i}" for i in range(n) for k in ("w", "b")]
    if jax is not None:
        def u(ws: list[Any], x: Any) -> Any:
            for i in range(n):
                x = x @ ws[2 * i] + ws[2 * i + 1]
                if i < n - 1:
                    x = jnp.tanh(x)
            return jnp.sum(x)
        du = jax.grad(u, argnums=1)
        d2u = jax.jit(jax.grad(lambda ws, x: jnp.sum(du(ws, x)), argnums=1))
        jw, jx = [jnp.asarray(w[k]) for k in names], jnp.asarray(x)
        peers["JAX jit"] = lambda: d2u(jw, jx).block_until_ready()
    if torch is not None:
        tw = [torch.tensor(w[k]) for k in names]

        def torch_d2() -> Any:
            tx = torch.tensor(x, requires_grad=True)
            h = tx
            for i in range(n):
                h = h @ tw[2 * i] + tw[2 * i + 1]
                if i < n - 1:
                    h = torch.tanh(h)
            (d1,) = torch.autograd.grad(h.sum(), tx, create_graph=True)
            return torch.autograd.grad(d1.sum(), tx)[0]
        peers["PyTorch"] = torch_d2
    return peers


# ---- memory ----

def held_weight_bytes(graphs: list[Any]) -> int:
    """Bytes of distinct parameter buffers the given graphs and programs hold."""
    seen: dict[int, int] = {}
    for g in graphs:
        for p in (g.graph if hasattr(g, "graph") else g).params:
            base = p.data if p.data.base is None else p.data.base
            seen[id(base)] = base.nbytes
    return sum(seen.values())


def measured_peak(fn: Callable[[], Any]) -> int:
    """Bytes one call allocates at its peak beyond what was live before it (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (median and spread are over them)")
    parser.add_argument("--reps", type=int, default=15, help="alternating reps per round")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the first allowed)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases to run, of {','.join(CASES)} (default: all)")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if not cases <= set(CASES):
        parser.error(f"unknown case(s) {','.join(sorted(cases - set(CASES)))}; cases: {','.join(CASES)}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))})
    print(f"peers: hand NumPy{', JAX ' + jax.__version__ if jax else ''}{', PyTorch ' + torch.__version__ if torch else ''}; "
          f"{args.rounds} rounds of {args.reps} alternating reps; ratios are gradserve / peer [spread over rounds]; "
          f"NumPy's BLAS: {blas_kernels()}")
    rng = np.random.default_rng(0)
    R, N = args.rounds, args.reps

    w = mlp_weights(rng)
    names = [f"{k}{i}" for i in range(len(SIZES) - 1) for k in ("w", "b")]
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    t = rng.standard_normal((BATCH, SIZES[-1])).astype(np.float32)
    net = mlp_graph(w)
    first = grad_operation(net, get_by_list=True, weights=names)
    prog = compile_graph(first)
    if "mlp" in cases:
        peers = mlp_peers(x, t, w, names)
        for fn in peers.values():
            close(prog(x, t), fn())
        report("MLP 128x784-512-512-10 gradient", alternate({"gradserve": lambda: prog(x, t), **peers}, N, R),
               {"hand NumPy": 1.0, "JAX jit": 0.95})
    if "tiny" in cases:
        tiny_case(N, R)

    ws = [(rng.standard_normal((WIDTH, WIDTH)) / 4).astype(np.float32) for _ in range(DEPTH)]
    cx = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    deep = [(rng.standard_normal((WIDTH, WIDTH)) / 4).astype(np.float32) for _ in range(10 * DEPTH)]
    if "chain" in cases:
        chain = compile_graph(grad_operation(chain_graph(ws), get_by_list=True, weights=[f"w{i}" for i in range(DEPTH)]))
        peers = chain_peers(cx, ws)
        for fn in peers.values():
            close(chain(cx), fn(), rtol=1e-4)
        report(f"chain of {DEPTH} tanh({WIDTH}x{WIDTH}), steady", alternate({"gradserve": lambda: chain(cx), **peers}, N, R),
               {"hand NumPy": 1.2, "JAX jit": 1.0})
    if "first" in cases:
        first_call_case(deep, cx, R)

    px = np.linspace(-2, 2, POINTS).astype(np.float32)
    if "4th" in cases:
        d4 = compile_graph(fourth_order_graph())
        peers = fourth_order_peers(px)
        for fn in peers.values():
            close([d4(px)], [fn()], rtol=1e-3, atol=1e-4)
        if peers:
            report(f"4th derivative of sin(tanh(x)), {POINTS} points",
                   alternate({"gradserve": lambda: d4(px), **peers}, N, R, inner=INNER["4th"]), {"JAX jit": 1.0})

    pw = mlp_weights(rng, PINN)
    if "pinn" in cases:
        pinn = compile_graph(pinn_graph(pw))
        ux = np.linspace(-1, 1, POINTS).astype(np.float32)[:, None]
        peers = pinn_peers(ux, pw)
        for fn in peers.values():
            close([pinn(ux)], [fn()], rtol=1e-3, atol=1e-4)
        report("PINN d2u/dx2 (1-64-64-64-1, 1000 points)", alternate({"gradserve": lambda: pinn(ux), **peers}, N, R, inner=INNER["PINN"]),
               {"JAX jit": 1.0})

    directions = [rng.standard_normal(w[k].shape).astype(np.float32) for k in names]
    if "second" in cases:
        second_order_case(x, t, w, names, first, prog, directions, N, R)
    if "memory" in cases:
        memory_case(rng, w, names, net, first, prog)


def tiny_case(N: int, R: int) -> None:
    """The tutorial's tiny gradient against hand NumPy and JAX: the engine's per-call cost alone."""
    b = GraphBuilder("tiny")
    xi, yi = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    zv = np.array([1.0], np.float32)
    tiny = compile_graph(grad_operation(b.build(b.op("MatMul", xi * b.param("z", zv), yi))))
    X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
    Y = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)
    ones = np.ones((2, 3), np.float32)
    tiny_peers: dict[str, Callable[[], Any]] = {"hand NumPy": lambda: (ones @ Y.T) * zv}
    if jax is not None:
        jg = jax.jit(jax.grad(lambda x, y, z: jnp.sum((x * z) @ y)))
        jX, jY, jz = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(zv)
        tiny_peers["JAX jit"] = lambda: jg(jX, jY, jz).block_until_ready()
    close([tiny(X, Y)], [tiny_peers["hand NumPy"]()], rtol=1e-6)
    report("tiny gradient (engine alone)", alternate({"gradserve": lambda: tiny(X, Y), **tiny_peers}, N, R, inner=200),
           {"hand NumPy": 1.5})


def first_call_case(deep: list[np.ndarray], cx: np.ndarray, R: int) -> None:
    """CPU time of the chain's first call (build, grad, compile, one run) at 100 and 1000 layers."""
    firsts: dict[int, list[float]] = {DEPTH: [], 10 * DEPTH: []}
    for _ in range(max(R, 5)):  # alternating depths; at least 5 rounds, as one first call is a single sample
        for n in firsts:
            firsts[n].append(chain_first_call(deep[:n], cx))
    f100, f1000 = statistics.median(firsts[DEPTH]), statistics.median(firsts[10 * DEPTH])
    print(f"{'chain first call (CPU: build+grad+compile+run)':44s} {DEPTH} layers {_ms(f100)} | {10 * DEPTH} layers {_ms(f1000)} "
          f"[{_ms(min(firsts[10 * DEPTH]))}-{_ms(max(firsts[10 * DEPTH]))}] | ratio {f1000 / f100:.1f}x "
          f"(target <= 10x: {'ok' if f1000 / f100 <= 10 else 'OVER'}; 1000 layers <= 300 ms: {'ok' if f1000 <= 0.3 else 'OVER'})")


def second_order_case(x: np.ndarray, t: np.ndarray, w: dict[str, np.ndarray], names: list[str], first: Graph, prog: Any,
                      directions: list[np.ndarray], N: int, R: int) -> None:
    """The MLP's second order (reverse over reverse, forward over reverse) and forward mode against first order."""
    second = compile_graph(grad_operation(first, get_by_list=True, weights=names))
    wnet = mlp_graph({k: w[k] for k in names}, as_inputs=True)
    wpos = tuple(range(2, 2 + len(names)))
    warrays = [w[k] for k in names]
    prog_w = compile_graph(vjp(wnet, wpos))
    hvp_fwd = compile_graph(jvp(vjp(wnet, wpos), wpos))
    jvp_prog = compile_graph(jvp(wnet, wpos))
    vjp_prog = compile_graph(vjp(wnet, wpos, sens_param=True))
    one = np.ones((), np.float32)
    m = alternate({"gradserve": lambda: second(x, t), "first order": lambda: prog(x, t)}, N, R)
    report("MLP second order (HVP) vs first order", m, {"first order": 4.0})
    m = alternate({"gradserve": lambda: hvp_fwd(x, t, *warrays, *directions), "first order": lambda: prog_w(x, t, *warrays)}, N, R)
    report("MLP forward-over-reverse HVP vs first order", m, {"first order": 3.0})
    m = alternate({"gradserve": lambda: jvp_prog(x, t, *warrays, *directions), "vjp": lambda: vjp_prog(x, t, *warrays, one)}, N, R)
    report("MLP jvp vs vjp (all weights)", m, {"vjp": 1.5})


def memory_case(rng: np.random.Generator, w: dict[str, np.ndarray], names: list[str], net: Graph, first: Graph, prog: Any) -> None:
    """The weights a network and its derived graphs and programs hold, and the MLP gradient's peak memory at batch 4096."""
    second = compile_graph(grad_operation(first, get_by_list=True, weights=names))
    weights = sum(a.nbytes for a in w.values())
    held = held_weight_bytes([net, first, prog, second, grad_operation(net, get_all=True), compile_graph(grad_operation(net, get_all=True))])
    print(f"{'weights held by a network and 5 derived':44s} {held / weights:.2f}x their size ({held / 2**20:.2f} MiB for "
          f"{weights / 2**20:.2f} MiB; target <= 1.2x: {'ok' if held <= 1.2 * weights else 'OVER'})")

    big = 4096
    bx = rng.standard_normal((big, SIZES[0])).astype(np.float32)
    bt = rng.standard_normal((big, SIZES[-1])).astype(np.float32)
    bprog = compile_graph(grad_operation(mlp_graph(w, big), get_by_list=True, weights=names))
    bprog(bx, bt)
    ours, hand = measured_peak(lambda: bprog(bx, bt)), measured_peak(lambda: mlp_by_hand(bx, bt, w))
    print(f"{'MLP gradient peak memory, batch 4096':44s} gradserve {ours / 2**20:.1f} MiB (static bound "
          f"{bprog.peak_bytes / 2**20:.1f} MiB, with inputs and weights) | hand NumPy {hand / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
