"""Load test: N client processes call a gradserve server for a set time with a mix of requests.

The mix: the tutorial's tiny gradient (answered by the server's local lane once warm), an MLP's weight
gradients (answered by a worker), and, with ``--bad``, deliberately bad requests whose errors are expected
(NOT_FOUND for an unknown network id, INVALID_ARGUMENT for a wrong input shape and for bytes that do not
parse). Prints throughput, p50/p99 latency per kind, answers by status code (expected vs unexpected; an OK
answer whose bytes differ from that client's first one counts as unexpected), and the RSS of the server and
its workers at start (after a warm-up), middle and end, with the growth in percent.

Run: ``python bench/load.py`` (its own server, 2 workers, 8 clients, 30 s), ``--clients 16 --seconds 300``
for the acceptance run (0 unexpected answers, RSS growth under 5%), or ``--target 127.0.0.1:PORT --pid PID``
against a running server (RSS of PID and its descendants). Loopback only; every loop is bounded in time.
"""
from __future__ import annotations

import argparse
import collections
import gc
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fuzz
import fuzzkit
import service

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server.app import Server
from gradserve.server.config import ServerConfig
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

GRAD = "/gradserve.v1.Gradient/Grad"
CALL_TIMEOUT = 30.0
BAD_KINDS = ("unknown network", "wrong shape", "unparsable")
EXPECTED = {"unknown network": "NOT_FOUND", "wrong shape": "INVALID_ARGUMENT", "unparsable": "INVALID_ARGUMENT"}
"""The one status each deliberately bad request must get."""


