"""Model benchmark (not a test): the gradient of LeNet-5's loss w.r.t. all its weights (batch 64, 1x32x32,
float32), built from engine ops, against PyTorch eager on the same machine and thread count.

Prints the median time per gradient of each and their ratio (target: at most 2x PyTorch), after
checking that both compute the same gradients. Both use --threads threads (default 1, as a server
worker runs BLAS); on a loaded machine more BLAS threads than free cores make both far slower.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def lenet_graph(w: dict[str, np.ndarray]) -> Graph:
    """LeNet-5 as in MindSpore's model zoo (valid 5x5 convolutions, ReLU, 2x2 max pooling, three Dense layers)
    with the mean softmax cross-entropy against one-hot labels."""
    b = GraphBuilder("lenet")
    h = b.input("x", "float32", (BATCH, 1, 32, 32))
    labels = b.input("labels", "float32", (BATCH, 10))
    for name, _, cout in CONVS:
        h = b.op("Conv2D", h, b.param(f"{name}.weight", w[f"{name}.weight"]), out_channel=cout, kernel_size=5)
        h = b.op("MaxPool", b.op("ReLU", h), kernel_size=2, strides=2)
    h = b.op("Reshape", h, shape=(BATCH, -1))
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
    h = h.reshape(BATCH, -1)
    for i, (name, _, _) in enumerate(DENSES):
        h = tf.linear(h, p[f"{name}.weight"], p[f"{name}.bias"])
        if i < len(DENSES) - 1:
            h = tf.relu(h)
    return tf.cross_entropy(h, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="BLAS and PyTorch threads (1: as a server worker runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    engine_s = timeit(lambda: prog(x, labels), args.repeat)
    torch_s = timeit(torch_grad, args.repeat)
    print(f"LeNet-5 gradient w.r.t. all weights, batch {BATCH}, float32, {torch.get_num_threads()} torch threads:")
    print(f"  gradserve engine {engine_s * 1e3:8.2f} ms")
    print(f"  PyTorch eager    {torch_s * 1e3:8.2f} ms")
    print(f"  ratio            {engine_s / torch_s:8.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
