"""Model benchmark (not a test): gradients w.r.t. all weights against PyTorch eager, same machine and thread count.

Three rows, each after checking that both sides compute the same gradients: LeNet-5 (batch 64, 1x32x32,
float32, built from engine ops; target at most 2x PyTorch's median time), one transformer encoder layer
(gradserve's nn.TransformerEncoderLayer against torch.nn.TransformerEncoderLayer: batch 16, 128 tokens,
width 256, 4 heads, feed-forward 1024, float32, dropout off; target at most 1.5x; the two sides alternate
call by call so machine load hits both alike), and the peak RSS (VmHWM) of the LeNet-5 gradient at batch
1024, each side in a fresh subprocess (target at most 1.5x PyTorch's). Both use --threads threads
(default 1, as a server worker runs BLAS); on a loaded machine more BLAS threads than free cores make both
far slower.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

if __name__ == "__main__":  # BLAS reads its thread count when NumPy is first imported
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np
import torch
import torch.nn.functional as tf

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve.engine import Graph, GraphBuilder, compile_graph, grad_operation

BATCH = 64
CONVS = (("conv1", 1, 6), ("conv2", 6, 16))
DENSES = (("fc1", 400, 120), ("fc2", 120, 84), ("fc3", 84, 10))


def timeit(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls, after three warm-up calls."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def lenet_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-uniform-like weights; Conv2D weights are (out, in, 5, 5), Dense weights (out, in) as in MindSpore."""
    w: dict[str, np.ndarray] = {}
    for name, cin, cout in CONVS:
        w[f"{name}.weight"] = (rng.uniform(-1, 1, (cout, cin, 5, 5)) / np.sqrt(cin * 25)).astype(np.float32)
    for name, fin, fout in DENSES:
        w[f"{name}.weight"] = (rng.uniform(-1, 1, (fout, fin)) / np.sqrt(fin)).astype(np.float32)
        w[f"{name}.bias"] = np.zeros(fout, np.float32)
    return w


def lenet_graph(w: dict[str, np.ndarray], batch: int = BATCH) -> Graph:
    """LeNet-5 as in MindSpore's model zoo (valid 5x5 convolutions, ReLU, 2x2 max pooling, three Dense layers)
    with the mean softmax cross-entropy against one-hot labels."""
    b = GraphBuilder("lenet")
    h = b.input("x", "float32", (batch, 1, 32, 32))
    labels = b.input("labels", "float32", (batch, 10))
    for name, _, cout in CONVS:
        h = b.op("Conv2D", h, b.param(f"{name}.weight", w[f"{name}.weight"]), out_channel=cout, kernel_size=5)
        h = b.op("MaxPool", b.op("ReLU", h), kernel_size=2, strides=2)
    h = b.op("Reshape", h, shape=(batch, -1))
    for i, (name, _, _) in enumerate(DENSES):
        h = b.op("MatMul", h, b.param(f"{name}.weight", w[f"{name}.weight"]), transpose_b=True) + b.param(f"{name}.bias", w[f"{name}.bias"])
        if i < len(DENSES) - 1:
            h = b.op("ReLU", h)
    loss, _ = b.op("SoftmaxCrossEntropyWithLogits", h, labels)
    return b.build(b.op("ReduceMean", loss))


def lenet_torch(x: torch.Tensor, labels: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same network and loss in PyTorch."""
    h = x
    for name, _, _ in CONVS:
        h = tf.max_pool2d(tf.relu(tf.conv2d(h, p[f"{name}.weight"])), 2, 2)
    h = h.reshape(h.shape[0], -1)
    for i, (name, _, _) in enumerate(DENSES):
        h = tf.linear(h, p[f"{name}.weight"], p[f"{name}.bias"])
        if i < len(DENSES) - 1:
            h = tf.relu(h)
    return tf.cross_entropy(h, labels)


def alternating(a: Callable[[], Any], b: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, called in turn ``repeat`` times each after two warm-ups each."""
    for _ in range(2):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def lenet_row(repeat: int) -> None:
    """LeNet-5's gradient at batch 64: the engine's compiled program against PyTorch eager."""
    rng = np.random.default_rng(0)
    w = lenet_weights(rng)
    x = rng.standard_normal((BATCH, 1, 32, 32)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]
    names = list(w)
    prog = compile_graph(grad_operation(lenet_graph(w), get_by_list=True, weights=names))
    ours = prog(x, labels)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in w.items()}
    xt, lt = torch.tensor(x), torch.tensor(labels)

    def torch_grad() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(lenet_torch(xt, lt, params), list(params.values()))

    for name, a, t in zip(names, ours, torch_grad()):
        np.testing.assert_allclose(a, t.numpy(), rtol=2e-3, atol=2e-5, err_msg=name)
    engine_s = timeit(lambda: prog(x, labels), repeat)
    torch_s = timeit(torch_grad, repeat)
    print(f"LeNet-5 gradient w.r.t. all weights, batch {BATCH}, float32, {torch.get_num_threads()} torch threads:")
    print(f"  gradserve engine {engine_s * 1e3:8.2f} ms")
    print(f"  PyTorch eager    {torch_s * 1e3:8.2f} ms")
    print(f"  ratio            {engine_s / torch_s:8.2f}x (target <= 2x)")


