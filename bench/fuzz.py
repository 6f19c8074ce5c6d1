"""Long fuzz runs against a gradserve server: the generators of tests/fuzzkit.py (the CI fuzz test's), drawn
from a seeded ``random.Random`` so that case ``i`` of seed ``s`` is the same on every run.

Counts answers by method and status code, checks health every 100 cases (and, for its own server, that no
worker was replaced), and writes every INTERNAL or UNKNOWN answer with its request bytes in hex to ``--out``.
Bounded by ``--cases`` and ``--seconds``; loopback only. Exit status 1 when any case failed.

Run: ``python bench/fuzz.py --seconds 600`` (its own 2-worker server), or ``--target 127.0.0.1:PORT``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fuzzkit

from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig


@contextlib.contextmanager
def target(address: str, config: ServerConfig) -> Iterator[tuple[str, Server | None]]:
    """``address`` (loopback only) and no server, or the address of a server of our own running ``config``."""
    if address:
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"{sys.argv[0]} targets loopback only, got {address}")
        yield address, None
        return
    with running(config, grace=5.0) as server:
        yield f"127.0.0.1:{server.port}", server


def serving(channel: grpc.Channel) -> bool:
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError:
        return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def rss(server: Server | None) -> int:
    return fuzzkit.total_rss([os.getpid(), *server.pool.pids()]) if server else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    parser.add_argument("--cases", type=int, default=100_000, help="stop after this many cases (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="case i draws from seed * 10**9 + i (default 0)")
    parser.add_argument("--target", default="", help="host:port of a loopback server (default: start one)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the server started here (default 2)")
    parser.add_argument("--timeout", type=float, default=15.0, help="deadline of each call in seconds (default 15)")
    parser.add_argument("--reproducers", action="store_true", help="also send issue 9's reproducers first")
    parser.add_argument("--out", default="fuzz-failures.txt", help="where INTERNAL/UNKNOWN cases go (default fuzz-failures.txt)")
    args = parser.parse_args()

    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    failures = 0
    out = Path(args.out)
    with target(args.target, fuzzkit.server_config(args.workers)) as (address, server), grpc.insecure_channel(address) as channel, \
            out.open("w") as report:
        pids = server.pool.pids() if server else []
        gc.collect()
        start_rss, start, done = rss(server), time.monotonic(), 0

        def record(label: str, calls: list[fuzzkit.Call]) -> None:
            nonlocal failures
            results = fuzzkit.run_calls(channel, calls, args.timeout)
            for call, outcome in results:
                for code in outcome.codes:
                    counts[call.method, code] += 1
            bad = [b for _, outcome in results for b in outcome.bad]
            if bad:  # the whole case: a call by network_id needs the RegisterNetwork before it
                failures += 1
                report.write(f"# {label}: {bad}\n" + "\n".join(call.hex() for call in calls) + "\n\n")
                report.flush()

        if args.reproducers:
            for r in fuzzkit.reproducers():
                record(f"reproducer {r.name}", [r.call])
        while done < args.cases and time.monotonic() - start < args.seconds:
            calls = fuzzkit.random_case(fuzzkit.RandomDraw(args.seed * 10**9 + done))
            record(f"seed {args.seed} case {done}", calls)
            done += 1
            if server and done % 2000 == 0:
                print(f"after {done} cases: RSS of the server {fuzzkit.rss_bytes(os.getpid()) / 2**20:.0f} MiB, workers "
                      f"{[round(fuzzkit.rss_bytes(p) / 2**20) for p in server.pool.pids()]} MiB", flush=True)
            if done % 100 == 0:
                if not serving(channel):
                    print(f"health is not SERVING after case {done}", file=sys.stderr)
                    failures += 1
                    break
                if server and server.pool.pids() != pids:
                    print(f"workers replaced by case {done}: {pids} -> {server.pool.pids()}", file=sys.stderr)
                    failures += 1
                    pids = server.pool.pids()
        elapsed = time.monotonic() - start
        gc.collect()
        end_rss = rss(server)
        healthy = serving(channel)
    print(f"{done} cases in {elapsed:.0f} s ({done / max(elapsed, 1e-9):.0f}/s), health at the end: "
          f"{'SERVING' if healthy else 'NOT SERVING'}")
    for (method, code), n in sorted(counts.items()):
        print(f"  {method:16} {code:20} {n}")
    if server:
        print(f"server + workers RSS: {start_rss / 2**20:.0f} MiB at start, {end_rss / 2**20:.0f} MiB at the end, "
              f"workers replaced: {server.pool.replaced}")
    print(f"{failures} failing cases" + (f", written to {out}" if failures else ""))
    return 1 if failures or not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
