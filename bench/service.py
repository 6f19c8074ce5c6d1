"""Service benchmark, ratios from one run (targets from issue 5):

* tiny tutorial gradient over gRPC vs a bare gRPC unary echo of the same payload: p50 <= 1.5x
* a 64 MB float32 elementwise gradient vs a bare echo of 64 MB: <= 2x
* throughput of a CPU-bound graph with 2 workers vs 1 under concurrent clients: >= 1.7x
* a small MLP's training step (gradient by list, then ``set_data`` on every weight) through the SDK against
  a server vs on the embedded engine, with the request bytes per step (issue 13: the weights travel with
  the call)
* issue 13, the digits CNN of ``examples/train_digits.py`` (value_and_grad, then Adam): its step time through a
  2-worker server vs embedded (target <= 1.3x), next to the floor a bare gRPC call sets (the embedded step plus
  what an echo of the step's sizes costs beyond a handler computing for that step), and its steps per second
  streamed (``grad_fn.stream``) vs one unary call at a time against that server
* issue 13, one large-batch gradient of that CNN split by ``gradserve.parallel.data_parallel`` over two
  single-worker replicas vs computed by one (target >= 1.7x faster)
* issue 15, CPU per request of an MLP gradient (128x784-512-512-10, through the SDK) against a 1-worker server
  (client + server process + worker, read from ``/proc/<pid>/stat``) vs the same gradient computed in the client
  process plus a bare gRPC call of the same request and response sizes (target <= 1.3x); and the throughput of 2
  workers vs 1 for that MLP and for the tutorial's tiny gradient under concurrent clients (target >= 1.7x)

The servers (gradserve and the echo server) run in this process and the clients in another one, as
they would in production: a client sharing the server's interpreter would contend for its GIL and
for the same cores in a way no deployment does. Echo and gradient calls are made by the same client
process over the same kind of channel, alternately, so that load from elsewhere on the machine
falls on both alike; the echo returns the gradient request's own serialized bytes. The training figures are
measured twice: with the server side and the client kept on separate cores (each replica on its own), as separate
machines would keep them, and with no pinning at all.

Run: ``python bench/service.py`` (about three minutes; ``--help`` for sample counts). Needs the ``examples`` extra
(scikit-learn's digits; threadpoolctl, which comes with it, gives the client one BLAS thread).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import multiprocessing
import os
import statistics
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
from threadpoolctl import threadpool_limits

import gradserve as gs
import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import ParameterTuple, Tensor
from gradserve.client import context, remote
from gradserve.engine import GraphBuilder
from gradserve.parallel import data_parallel
from gradserve.proto import codec
from gradserve.server.app import running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def _sized(req: bytes, ctx: Any) -> bytes:
    """Bytes of the size the request's first 8 bytes give (little-endian), made once per size."""
    return _zeros(int.from_bytes(req[:8], "little"))


@functools.cache
def _zeros(n: int) -> bytes:
    return bytes(n)


_BUSY = np.ones((32, 32), np.float32)


def _busy(req: bytes, ctx: Any) -> bytes:
    """As ``_sized``, after computing (small NumPy products) for as many microseconds as the request's next 8 bytes
    give: a server that computes for a step's time and then answers, at the cost of a bare echo."""
    until = time.perf_counter() + int.from_bytes(req[8:16], "little") / 1e6
    while time.perf_counter() < until:
        _BUSY @ _BUSY
    return _sized(req, ctx)


def busy_request(answer: int, micros: int, size: int) -> bytes:
    """A ``size``-byte request to ``_busy`` for ``answer`` bytes after ``micros`` microseconds of work."""
    return answer.to_bytes(8, "little") + micros.to_bytes(8, "little") + bytes(max(0, size - 16))


def echo_server() -> tuple[grpc.Server, int]:
    """A bare gRPC server whose method Echo returns the request bytes, Sized returns as many bytes as the
    request asks for (``_sized``), and Busy does so after computing for a while (``_busy``)."""
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req),
                       "Sized": grpc.unary_unary_rpc_method_handler(_sized),
                       "Busy": grpc.unary_unary_rpc_method_handler(_busy)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=UNLIMITED)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def pct(xs: list[float], q: float) -> float:
    return float(np.quantile(xs, q))


