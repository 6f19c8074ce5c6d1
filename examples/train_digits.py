"""Train a small CNN on scikit-learn's bundled 8x8 digits with gradients computed by a gradserve server.

    python examples/train_digits.py                       # starts a local 2-worker server on a free port
    python examples/train_digits.py --target host:port    # or GRADSERVE_TARGET: an existing server
    python examples/train_digits.py --embedded            # no server: the engine runs in this process

MindSpore 2.x training style: ``value_and_grad(forward_fn, None, optimizer.parameters)``, then ``optimizer(grads)``.
Needs the ``examples`` extra (scikit-learn, tqdm, matplotlib): ``pip install 'gradserve[examples]'``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gradserve as gs
from gradserve import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: no display needed

SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: epochs, batch size, the PNG path, and where gradients are computed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3, help="Adam's largest learning rate (cosine decay per epoch)")
    p.add_argument("--out", type=Path, default=Path("train_digits.png"), help="where the figure is saved")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default=os.environ.get("GRADSERVE_TARGET"),
                       help="host:port of a running gradserve server (default: $GRADSERVE_TARGET, else a local one)")
    where.add_argument("--embedded", action="store_true", help="compute gradients in this process, no server")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the local server")
    return p.parse_args(argv)


@contextlib.contextmanager
def gradients_from(args: argparse.Namespace) -> Iterator[str]:
    """Points gradserve at the chosen backend for the block; yields a line saying which it is."""
    if args.embedded:
        gs.set_context(target=None)
        yield "embedded engine (no server)"
    elif args.target:
        gs.set_context(target=args.target)
        yield f"existing server at {args.target}"
    else:
        from gradserve.server.app import running
        from gradserve.server.config import ServerConfig

        with running(ServerConfig(host="127.0.0.1", port=0, workers=args.workers, log_level="warning")) as server:
            target = f"127.0.0.1:{server.port}"
            gs.set_context(target=target)
            try:
                yield f"local server started by this script at {target} ({args.workers} workers)"
            finally:
                gs.set_context(target=None)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N, 1, 8, 8) scaled to [0, 1] and their int32 labels; a fixed stratified 80/20 split."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, data.target.astype(np.int32), test_size=0.2, random_state=SEED, stratify=data.target)


def make_net() -> nn.SequentialCell:
    """Two 3x3 convolutions with max pooling, then two dense layers: 8x8 -> 4x4 -> 2x2 -> 10 logits."""
    return nn.SequentialCell(
        nn.Conv2d(1, 32, 3, has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, has_bias=True), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Dense(64 * 2 * 2, 64), nn.ReLU(), nn.Dense(64, 10),
    )


def accuracy(net: nn.Cell, x: np.ndarray, y: np.ndarray) -> float:
    """The share of images whose largest logit is their label."""
    return float((net(gs.Tensor(x)).asnumpy().argmax(axis=1) == y).mean())


def plot(losses: list[float], accs: list[float], out: Path) -> None:
    """Training loss and test accuracy per epoch, side by side, saved as a PNG."""
    epochs = np.arange(1, len(losses) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    left.plot(epochs, losses, marker="o")
    left.set(title="training loss (mean per epoch)", xlabel="epoch", ylabel="cross-entropy")
    right.plot(epochs, [100 * a for a in accs], marker="o", color="tab:green")
    right.axhline(97, color="grey", linestyle="--", linewidth=1, label="97%")
    right.set(title="test accuracy", xlabel="epoch", ylabel="%")
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.suptitle("gradserve: a small CNN on scikit-learn's 8x8 digits, gradients from the service")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def train(args: argparse.Namespace) -> None:
    """Trains, printing progress, the final test accuracy, the time taken and the steps per second."""
    gs.set_seed(SEED)
    rng = np.random.default_rng(SEED)
    x_train, x_test, y_train, y_test = digits()
    net = make_net()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    per_epoch = -(-len(x_train) // args.batch_size)
    schedule = nn.cosine_decay_lr(args.lr / 100, args.lr, per_epoch * args.epochs, per_epoch, args.epochs)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=schedule)

    def forward_fn(x: gs.Tensor, y: gs.Tensor) -> gs.Tensor:
        return loss_fn(net(x), y)

    grad_fn = gs.value_and_grad(forward_fn, None, optimizer.parameters)
    losses: list[float] = []
    accs: list[float] = []
    steps = 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        total = 0.0
        bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", unit="step", leave=True)
        for i, idx in enumerate(bar, 1):
            loss, grads = grad_fn(gs.Tensor(x_train[idx]), gs.Tensor(y_train[idx]))
            optimizer(grads)
            steps += 1
            total += float(loss.asnumpy())
            if i % 10 == 0 or i == len(batches):
                bar.set_postfix(loss=f"{total / i:.4f}", acc=f"{accs[-1]:.2%}" if accs else "-")
        losses.append(total / len(batches))
        accs.append(accuracy(net, x_test, y_test))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accs[-1]:.2%}")
        bar.close()
    seconds = time.perf_counter() - start
    plot(losses, accs, args.out)
    print(f"test accuracy: {accs[-1]:.2%} ({len(y_test)} images) after {args.epochs} epochs")
    print(f"time: {seconds:.1f} s, {steps} steps, {steps / seconds:.1f} steps/s (batch {args.batch_size})")
    print(f"figure: {args.out.resolve()}")


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, picks where gradients come from, and trains."""
    args = parse_args(argv)
    with gradients_from(args) as which:
        print(f"gradients from: {which}", flush=True)
        train(args)


if __name__ == "__main__":
    main()