def mlp_request(stub: service_pb2_grpc.GradientStub, batch: int = 32, features: int = 64, hidden: int = 128,
                classes: int = 10) -> service_pb2.GradRequest:
    """Weight gradients of a two-layer MLP's softmax cross-entropy loss on one batch, by network id."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", "float32", (batch, features))
    labels = b.input("labels", "float32", (batch, classes))
    w1 = b.param("w1", rng.normal(0, 0.1, (features, hidden)).astype(np.float32))
    b1 = b.param("b1", np.zeros(hidden, np.float32))
    w2 = b.param("w2", rng.normal(0, 0.1, (hidden, classes)).astype(np.float32))
    h = b.op("ReLU", b.op("MatMul", x, w1) + b1)
    loss, _ = b.op("SoftmaxCrossEntropyWithLogits", b.op("MatMul", h, w2), labels)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("ReduceMean", loss))))).network_id
    onehot = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    return service_pb2.GradRequest(
        network_id=nid, grad=graph_pb2.GradOperation(get_by_list=True, weights=["w1", "b1", "w2"]),
        inputs=[codec.encode_tensor(rng.normal(size=(batch, features)).astype(np.float32)), codec.encode_tensor(onehot)])


def requests(stub: service_pb2_grpc.GradientStub) -> dict[str, bytes]:
    """Serialized Grad requests by kind (registering the networks they name)."""
    tiny = service.tutorial_request(stub)
    wrong = service_pb2.GradRequest()
    wrong.CopyFrom(tiny)
    wrong.inputs[0].CopyFrom(codec.encode_tensor(np.ones((3, 2), np.float32)))
    return {"tutorial": tiny.SerializeToString(), "mlp": mlp_request(stub).SerializeToString(),
            "unknown network": service_pb2.GradRequest(network_id="sha256:" + "0" * 64).SerializeToString(),
            "wrong shape": wrong.SerializeToString(), "unparsable": b"\xff\xff\xff"}


def client(index: int, address: str, mlp_share: float, bad_share: float, ready: Any, start: Any, times: Any,
           out: Any) -> None:
    """Call from when ``start`` is set until ``times[1]``, counting from ``times[0]`` (the warm-up's end); send
    (latencies by kind, codes by (kind, code), OK answers differing from the first)."""
    rng = random.Random(index)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    first: dict[str, bytes] = {}
    wrong = 0
    with grpc.insecure_channel(address) as channel:
        payloads = requests(service_pb2_grpc.GradientStub(channel))
        call = channel.unary_unary(GRAD)
        for kind in ("tutorial", "mlp"):  # warm: the first answers are the reference ones
            first[kind] = call(payloads[kind], timeout=CALL_TIMEOUT)
        ready.release()
        start.wait()
        measure_from, deadline = times[0], times[1]
        while (now := time.monotonic()) < deadline:
            r = rng.random()
            kind = rng.choice(BAD_KINDS) if r < bad_share else "mlp" if r < bad_share + mlp_share else "tutorial"
            t = time.perf_counter()
            try:
                answer = call(payloads[kind], timeout=CALL_TIMEOUT)
                code = "OK"
            except grpc.RpcError as exc:
                answer, code = b"", exc.code().name
            if now < measure_from:
                continue
            codes[kind, code] += 1
            if code == "OK":
                latencies[kind].append(time.perf_counter() - t)
                wrong += kind in first and answer != first[kind]
    out.send((dict(latencies), codes, wrong))


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


class Memory:
    """RSS of the server and its workers: this process and its pool when the server runs here, else ``pid``'s tree."""

    def __init__(self, server: Server | None, pid: int | None) -> None:
        self.server, self.pid = server, pid

    def rss(self) -> int | None:
        if self.server is not None:
            gc.collect()  # the server's process is this one
            return fuzzkit.total_rss([os.getpid(), *self.server.pool.pids()])
        return fuzzkit.total_rss(descendants(self.pid)) if self.pid else None


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time after the warm-up (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the server started here (default 2)")
    parser.add_argument("--target", default="", help="host:port of a loopback server (default: start one here)")
    parser.add_argument("--pid", type=int, default=None, help="with --target: the server's pid, for RSS")
    parser.add_argument("--mlp", type=float, default=0.3, help="share of MLP gradients (default 0.3; the rest tutorial)")
    parser.add_argument("--bad", type=float, default=0.0, help="share of deliberately bad requests (default 0)")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")  # clients hold no state of this process (it runs the server)
    config = ServerConfig(host="127.0.0.1", port=0, workers=args.workers)
    with fuzz.target(args.target, config) as (address, server):
        memory = Memory(server, args.pid)
        ready, start, times = ctx.Semaphore(0), ctx.Event(), ctx.Array("d", 2)
        pipes, procs = [], []
        for i in range(args.clients):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=client, args=(i, address, args.mlp, args.bad, ready, start, times, send), daemon=True)
            proc.start()
            send.close()
            pipes.append(recv)
            procs.append(proc)
        for _ in procs:
            if not ready.acquire(timeout=300):
                raise SystemExit("clients did not get ready within 300 s")
        warm = time.monotonic() + args.warmup
        times[0], times[1] = warm, warm + args.seconds
        start.set()
        time.sleep(args.warmup)
        rss = {"start": memory.rss()}
        time.sleep(args.seconds / 2)
        rss["middle"] = memory.rss()
        time.sleep(max(0.0, times[1] - time.monotonic()) + 1.0)
        rss["end"] = memory.rss()  # before the clients' results, which this process (the server's) then holds
        results = [p.recv() for p in pipes]  # each client answers once its time is up
        for proc in procs:
            proc.join(timeout=60)

    latencies: dict[str, list[float]] = collections.defaultdict(list)
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    wrong = 0
    for lat, c, w in results:
        for kind, xs in lat.items():
            latencies[kind] += xs
        codes.update(c)
        wrong += w
    ok = sum(len(xs) for xs in latencies.values())
    total = sum(codes.values())
    unexpected = wrong + sum(n for (kind, code), n in codes.items() if code != EXPECTED.get(kind, "OK"))
    elapsed = args.seconds
    print(f"{args.clients} clients, {elapsed:.0f} s after {args.warmup:.0f} s of warm-up, {'own server with ' + str(args.workers) + ' workers' if server else address}")
    print(f"throughput: {total / elapsed:.0f} calls/s ({ok / elapsed:.0f} OK gradients/s)")
    for kind, xs in sorted(latencies.items()):
        print(f"  {kind:10} n={len(xs):7}  p50 {service.pct(xs, .5) * 1e3:8.2f} ms  p99 {service.pct(xs, .99) * 1e3:8.2f} ms")
    print("answers by kind and status:")
    for (kind, code), n in sorted(codes.items()):
        verdict = "expected" if code == EXPECTED.get(kind, "OK") else "UNEXPECTED"
        print(f"  {kind:16} {code:20} {n:8}  {verdict}")
    print(f"OK answers differing from the client's first: {wrong}")
    print(f"unexpected answers: {unexpected}")
    s, m, e = rss["start"], rss["middle"], rss["end"]
    growth = f"{(e - s) / s * 100:+.1f}%" if s and e else "n/a"
    print(f"server + workers RSS: start {mib(s)}, middle {mib(m)}, end {mib(e)}; growth {growth}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