def paired(a: Callable[[], object], b: Callable[[], object], n: int, warmup: int) -> tuple[list[float], list[float]]:
    """Latencies of ``a`` and ``b`` called alternately ``n`` times each (after ``warmup`` rounds)."""
    ta, tb = [], []
    for i in range(warmup + n):
        for fn, out in ((a, ta), (b, tb)) if i % 2 else ((b, tb), (a, ta)):
            t = time.perf_counter()
            fn()
            if i >= warmup:
                out.append(time.perf_counter() - t)
    return ta, tb


# ---- requests (built in the client process; networks are registered by the client, as users do) ----


def tutorial_request(stub: service_pb2_grpc.GradientStub) -> service_pb2.GradRequest:
    """In [2] of the tutorial: d/dx of (x * z) @ y, by network id."""
    b = GraphBuilder()
    x, y = b.input("x", "float32", (2, 3)), b.input("y", "float32", (3, 3))
    z = b.param("z", np.array([1.0], np.float32))
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("MatMul", x * z, y))))).network_id
    xs = np.array([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], np.float32)
    ys = np.array([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], np.float32)
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(xs), codec.encode_tensor(ys)])


def big_request(stub: service_pb2_grpc.GradientStub, n: int) -> service_pb2.GradRequest:
    """d/dx of Sin(x) for ``n`` float32 elements."""
    b = GraphBuilder()
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", (n,))))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(np.random.rand(n).astype(np.float32))])


def cpu_request(stub: service_pb2_grpc.GradientStub, n: int = 700, k: int = 6) -> service_pb2.GradRequest:
    """A CPU-bound gradient (about 0.15 s of NumPy on one core): the outer product of two vectors
    through ``k`` Sin layers, summed; the request and answer are a few kilobytes."""
    b = GraphBuilder()
    h = b.op("MatMul", b.input("x", "float64", (n, 1)), b.input("y", "float64", (1, n)))
    for _ in range(k):
        h = b.op("Sin", h)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("ReduceSum", h))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(np.full((n, 1), 0.5)),
                                                           codec.encode_tensor(np.full((1, n), 0.5))])


# ---- client processes ----


def latency_client(target: str, echo_target: str, tiny_n: int, big_n: int, out: Any) -> None:
    """Tiny and 64 MB gradients against echoes of the same bytes; sends the latencies to ``out``."""
    with grpc.insecure_channel(target, options=UNLIMITED) as ch, grpc.insecure_channel(echo_target, options=UNLIMITED) as ech:
        stub = service_pb2_grpc.GradientStub(ch)
        echo_call = ech.unary_unary("/bench.Echo/Echo")  # bytes in, bytes out
        tiny = tutorial_request(stub)
        tiny_bytes = tiny.SerializeToString()
        g, e = paired(lambda: stub.Grad(tiny), lambda: echo_call(tiny_bytes), tiny_n, warmup=50)
        big = big_request(stub, 16 << 20)  # 16 Mi float32 = 64 MiB
        big_bytes = big.SerializeToString()
        assert len(big_bytes) >= 64 << 20
        bg, be = paired(lambda: stub.Grad(big), lambda: echo_call(big_bytes), big_n, warmup=1)
    out.send((g, e, bg, be))


def calls_per_second(call: Callable[[], Any], clients: int, per_client: int) -> float:
    """Calls a second of ``clients`` threads each making ``per_client`` calls, all released at once."""
    start = threading.Barrier(clients + 1)

    def client() -> None:
        start.wait()
        for _ in range(per_client):
            call()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return clients * per_client / (time.perf_counter() - t)


def throughput_client(target: str, clients: int, per_client: int, out: Any) -> None:
    """``clients`` threads each making ``per_client`` calls of the CPU-bound gradient; sends req/s to ``out``."""
    with grpc.insecure_channel(target) as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        req = cpu_request(stub)
        for _ in range(clients):  # every worker has compiled the program
            stub.Grad(req)
        out.send(calls_per_second(lambda: stub.Grad(req), clients, per_client))


