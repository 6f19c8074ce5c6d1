"""SDK hot-path benchmark (issue 15): per-call cost of small networks called through the SDK, against the same
computation written by hand in NumPy, measured in one run (not a test).

Each case times its sides alternately: a round runs a batch of calls of one side, then of the other (the order
flips every round), so load from elsewhere on the machine falls on both alike. It prints the median per-call time
of each side, and the ratio's median and spread (lowest and highest round) over the rounds. Peers that are
installed (PyTorch eager, JAX jit) are timed in the same rounds; none is required. Times are this thread's CPU
time by default (a shared machine's load then changes them little; everything here runs on one thread: set
OPENBLAS_NUM_THREADS=1), wall time with ``--wall``.

Cases:
  tiny grad      the tutorial's GradOperation()(net)(x, y): d sum((x * z) @ y) / dx; target <= 2.5x hand NumPy
                 (JAX jit's ratio in issue 15)
  tiny grad cell the same gradient through a Cell whose construct calls GradOperation (the tutorial's GradNetWrtX)
  tiny forward   net(x, y)
  mlp grad       gradient of a 784-512-512-10 tanh MLP's loss by list of weights, batch 128; the SDK's per-call
                 overhead is what is above 1x
  --server       the same MLP gradient through a 1-worker server in another process: CPU per request of this
                 client and of the server's process tree (from /proc, Linux), against the in-process gradient plus a
                 bare gRPC echo of the same sizes (407 KB in, 2.7 MB out) served by that process; target <= 1.3x

Run: ``python bench/sdk.py`` (``--help`` for rounds and batch sizes).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent import futures
from typing import Any, Callable

import numpy as np

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor

X = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
Y = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)
Z = np.array([1.0], np.float32)
SIZES = (784, 512, 512, 10)
BATCH = 128


class Net(nn.Cell):
    """The tutorial's network: (x * z) @ y."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul = ops.MatMul()
        self.z = Parameter(Tensor(Z), name="z")

    def construct(self, x: Tensor, y: Tensor) -> Tensor:
        return self.matmul(x * self.z, y)


class GradNetWrtX(nn.Cell):
    """The tutorial's gradient Cell: GradOperation called inside construct."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation()

    def construct(self, x: Tensor, y: Tensor) -> Any:
        return self.grad_op(self.net)(x, y)


class Mlp(nn.Cell):
    """A tanh MLP's mean-squared-error loss."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.layers = nn.CellList([nn.Dense(a, b) for a, b in zip(SIZES, SIZES[1:])])
        for dense in self.layers:
            dense.weight.set_data((rng.standard_normal(dense.weight.shape) / np.sqrt(dense.weight.shape[1])).astype(np.float32))
        self.tanh = ops.Tanh()

    def construct(self, x: Tensor, t: Tensor) -> Tensor:
        h = x
        for i, dense in enumerate(self.layers):
            h = dense(h)
            if i < len(SIZES) - 2:
                h = self.tanh(h)
        d = h - t
        return (d * d).mean()