class Loss(nn.Cell):
    """sum(layer(x) * r): a fixed cotangent r pulled back through the layer."""

    def __init__(self, layer: nn.Cell, r: np.ndarray) -> None:
        super().__init__(auto_prefix=False)
        self.layer = layer
        self.r = gs.Tensor(r)

    def construct(self, x: gs.Tensor) -> gs.Tensor:
        return (self.layer(x) * self.r).sum()


def transformer_row(repeat: int) -> None:
    """One encoder layer (batch 16, 128 tokens, width 256, 4 heads, feed-forward 1024): gradserve's
    nn.TransformerEncoderLayer (traced once, then its cached program) against PyTorch's, the same weights."""
    batch, tokens, width, heads, ff = 16, 128, 256, 4, 1024
    rng = np.random.default_rng(1)
    layer = nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, batch_first=True)
    layer.set_train(False)
    tlayer = torch.nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, batch_first=True).eval()
    theirs = dict(tlayer.named_parameters())
    weights = layer.trainable_params()
    tparams = []
    for p in weights:
        t = theirs[p.name.replace("gamma", "weight").replace("beta", "bias")]
        with torch.no_grad():
            t.copy_(torch.tensor(p.asnumpy()))
        tparams.append(t)
    assert len(tparams) == len(theirs)
    x = rng.standard_normal((batch, tokens, width)).astype(np.float32)
    r = rng.standard_normal((batch, tokens, width)).astype(np.float32)
    grad = ops.GradOperation(get_by_list=True)(Loss(layer, r), gs.ParameterTuple(weights))
    xs, xt, rt = gs.Tensor(x), torch.tensor(x), torch.tensor(r)

    def ours() -> Any:
        return grad(xs)

    def torch_grad() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad((tlayer(xt) * rt).sum(), tparams)

    for p, a, t in zip(weights, ours(), torch_grad()):
        np.testing.assert_allclose(a.asnumpy(), t.numpy(), rtol=2e-3, atol=2e-3, err_msg=p.name)
    engine_s, torch_s = alternating(ours, torch_grad, repeat)
    print(f"Transformer encoder layer gradient w.r.t. all weights, batch {batch}, {tokens} tokens, width {width}, "
          f"{heads} heads, feed-forward {ff}, float32, {torch.get_num_threads()} torch threads, sides alternating:")
    print(f"  gradserve nn     {engine_s * 1e3:8.2f} ms")
    print(f"  PyTorch eager    {torch_s * 1e3:8.2f} ms")
    print(f"  ratio            {engine_s / torch_s:8.2f}x (target <= 1.5x)")


def status_kib(field: str) -> int:
    """A /proc/self/status memory field (VmHWM, VmRSS) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_side(side: str, batch: int) -> None:
    """Run in a fresh process: one LeNet-5 gradient at ``batch`` on ``side``; print the RSS before it and VmHWM after."""
    rng = np.random.default_rng(0)
    w = lenet_weights(rng)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    if side == "engine":
        prog = compile_graph(grad_operation(lenet_graph(w, batch), get_by_list=True, weights=list(w)))
        before = status_kib("VmRSS")
        prog(x, labels)
    else:
        params = {k: torch.tensor(v, requires_grad=True) for k, v in w.items()}
        xt, lt = torch.tensor(x), torch.tensor(labels)
        before = status_kib("VmRSS")
        torch.autograd.grad(lenet_torch(xt, lt, params), list(params.values()))
    print(before, status_kib("VmHWM"))


def rss_row(threads: int, batch: int = 1024) -> None:
    """Peak RSS of the LeNet-5 gradient at ``batch``, each side in its own subprocess."""
    figures = {}
    for side in ("engine", "torch"):
        out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--rss-side", side, "--batch", str(batch)],
                             capture_output=True, text=True, check=True, timeout=600).stdout.split()
        figures[side] = (int(out[0]), int(out[1]))
    (eb, ep), (tb, tp) = figures["engine"], figures["torch"]
    print(f"LeNet-5 gradient at batch {batch}, peak RSS (VmHWM) of a fresh process, each side alone:")
    print(f"  gradserve engine {ep / 1024:8.1f} MiB (RSS before the gradient {eb / 1024:.1f} MiB, growth {(ep - eb) / 1024:.1f} MiB)")
    print(f"  PyTorch eager    {tp / 1024:8.1f} MiB (RSS before the gradient {tb / 1024:.1f} MiB, growth {(tp - tb) / 1024:.1f} MiB)")
    print(f"  ratio            {ep / tp:8.2f}x peak, {(ep - eb) / max(tp - tb, 1):.2f}x growth (target <= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and PyTorch threads (1: as a server worker runs)")
    parser.add_argument("--only", choices=("lenet", "transformer", "rss"), help="run one row")
    parser.add_argument("--rss-side", choices=("engine", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_side:
        rss_side(args.rss_side, args.batch)
        return
    if args.only in (None, "lenet"):
        lenet_row(args.repeat)
    if args.only in (None, "transformer"):
        transformer_row(args.repeat)
    if args.only in (None, "rss"):
        rss_row(args.threads)


if __name__ == "__main__":
    main()