class RequestBytes(grpc.UnaryUnaryClientInterceptor):
    """Adds up the serialized size of the requests sent, by method name."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        size = len(request) if isinstance(request, bytes) else request.ByteSize()  # the SDK sends some requests serialized
        self.bytes[method] = self.bytes.get(method, 0) + size
        self.calls[method] = self.calls.get(method, 0) + 1
        return continuation(details, request)


def mlp_trainer(batch: int = 32, features: int = 64, hidden: int = 64, classes: int = 10) -> tuple[Callable[[], None], int]:
    """One plain gradient-descent step of a small MLP (by hand: ``set_data`` on each weight) on the current
    backend, and the bytes of its parameters."""
    nn.set_seed(0)
    net = nn.SequentialCell([nn.Dense(features, hidden), nn.ReLU(), nn.Dense(hidden, classes)])
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    weights = ParameterTuple(net.trainable_params())
    grad_fn = ops.GradOperation(get_by_list=True)(loss, weights)
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(batch, features)).astype(np.float32))
    y = Tensor(rng.integers(0, classes, batch).astype(np.int32))

    def step() -> None:
        for p, g in zip(weights, grad_fn(x, y)):
            p.set_data(Tensor(p.asnumpy() - 0.1 * g.asnumpy()))

    return step, sum(p.asnumpy().nbytes for p in weights)


def training_client(target: str, steps: int, rounds: int, out: Any) -> None:
    """Median step times of the MLP on the embedded engine and through ``target``, in alternating rounds of
    ``steps`` steps (one network on each backend), and the remote requests' bytes; sends them to ``out``."""
    threadpool_limits(1)  # as each server worker computes: a fair embedded side, no oversubscribed cores
    sizes = RequestBytes()
    remote.open_channel = lambda item, options: grpc.intercept_channel(context.open_channel(item, options), sizes)
    trainers = {}
    for where in (None, target):
        gs.set_context(target=where)
        trainers[where] = mlp_trainer()
        trainers[where][0]()  # traced, registered and compiled
    times: dict[str | None, list[float]] = {None: [], target: []}
    for r in range(rounds):
        for where in ((None, target) if r % 2 == 0 else (target, None)):
            gs.set_context(target=where)
            step = trainers[where][0]
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times[where].append((time.perf_counter() - t) / steps)
    out.send((statistics.median(times[None]), statistics.median(times[target]), trainers[target][1],
              sizes.bytes, sizes.calls))