def tiny_by_hand(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """d sum((x * z) @ y) / dx in NumPy."""
    return (np.ones((x.shape[0], y.shape[1]), np.float32) @ y.T) * z


def mlp_by_hand(x: np.ndarray, t: np.ndarray, ws: list[np.ndarray], bs: list[np.ndarray]) -> list[np.ndarray]:
    """The MLP loss's gradient by every weight and bias, in NumPy (Dense keeps its weight as (out, in))."""
    hs = [x]
    for w, b in zip(ws[:-1], bs[:-1]):
        hs.append(np.tanh(hs[-1] @ w.T + b))
    out = hs[-1] @ ws[-1].T + bs[-1]
    g = (out - t) * np.float32(2.0 / out.size)
    grads: list[np.ndarray] = []
    for i in reversed(range(len(ws))):
        grads[:0] = [g.T @ hs[i], g.sum(axis=0)]
        if i:
            g = (g @ ws[i]) * (1 - hs[i] * hs[i])
    return grads


CLOCK: Callable[[], float] = time.thread_time


def rounds(sides: dict[str, Callable[[], Any]], n_rounds: int, inner: int) -> dict[str, list[float]]:
    """Seconds per call of each side in each round; the sides take turns, their order rotating every round."""
    names = list(sides)
    for fn in sides.values():
        for _ in range(max(3, inner // 4)):
            fn()
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = sides[name]
            t = CLOCK()
            for _ in range(inner):
                fn()
            out[name].append((CLOCK() - t) / inner)
    return out


def report(case: str, times: dict[str, list[float]], base: str, target: float | None) -> None:
    """One line per side: median time, and its ratio to ``base`` (median and spread over the rounds)."""
    ref = times[base]
    print(f"{case}")
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(ts, ref)]
        med = statistics.median(ratios)
        mark = ""
        if target is not None and name == "gradserve":
            mark = f"  (target <= {target}x: {'ok' if med <= target else 'OVER TARGET'})"
        print(f"  {name:22s} {statistics.median(ts) * 1e6:10.1f} us   {med:6.2f}x {base} "
              f"[{min(ratios):.2f} .. {max(ratios):.2f}]{mark}")


def torch_peers(sides: dict[str, Callable[[], Any]], case: str, arrays: dict[str, np.ndarray]) -> None:
    """PyTorch eager's version of the case, when PyTorch is installed."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    if case == "tiny":
        x, y, z = (torch.tensor(arrays[k]) for k in ("x", "y", "z"))

        def tiny() -> Any:
            xr = x.detach().requires_grad_()
            return torch.autograd.grad(((xr * z) @ y).sum(), xr)[0]

        sides["pytorch eager"] = tiny
    else:
        x, t = torch.tensor(arrays["x"]), torch.tensor(arrays["t"])
        params = [torch.tensor(arrays[k]).requires_grad_() for k in sorted(k for k in arrays if k[0] in "wb")]
        ws, bs = params[len(params) // 2:], params[:len(params) // 2]

        def mlp() -> Any:
            h = x
            for i, (w, b) in enumerate(zip(ws, bs)):
                h = h @ w.T + b
                if i < len(ws) - 1:
                    h = torch.tanh(h)
            return torch.autograd.grad(((h - t) ** 2).mean(), params)

        sides["pytorch eager"] = mlp


def jax_peers(sides: dict[str, Callable[[], Any]], case: str) -> None:
    """JAX jit's version of the tiny case, when JAX is installed."""
    if case != "tiny":
        return
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return
    g = jax.jit(jax.grad(lambda x, y, z: jnp.sum((x * z) @ y)))
    x, y, z = (jnp.asarray(a) for a in (X, Y, Z))
    sides["jax jit"] = lambda: g(x, y, z).block_until_ready()


def _serve(ready: Any, stop: Any, reply_bytes: int) -> None:
    """A 1-worker gradserve server and a bare echo server (answering ``reply_bytes`` bytes), until ``stop``."""
    import grpc

    from gradserve.server.app import running
    from gradserve.server.config import ServerConfig

    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    reply = b"x" * reply_bytes
    echo = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=unlimited)
    echo.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: reply)}),))
    echo_port = echo.add_insecure_port("127.0.0.1:0")
    echo.start()
    try:
        with running(ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
            ready.put((server.port, echo_port, os.getpid()))
            stop.wait()
    finally:
        echo.stop(0)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and all its descendants (Linux /proc)."""
    parent, cpu = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d)], cpu[int(d)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, more = {pid}, {pid}
    while more:
        more = {p for p, pp in parent.items() if pp in more} - tree
        tree |= more
    return sum(cpu.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def server_case(mlp_grad: Any, xt: Tensor, tt: Tensor, n_rounds: int, inner: int) -> None:
    """CPU per MLP request through a 1-worker server (client + server tree) against in-process + bare echo."""
    import grpc

    import gradserve as gs
    from gradserve.client import get_backend

    in_process = rounds({"in process": lambda: mlp_grad(xt, tt)}, n_rounds, inner)["in process"]
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(ready, stop, sum(a.asnumpy().nbytes for a in mlp_grad(xt, tt)) + 64))
    proc.start()
    try:
        port, echo_port, server_pid = ready.get(timeout=300)
        gs.set_context(target=f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{echo_port}", options=[("grpc.max_send_message_length", -1),
                                                                      ("grpc.max_receive_message_length", -1)]) as ch:
            echo = ch.unary_unary("/bench.Echo/Echo")
            payload = b"y" * (xt.asnumpy().nbytes + tt.asnumpy().nbytes + 64)
            sides = {"through the server": lambda: mlp_grad(xt, tt), "bare echo": lambda: echo(payload)}
            for fn in sides.values():
                for _ in range(3):
                    fn()
            client: dict[str, list[float]] = {k: [] for k in sides}
            server: dict[str, list[float]] = {k: [] for k in sides}
            for r in range(n_rounds):
                for name in (list(sides) if r % 2 else list(sides)[::-1]):
                    s0, c0 = tree_cpu(server_pid), time.process_time()
                    for _ in range(inner):
                        sides[name]()
                    client[name].append((time.process_time() - c0) / inner)
                    server[name].append((tree_cpu(server_pid) - s0) / inner)
        get_backend().close()
        gs.set_context(target=None)
    finally:
        stop.set()
        proc.join(60)
    total = [c + s for c, s in zip(client["through the server"], server["through the server"])]
    base = [statistics.median(in_process) + c + s for c, s in zip(client["bare echo"], server["bare echo"])]
    ratios = [a / b for a, b in zip(total, base)]
    med = statistics.median(ratios)
    print("server: MLP gradient, CPU per request (process CPU time; the server's from /proc at 10 ms ticks)")
    print(f"  in process             {statistics.median(in_process) * 1e3:8.2f} ms")
    for name in ("through the server", "bare echo"):
        print(f"  {name:22s} client {statistics.median(client[name]) * 1e3:6.2f} ms, "
              f"server tree {statistics.median(server[name]) * 1e3:6.2f} ms")
    print(f"  server / (in process + echo) {med:6.2f}x [{min(ratios):.2f} .. {max(ratios):.2f}]  "
          f"(target <= 1.3x: {'ok' if med <= 1.3 else 'OVER TARGET'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="rounds per case (default 31)")
    parser.add_argument("--inner", type=int, default=200, help="tiny calls per side per round (default 200)")
    parser.add_argument("--mlp-inner", type=int, default=5, help="MLP calls per side per round (default 5)")
    parser.add_argument("--wall", action="store_true", help="time by the wall clock, not this thread's CPU time")
    parser.add_argument("--server", action="store_true", help="also the MLP gradient through a 1-worker server")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.thread_time
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {args.rounds} rounds, "
          f"{'wall' if args.wall else 'thread CPU'} time")

    net = Net()
    x, y = Tensor(X), Tensor(Y)
    grad = ops.GradOperation()(net)
    cell = GradNetWrtX(net)
    want = tiny_by_hand(X, Y, Z)
    np.testing.assert_allclose(grad(x, y).asnumpy(), want, rtol=1e-6)
    np.testing.assert_allclose(cell(x, y).asnumpy(), want, rtol=1e-6)
    np.testing.assert_allclose(net(x, y).asnumpy(), (X * Z) @ Y, rtol=1e-6)

    sides: dict[str, Callable[[], Any]] = {"gradserve": lambda: grad(x, y), "hand numpy": lambda: tiny_by_hand(X, Y, Z)}
    torch_peers(sides, "tiny", {"x": X, "y": Y, "z": Z})
    jax_peers(sides, "tiny")
    report("tiny grad: GradOperation()(net)(x, y)", rounds(sides, args.rounds, args.inner), "hand numpy", 2.5)
    sides = {"gradserve": lambda: cell(x, y), "hand numpy": lambda: tiny_by_hand(X, Y, Z)}
    report("tiny grad cell: GradNetWrtX(net)(x, y)", rounds(sides, args.rounds, args.inner), "hand numpy", 2.5)
    sides = {"gradserve": lambda: net(x, y), "hand numpy": lambda: (X * Z) @ Y}
    report("tiny forward: net(x, y)", rounds(sides, args.rounds, args.inner), "hand numpy", None)

    rng = np.random.default_rng(0)
    mlp = Mlp(rng)
    xs = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    ts = rng.standard_normal((BATCH, SIZES[-1])).astype(np.float32)
    weights = ParameterTuple(mlp.trainable_params())
    mlp_grad = ops.GradOperation(get_by_list=True)(mlp, weights)
    xt, tt = Tensor(xs), Tensor(ts)
    ws = [d.weight.asnumpy() for d in mlp.layers]
    bs = [d.bias.asnumpy() for d in mlp.layers]
    for got, ref in zip(mlp_grad(xt, tt), mlp_by_hand(xs, ts, ws, bs)):
        np.testing.assert_allclose(got.asnumpy(), ref, rtol=2e-3, atol=1e-5)
    sides = {"gradserve": lambda: mlp_grad(xt, tt), "hand numpy": lambda: mlp_by_hand(xs, ts, ws, bs)}
    arrays = {"x": xs, "t": ts, **{f"w{i}": w for i, w in enumerate(ws)}, **{f"b{i}": b for i, b in enumerate(bs)}}
    torch_peers(sides, "mlp", arrays)
    report(f"mlp grad: {'-'.join(map(str, SIZES))}, batch {BATCH}", rounds(sides, args.rounds, args.mlp_inner),
           "hand numpy", None)
    if args.server:
        server_case(mlp_grad, xt, tt, max(5, args.rounds // 3), 20)


if __name__ == "__main__":
    main()
