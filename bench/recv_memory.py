"""Receive-side memory: N client processes each send one large Grad request at the same moment.

Starts ``python -m gradserve serve --host 127.0.0.1 --port 0 --workers 2`` (plus any ``--flag``s given
after ``--``), reads its port from the ``server_start`` log line, sends each client's request once all
are connected, and meanwhile calls a tiny gradient over and over from this process (small requests must
keep being served while large ones wait). Prints the answers by status code (with the first refusal's
message), the tiny calls' answers and slowest latency, and the server process's RSS: at rest, its peak
(VmHWM) and what it keeps afterwards. Workers are separate processes, bounded by their own budgets.

Run: ``python bench/recv_memory.py`` (24 clients x 64 MiB), ``--clients 8 --mib 16``, or
``python bench/recv_memory.py -- --max-receive-bytes 268435456``. Loopback only, bounded in time.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.v1 import service_pb2, service_pb2_grpc

GRAD = "/gradserve.v1.Gradient/Grad"
CALL_TIMEOUT = 120.0
START_TIMEOUT = 300.0
MiB = 1 << 20


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def start_server(flags: list[str]) -> tuple[subprocess.Popen[str], int]:
    """The server process and its port, read from its ``server_start`` line."""
    proc = subprocess.Popen([sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--workers", "2", *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not found and '"server_start"' in line:
                found.append(json.loads(line)["port"])

    threading.Thread(target=read, daemon=True).start()
    until = time.monotonic() + START_TIMEOUT
    while not found:
        if proc.poll() is not None or time.monotonic() > until:
            proc.kill()
            raise SystemExit(f"the server did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    return proc, found[0]


def sin_network(stub: service_pb2_grpc.GradientStub, n: int) -> str:
    """Registers Sin(x) for ``n`` float32 elements (the network of ``service.big_request``); its id."""
    b = GraphBuilder()
    graph = codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", (n,)))))
    return stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(graph=graph)).network_id


def client(address: str, nid: str, n: int, ready: Any, start: Any, out: Any) -> None:
    """Send one Grad of ``n`` float32 elements when ``start`` is set; send back (code, message, seconds)."""
    x = np.random.default_rng(0).random(n, dtype=np.float32)
    raw = service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(x)]).SerializeToString()
    del x
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                 ("grpc.max_receive_message_length", -1)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        call = channel.unary_unary(GRAD)
        ready.release()
        start.wait()
        t = time.perf_counter()
        try:
            call(raw, timeout=CALL_TIMEOUT)
            code, message = "OK", ""
        except grpc.RpcError as exc:
            code, message = exc.code().name, exc.details() or ""
    out.send((code, message, time.perf_counter() - t))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--mib", type=int, default=64, help="each request's tensor, in MiB (float32)")
    parser.add_argument("--declare", action="store_true",
                        help="the tiny calls send gradserve-request-bytes (received in the small lane)")
    parser.add_argument("flags", nargs="*", help="after --: more gradserve serve flags")
    args = parser.parse_args()
    proc, port = start_server(args.flags)
    address = f"127.0.0.1:{port}"
    ctx = multiprocessing.get_context("spawn")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GradientStub(channel)
            n = args.mib * MiB // 4
            nid = sin_network(stub, n)
            tiny = service.tutorial_request(stub).SerializeToString()
            call = channel.unary_unary(GRAD)
            declared = [("gradserve-request-bytes", str(len(tiny)))] if args.declare else None
            for _ in range(3):  # warm: the lane takes the tiny plan from its second call on
                call(tiny, timeout=CALL_TIMEOUT, metadata=declared)
            rest = status_kib(proc.pid)["VmRSS"]
            ready, start = ctx.Semaphore(0), ctx.Event()
            pipes, procs = [], []
            for _ in range(args.clients):
                receive, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=client, args=(address, nid, n, ready, start, send))
                p.start()
                pipes.append(receive)
                procs.append(p)
            for _ in range(args.clients):
                if not ready.acquire(timeout=START_TIMEOUT):
                    raise SystemExit("a client did not connect")
            start.set()
            t0 = time.perf_counter()
            small: collections.Counter[str] = collections.Counter()
            slowest = 0.0
            results = []
            while len(results) < args.clients:
                t = time.perf_counter()
                try:
                    call(tiny, timeout=CALL_TIMEOUT, metadata=declared)
                    small["OK"] += 1
                except grpc.RpcError as exc:
                    small[exc.code().name] += 1
                slowest = max(slowest, time.perf_counter() - t)
                done = [r for r in pipes if r.poll()]
                results += [r.recv() for r in done]
                pipes = [r for r in pipes if r not in done]
                if time.perf_counter() - t0 > CALL_TIMEOUT + 30:
                    raise SystemExit("the clients did not finish")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            for p in procs:
                p.join(timeout=30)
            time.sleep(2.0)  # let the server finish sending and free what it frees
            after = status_kib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    codes = collections.Counter(code for code, _, _ in results)
    refused = next((m for code, m, _ in results if code != "OK"), "")
    print(f"{args.clients} clients x {args.mib} MiB Grad, workers 2, flags {args.flags or 'none'}: {elapsed:.1f} s")
    print(f"  large answers: {dict(codes)}; slowest {max(s for _, _, s in results):.1f} s")
    if refused:
        print(f"  first refusal: {refused[:300]}")
    print(f"  tiny calls meanwhile ({'declared' if args.declare else 'undeclared'}): {dict(small)}; slowest {slowest * 1000:.0f} ms")
    print(f"  server process RSS: at rest {rest / MiB:.0f} MiB, peak {after['VmHWM'] / MiB:.0f} MiB, "
          f"afterwards {after['VmRSS'] / MiB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