def digits_example() -> Any:
    """``examples/train_digits.py`` as a module (its ``make_net`` and ``digits``)."""
    spec = importlib.util.spec_from_file_location("train_digits", Path(__file__).resolve().parents[1] / "examples" / "train_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cnn_trainer(batch: int = 32) -> tuple[Any, nn.Optimizer, list[tuple[Tensor, Tensor]]]:
    """The example's CNN, its Adam and ``value_and_grad``, and one epoch of training batches."""
    example = digits_example()
    gs.set_seed(0)
    x_train, _, y_train, _ = example.digits()
    net = example.make_net()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Adam(net.trainable_params(), learning_rate=1e-3)
    grad_fn = gs.value_and_grad(lambda x, y: loss_fn(net(x), y), None, optimizer.parameters)
    batches = [(Tensor(x_train[i:i + batch]), Tensor(y_train[i:i + batch]))
               for i in range(0, len(x_train) - batch + 1, batch)]
    return grad_fn, optimizer, batches


def digits_client(target: str, echo_target: str, rounds: int, in_flight: int, out: Any) -> None:
    """Seconds per CNN training step over one epoch: embedded, remote unary, remote streamed (``in_flight`` on one
    GradStream), and the bare-gRPC floor; medians of ``rounds`` rounds in rotating order; sends them to ``out``.
    The floor is the embedded step plus what a call to the echo server's Busy of the unary step's request and response
    sizes costs beyond its handler's computing for one embedded step: what the remote step would cost if the server
    added nothing to a bare gRPC call but the compute (a handler that computes for milliseconds makes the call
    around it slower than a bare echo's). The embedded engine gets one BLAS thread, as each server worker has."""
    threadpool_limits(1)
    sizes: dict[str, tuple[int, int]] = {}
    sender = remote._Route.sender

    def measured(route: Any, method: str) -> Callable[[Any, float | None], bytes]:  # while warming up only
        send = sender(route, method)

        def call(request: Any, timeout: float | None) -> bytes:
            answer = send(request, timeout)
            if isinstance(request, bytes):
                sizes[method] = (len(request), len(answer))
            return answer
        return call

    remote._Route.sender = measured  # type: ignore[method-assign]
    runs: dict[str, Callable[[], int]] = {}
    for name, where, streamed in (("embedded", None, False), ("unary", target, False), ("streamed", target, True)):
        gs.set_context(target=where)
        grad_fn, optimizer, batches = cnn_trainer()

        def epoch(grad_fn: Any = grad_fn, optimizer: Any = optimizer, batches: Any = batches, where: Any = where,
                  streamed: bool = streamed) -> int:
            gs.set_context(target=where)
            results = grad_fn.stream(batches, in_flight=in_flight) if streamed else (grad_fn(*b) for b in batches)
            for _, grads in results:
                optimizer(grads)
            return len(batches)

        epoch()  # traced, registered and compiled
        if name == "embedded":
            t = time.perf_counter()
            epoch_steps = epoch()
            step_micros = int((time.perf_counter() - t) / epoch_steps * 1e6)
        runs[name] = epoch
    remote._Route.sender = sender  # type: ignore[method-assign]
    (request_bytes, response_bytes), = sizes.values()  # the step's unary calls (Run, of its value_and_grad graph)
    floor_request = busy_request(response_bytes, step_micros, request_bytes)
    with grpc.insecure_channel(echo_target, options=UNLIMITED) as echo:
        busy = echo.unary_unary("/bench.Echo/Busy")

        def floor() -> int:
            for _ in range(epoch_steps):
                busy(floor_request)
            return epoch_steps

        floor()
        runs["floor"] = floor
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                steps = runs[name]()
                times[name].append((time.perf_counter() - t) / steps - (step_micros / 1e6 if name == "floor" else 0))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    medians["floor"] += medians["embedded"]
    out.send((medians, request_bytes, response_bytes))


def replicas_client(one: str, two: str, batch: int, rounds: int, out: Any) -> None:
    """Median seconds of one gradient of the CNN over ``batch`` images through ``one`` (one replica) and split over
    ``two`` (two replicas), alternately; sends them to ``out``."""
    example = digits_example()
    gs.set_seed(0)
    x_train, _, y_train, _ = example.digits()
    reps = -(-batch // len(x_train))
    x = Tensor(np.concatenate([x_train] * reps)[:batch])
    y = Tensor(np.concatenate([y_train] * reps)[:batch])
    net = example.make_net()
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    split = data_parallel(ops.GradOperation(get_by_list=True)(loss, ParameterTuple(net.trainable_params())))
    times: dict[str, list[float]] = {one: [], two: []}
    for where in (one, two):
        gs.set_context(target=where)
        split(x, y)  # traced, registered and compiled
    for r in range(rounds):
        for where in ((one, two) if r % 2 == 0 else (two, one)):
            gs.set_context(target=where)
            t = time.perf_counter()
            split(x, y)
            times[where].append(time.perf_counter() - t)
    out.send((statistics.median(times[one]), statistics.median(times[two])))


def big_mlp(batch: int = 128) -> tuple[Callable[[], Any], int, int]:
    """Issue 15's MLP (784-512-512-10, sparse softmax cross-entropy): a call of its weights' gradient on a batch, on the
    backend current when called, and the bytes of its inputs and of its gradients (the payload sizes)."""
    nn.set_seed(0)
    net = nn.SequentialCell([nn.Dense(784, 512), nn.ReLU(), nn.Dense(512, 512), nn.ReLU(), nn.Dense(512, 10)])
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    weights = ParameterTuple(net.trainable_params())
    grad_fn = ops.GradOperation(get_by_list=True)(loss, weights)
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(batch, 784)).astype(np.float32))
    y = Tensor(rng.integers(0, 10, batch).astype(np.int32))
    return (lambda: grad_fn(x, y)), x.asnumpy().nbytes + y.asnumpy().nbytes, sum(p.asnumpy().nbytes for p in weights)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far, from ``/proc``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_client(target: str, echo_target: str, server_pid: int, worker_pids: list[int], rounds: int, per_block: int,
               out: Any) -> None:
    """CPU seconds per MLP gradient: through ``target`` (client, server process and worker), computed here, and a bare
    gRPC call to ``echo_target`` of the same request and response sizes (client and echo server, which runs in the
    server's process); blocks of ``per_block`` calls in rotating order over ``rounds`` rounds; sends per-round figures."""
    threadpool_limits(1)  # as each server worker computes
    call, in_bytes, out_bytes = big_mlp()
    pad = 64  # the messages' own framing and ids, beyond the tensors' bytes
    with grpc.insecure_channel(echo_target, options=UNLIMITED) as ech:
        sized = ech.unary_unary("/bench.Echo/Sized")
        ask = (out_bytes + pad).to_bytes(8, "little") + bytes(in_bytes + pad - 8)
        sides: dict[str, tuple[Callable[[], Any], list[int]]] = {
            "server": (lambda: (gs.set_context(target=target), call()), [server_pid, *worker_pids]),
            "local": (lambda: (gs.set_context(target=None), call()), [server_pid]),
            "echo": (lambda: sized(ask), [server_pid]),
        }
        for fn, _ in sides.values():
            for _ in range(3):
                fn()  # traced, registered and compiled; channels open
        got: dict[str, list[list[float]]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                fn, pids = sides[name]
                fn()  # the context switch and first call outside the block
                before = [cpu_seconds("self"), *map(cpu_seconds, pids)]
                for _ in range(per_block):
                    fn()
                after = [cpu_seconds("self"), *map(cpu_seconds, pids)]
                got[name].append([(b - a) / per_block for a, b in zip(before, after)])
    out.send((got, in_bytes, out_bytes))


class Captured(grpc.UnaryUnaryClientInterceptor):
    """Keeps the last request sent of each method, serialized."""

    def __init__(self) -> None:
        self.sent: dict[str, bytes] = {}

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.sent[details.method] = request if isinstance(request, bytes) else request.SerializeToString()
        return continuation(details, request)


def replay_client(target: str, case: str, clients: int, per_client: int, out: Any) -> None:
    """Requests per second of ``case`` ("mlp": issue 15's MLP gradient as the SDK sends it, registered first; "tiny":
    the tutorial's gradient) from ``clients`` threads, each making ``per_client`` calls. The requests are sent as
    prebuilt bytes and the answers not parsed, so that the client takes as little of the machine's cores as it can."""
    with grpc.insecure_channel(target, options=UNLIMITED) as ch:
        if case == "mlp":
            captured = Captured()
            remote.open_channel = lambda item, options: grpc.intercept_channel(context.open_channel(item, options), captured)
            gs.set_context(target=target)
            big_mlp()[0]()
            register = captured.sent.get("/gradserve.v1.Gradient/RegisterNetwork")
            if register is not None:
                ch.unary_unary("/gradserve.v1.Gradient/RegisterNetwork")(register)
            request = captured.sent["/gradserve.v1.Gradient/Grad"]
        else:
            request = tutorial_request(service_pb2_grpc.GradientStub(ch)).SerializeToString()
        grad = ch.unary_unary("/gradserve.v1.Gradient/Grad")  # bytes in, bytes out
        for _ in range(clients * 2):  # every worker has compiled the program
            grad(request)
        out.send(calls_per_second(lambda: grad(request), clients, per_client))


def scaling(case: str, rounds: int, clients: int, per_client: int) -> None:
    """Print ``case``'s throughput with 2 workers vs 1 (fresh servers, alternating order, ratio per round)."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            with running(ServerConfig(host="127.0.0.1", port=0, workers=workers, log_level="warning")) as server:
                rates[workers].append(in_client_process(replay_client, f"127.0.0.1:{server.port}", case, clients, per_client))
    ratios = [two / one for one, two in zip(rates[1], rates[2])]
    print(f"{case} throughput ({clients} clients in another process, {rounds} rounds): 1 worker {_rounded(rates[1])} req/s, "
          f"2 workers {_rounded(rates[2])} req/s")
    print(f"RATIO {case} throughput 2 vs 1 workers {statistics.median(ratios):.2f}x [{min(ratios):.2f}..{max(ratios):.2f}] "
          f"(target >= 1.7x)")


def cpu_per_request(rounds: int, per_block: int) -> None:
    """Print issue 15's CPU per MLP request through a 1-worker server vs in-process compute plus a bare gRPC call."""
    echo, echo_port = echo_server()
    try:
        with running(ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")) as server:
            got, in_bytes, out_bytes = in_client_process(
                cpu_client, f"127.0.0.1:{server.port}", f"127.0.0.1:{echo_port}", os.getpid(),
                server.servicer.pool.pids(), rounds, per_block)
    finally:
        echo.stop(0)
    served = [sum(r) for r in got["server"]]
    bare = [loc[0] + e[0] + e[1] for loc, e in zip(got["local"], got["echo"])]
    ms = lambda xs: f"{statistics.median(xs)*1e3:.2f} ms [{min(xs)*1e3:.2f}..{max(xs)*1e3:.2f}]"  # noqa: E731
    print(f"MLP gradient ({in_bytes} bytes in, {out_bytes} out), CPU per request, median [spread] of {rounds} rounds of "
          f"{per_block}: through a 1-worker server {ms(served)} (client {ms([r[0] for r in got['server']])}, server "
          f"process {ms([r[1] for r in got['server']])}, worker {ms([sum(r[2:]) for r in got['server']])})")
    print(f"  in process {ms([r[0] for r in got['local']])}; bare gRPC call of those sizes {ms([e[0] + e[1] for e in got['echo']])} "
          f"(client {ms([e[0] for e in got['echo']])}, server {ms([e[1] for e in got['echo']])})")
    ratios = [s / b for s, b in zip(served, bare)]
    print(f"RATIO MLP CPU per request server/(in process + bare gRPC) {statistics.median(ratios):.2f}x "
          f"[{min(ratios):.2f}..{max(ratios):.2f}] (target <= 1.3x)")


def pinnable(pin: bool) -> list[int]:
    """The cores this process may run on, when pinning is asked for and the platform can; else none."""
    return sorted(os.sched_getaffinity(0)) if pin and hasattr(os, "sched_setaffinity") else []


def split_cores(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """The cores for the servers' side and for the client when pinned: the first allowed core and the others, as
    separate machines would keep them apart (no thread migrating between them); (None, None) to leave both free."""
    allowed = pinnable(pin)
    return ({allowed[0]}, set(allowed[1:])) if len(allowed) > 1 else (None, None)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process (and the worker processes it starts meanwhile) on ``cpus``; its affinity restored after."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _on_cores(cpus: set[int] | None, target: Callable[..., None], *args: Any) -> None:
    """``target(*args)`` in this process pinned to ``cpus`` (None: where it is)."""
    with pinned(cpus):
        target(*args)


def in_client_process(target: Callable[..., None], *args: Any, cpus: set[int] | None = None) -> Any:
    """Run ``target(*args, conn)`` in a fresh process (spawned: this one holds gRPC state), on ``cpus`` if given, and
    return what it sends."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_on_cores, args=(cpus, target, *args, send))
    proc.start()
    send.close()
    try:
        return recv.recv()
    finally:
        proc.join()


def throughput(workers: int, clients: int, per_client: int) -> float:
    """Requests per second of the CPU-bound graph with ``clients`` concurrent callers."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=workers)) as server:
        return in_client_process(throughput_client, f"127.0.0.1:{server.port}", clients, per_client)


def training(steps: int, rounds: int) -> None:
    """Print the MLP's remote and embedded step times and bytes per remote step."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=2)) as server:
        embedded, served, param_bytes, sent, calls = in_client_process(
            training_client, f"127.0.0.1:{server.port}", steps, rounds)
        registered = {m: n for m, code, n in server.servicer.metrics.snapshot() if code == "OK"}
    print(f"MLP training step: embedded {embedded*1e3:.3f} ms, remote {served*1e3:.3f} ms, "
          f"{calls.get('Grad', 0)} Grad calls and {registered.get('RegisterNetwork', 0)} RegisterNetwork on the server")
    print(f"MLP bytes per remote step {sent.get('Grad', 0) / max(1, calls.get('Grad', 0)):.0f} "
          f"(its parameters: {param_bytes} bytes)")
    print(f"RATIO MLP training step remote/embedded {served / embedded:.2f}x (issue 13's target, for the digits CNN: <= 1.3x)")


def digits(rounds: int, in_flight: int, pin: bool) -> None:
    """Print the digits CNN's remote/embedded step time, its bare-gRPC floor, and its streamed vs unary steps per
    second (2 workers); with ``pin``, the servers (gradserve and the echo) and the workers on one core and the client
    (which also runs the embedded side) on the other."""
    server_cpus, client_cpus = split_cores(pin)
    with pinned(server_cpus), running(ServerConfig(host="127.0.0.1", port=0, workers=2, log_level="warning")) as server:
        echo, echo_port = echo_server()
        try:
            t, request_bytes, response_bytes = in_client_process(
                digits_client, f"127.0.0.1:{server.port}", f"127.0.0.1:{echo_port}", rounds, in_flight, cpus=client_cpus)
        finally:
            echo.stop(0)
    print(f"digits CNN, {'server and client on separate cores' if server_cpus else 'no core pinning'}:")
    print(f"digits CNN training step (batch 32, Adam): embedded {t['embedded']*1e3:.2f} ms, remote unary "
          f"{t['unary']*1e3:.2f} ms, remote streamed {t['streamed']*1e3:.2f} ms (in_flight={in_flight}), bare-gRPC floor "
          f"{t['floor']*1e3:.2f} ms ({request_bytes} bytes in, {response_bytes} out)")
    print(f"RATIO digits CNN step remote/embedded {t['unary'] / t['embedded']:.2f}x (target <= 1.3x); "
          f"floor/embedded {t['floor'] / t['embedded']:.2f}x")
    print(f"RATIO digits CNN steps/s streamed vs unary {t['unary'] / t['streamed']:.2f}x "
          f"({1 / t['streamed']:.0f} vs {1 / t['unary']:.0f} steps/s, 2-worker server)")


def serve_replica(config: ServerConfig, cpus: set[int] | None, conn: Any) -> None:
    """A replica: a server in this process (on ``cpus`` if given), its port sent on ``conn``; when told to stop, it
    sends the number of Grad calls it answered."""
    with pinned(cpus), running(config) as server:
        conn.send(server.port)
        conn.recv()
        conn.send(sum(n for m, code, n in server.servicer.metrics.snapshot() if m == "Grad" and code == "OK"))


@contextlib.contextmanager
def replica(config: ServerConfig, cpus: set[int] | None, answered: list[int]) -> Iterator[str]:
    """The target of a replica in its own process, as replicas are (two servers in one process would share its
    interpreter lock); appends the Grad calls it answered to ``answered`` when it stops."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=serve_replica, args=(config, cpus, theirs))
    proc.start()
    try:
        yield f"127.0.0.1:{ours.recv()}"
        ours.send("stop")
        answered.append(ours.recv())
    finally:
        proc.join()


def replicas(batch: int, rounds: int, pin: bool) -> None:
    """Print one large-batch CNN gradient's time on one single-worker replica and split over two, each replica a
    process of its own; with ``pin``, each on a core of its own (the client free)."""
    config = ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="warning")
    allowed = pinnable(pin)
    cpus: list[set[int] | None] = [{allowed[0]}, {allowed[1]}] if len(allowed) > 1 else [None, None]
    calls: list[int] = []
    with replica(config, cpus[0], calls) as a, replica(config, cpus[1], calls) as b:
        one, two = in_client_process(replicas_client, a, f"{a},{b}", batch, rounds)
    print(f"digits CNN gradient of {batch} images, {'each replica on its own core' if cpus[0] else 'no core pinning'}: "
          f"1 replica {one*1e3:.0f} ms, 2 replicas {two*1e3:.0f} ms (Grad calls answered by each replica: {calls[::-1]})")
    print(f"RATIO large-batch gradient 1 vs 2 replicas {one / two:.2f}x (target >= 1.7x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", type=int, default=2000, help="tiny gradient/echo pairs (default 2000)")
    parser.add_argument("--big", type=int, default=9, help="64 MB gradient/echo pairs (default 9)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for throughput (default 4)")
    parser.add_argument("--per-client", type=int, default=5, help="calls per client per measurement (default 5)")
    parser.add_argument("--train-steps", type=int, default=100, help="MLP training steps per round (default 100)")
    parser.add_argument("--train-rounds", type=int, default=6, help="alternating embedded/remote MLP rounds (default 6)")
    parser.add_argument("--only-training", action="store_true", help="measure the training figures only (MLP, digits CNN, replicas)")
    parser.add_argument("--digits-rounds", type=int, default=5, help="rotating embedded/unary/streamed CNN epochs (default 5)")
    parser.add_argument("--in-flight", type=int, default=2, help="requests on the stream for the streamed CNN (default 2)")
    parser.add_argument("--big-batch", type=int, default=4096, help="images in the large-batch CNN gradient (default 4096)")
    parser.add_argument("--replica-rounds", type=int, default=7, help="alternating 1/2-replica gradients (default 7; 0 skips them)")
    parser.add_argument("--rounds", type=int, default=11, help="paired throughput measurements (default 11: short rounds, many of them, so that the median ratio outlasts the machine's speed drifting)")
    parser.add_argument("--cpu-rounds", type=int, default=7, help="rotating server/in-process/echo MLP blocks (default 7)")
    parser.add_argument("--cpu-per-block", type=int, default=30, help="MLP calls per block (default 30)")
    parser.add_argument("--scaling-rounds", type=int, default=5, help="alternating 1/2-worker rounds of issue 15's cases (default 5)")
    parser.add_argument("--only-server-cpu", action="store_true",
                        help="measure issue 15's figures only (MLP CPU per request, 2 vs 1 worker throughput)")
    args = parser.parse_args()
    if args.only_server_cpu:
        cpu_per_request(args.cpu_rounds, args.cpu_per_block)
        for case, calls in (("mlp", 40), ("tiny", 400)) if args.scaling_rounds else ():
            scaling(case, args.scaling_rounds, args.clients, calls)
        return
    training(args.train_steps, args.train_rounds)
    for pin in (True, False):
        digits(args.digits_rounds, args.in_flight, pin)
    for pin in (True, False) if args.replica_rounds else ():
        replicas(args.big_batch, args.replica_rounds, pin)
    if args.only_training:
        return

    echo, echo_port = echo_server()
    try:
        with running(ServerConfig(host="127.0.0.1", port=0, workers=2)) as server:
            g, e, bg, be = in_client_process(latency_client, f"127.0.0.1:{server.port}", f"127.0.0.1:{echo_port}",
                                             args.tiny, args.big)
    finally:
        echo.stop(0)
    print(f"tiny gradient  p50 {pct(g, .5)*1e3:.3f} ms  p99 {pct(g, .99)*1e3:.3f} ms  (n={len(g)})")
    print(f"tiny echo      p50 {pct(e, .5)*1e3:.3f} ms  p99 {pct(e, .99)*1e3:.3f} ms  (n={len(e)})")
    print(f"RATIO tiny p50 {pct(g, .5) / pct(e, .5):.2f}x (target <= 1.5x)  p99 {pct(g, .99) / pct(e, .99):.2f}x")
    print(f"64 MB gradient median {statistics.median(bg)*1e3:.0f} ms, 64 MB echo median {statistics.median(be)*1e3:.0f} ms"
          f"  (n={len(bg)})")
    print(f"RATIO 64MB {statistics.median(bg) / statistics.median(be):.2f}x (target <= 2x)")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):  # 1, 2, 2, 1, 1, 2, ...: drift in the machine's speed falls on both alike
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            rates[workers].append(throughput(workers, args.clients, args.per_client))
    # Each round's two measurements follow each other, so their ratio is the one least moved by the
    # machine's speed, which drifts by more than the effect measured on a shared VM.
    ratios = [two / one for one, two in zip(rates[1], rates[2])]
    print(f"CPU-bound throughput ({args.clients} clients in another process, {args.rounds} rounds): "
          f"1 worker {_rounded(rates[1])} req/s, 2 workers {_rounded(rates[2])} req/s, ratios {_rounded(ratios)}")
    print(f"RATIO throughput 2 vs 1 workers {statistics.median(ratios):.2f}x, median of the rounds' ratios (target >= 1.7x)")


def _rounded(xs: list[float]) -> list[float]:
    return [round(x, 2) for x in xs]


if __name__ == "__main__":
    main()
