"""Fuzzing a live server: hypothesis-generated networks and requests (valid ones, broken graphs, mutated and
random bytes) on every method, and the small requests issue 9 found dangerous. Whatever the request, the answer
is never INTERNAL or UNKNOWN, health stays SERVING, no worker is replaced, and the server's memory comes back
to its warm baseline. The server runs as ``gradserve serve`` in a process of its own, so that its memory is
measured apart from the test's. Valid requests stay cheap by construction (tensors of at most 4096 elements) and every
call has a deadline, so the module takes well under two minutes; hypothesis is derandomized (same cases on
every run)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import fuzzkit
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradserve.engine import GraphBuilder
from gradserve.proto import codec
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

TIMEOUT = 15.0
"""Client deadline of each call; the server cuts every call to its own 5 s maximum before that."""
CONFIG = fuzzkit.server_config(workers=2)
RSS_SLACK = CONFIG.limits.max_registry_bytes + (CONFIG.workers + 1) * CONFIG.limits.max_worker_cache_bytes + (64 << 20)
"""How far the server's and its workers' RSS may end above the warm baseline: what the registry, the workers'
caches and the local lane's cache may legitimately fill, and 64 MiB for code first run by a case and the
allocators' free lists (three processes; 32 MiB was overshot by 0.4 MiB once the op table had 88 ops)."""
HEALTH_EVERY = 50
"""Cases between two health checks."""

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


class HypothesisDraw(fuzzkit.Draw):
    """The generators' choices drawn by hypothesis (so that a failing case shrinks)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def binary(self, max_size: int) -> bytes:
        return self.draw(st.binary(max_size=max_size))


@st.composite
def cases(draw: st.DrawFn) -> list[fuzzkit.Call]:
    """A fuzz case (one or a few calls) from ``fuzzkit.random_case``; a composite, as ``st.data()`` draws cost
    several times more."""
    return fuzzkit.random_case(HypothesisDraw(draw))


class ServerProcess:
    """``gradserve serve`` run with a ServerConfig's settings in a process of its own (port 0, read back from
    its ``server_start`` log line); its pids are the server's process tree (fork server and workers)."""

    def __init__(self, config: ServerConfig, log: Path) -> None:
        self.config = config
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in set_values(config).items()]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gradserve", "serve", *flags], stdout=out, stderr=out)
        self.port = self._started()["port"]

    def _started(self) -> dict:
        """The server_start log line (waiting for it; the pytest timeout bounds the wait)."""
        while True:
            for line in self.log.read_text().splitlines():
                if '"server_start"' in line:
                    return json.loads(line)
            assert self.proc.poll() is None, f"the server exited: {self.log.read_text()[-2000:]}"
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The server process and every process below it."""
        parent: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            parent[int(stat.parent.name)] = int(fields[1])
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += [child for child, ppid in parent.items() if ppid == pid]
        return sorted(found)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def set_values(config: ServerConfig) -> dict[str, object]:
    """Every setting of ``config`` (its limits included) that has a value, by name."""
    flat = {k: v for k, v in dataclasses.asdict(config).items() if k != "limits"} | dataclasses.asdict(config.limits)
    return {k: v for k, v in flat.items() if v is not None and v != ""}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory() as tmp:
        s = ServerProcess(CONFIG, Path(tmp) / "server.log")
        try:
            yield s
        finally:
            s.stop()


class Watch:
    """The server's state the fuzz cases must not disturb: its processes, its health, its memory."""

    def __init__(self, server: ServerProcess, channel: grpc.Channel) -> None:
        self.server, self.channel = server, channel
        self.start = self.workers()
        self.cases = 0
        self.baseline = self.rss()
        self.parts = self.by_pid()

    def rss(self) -> int:
        """RSS of the server process, its fork server and its workers."""
        return fuzzkit.total_rss(self.server.pids())

    def by_pid(self) -> dict[int, int]:
        return {pid: fuzzkit.rss_bytes(pid) >> 20 for pid in self.server.pids()}

    def serving(self) -> None:
        resp = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    def workers(self) -> list[int]:
        """The server's processes: a replaced worker shows as another pid."""
        return self.server.pids()

    def check(self, calls: list[fuzzkit.Call]) -> list[fuzzkit.Outcome]:
        """Send ``calls``: none may answer INTERNAL or UNKNOWN, and no worker may be replaced meanwhile."""
        before = self.workers()
        outcomes = [outcome for _, outcome in fuzzkit.run_calls(self.channel, calls, TIMEOUT)]
        shown = "\n".join(c.hex()[:2000] for c in calls)
        for call, outcome in zip(calls, outcomes):
            assert not outcome.bad, f"{call.method} ({call.what}) answered {outcome.bad}; the case:\n{shown}"
        assert self.workers() == before, f"the server's processes went from {before} to {self.workers()} " \
            f"during the case ({[o.codes for o in outcomes]}, {[m[:300] for o in outcomes for m in o.messages]}):\n{shown}"
        self.cases += 1
        if self.cases % HEALTH_EVERY == 0:
            self.serving()
        return outcomes


def warm_up(channel: grpc.Channel) -> None:
    """Every method once with valid and invalid requests, so that the baseline holds what serving needs
    (threads, op catalog, compiled-plan caches, shared-memory arenas)."""
    for seed in range(40):
        fuzzkit.run_calls(channel, fuzzkit.random_case(fuzzkit.RandomDraw(seed)), TIMEOUT)


@pytest.fixture(scope="module")
def watch(server: ServerProcess, channel: grpc.Channel) -> Iterator[Watch]:
    warm_up(channel)
    yield Watch(server, channel)


@settings(FUZZ, max_examples=1500)
@given(cases())
def test_generated_networks_and_mutated_requests_never_get_internal_or_unknown(watch: Watch, case: list[fuzzkit.Call]) -> None:
    watch.check(case)


@settings(FUZZ, max_examples=600)
@given(method=st.sampled_from(fuzzkit.METHODS), payload=st.binary(max_size=256))
def test_random_bytes_on_every_method_never_get_internal_or_unknown(watch: Watch, method: str, payload: bytes) -> None:
    payloads = [payload, payload[::-1]] if method == "GradStream" else [payload]
    watch.check([fuzzkit.Call(method, payloads, "random bytes")])


@pytest.mark.parametrize("reproducer", fuzzkit.reproducers(), ids=lambda r: r.name)
def test_issue_9_reproducers_get_their_status_quickly_and_harm_nothing(watch: Watch, reproducer: fuzzkit.Reproducer) -> None:
    (outcome,) = watch.check([reproducer.call])
    (code,), (message,) = outcome.codes, outcome.messages
    assert code in reproducer.expected, f"{reproducer.name}: {code} {message[:500]}"
    assert len(message.encode()) <= reproducer.max_message_bytes, f"{reproducer.name}: a {len(message)}-character message"
    watch.serving()


def library_network(i: int, n: int) -> service_pb2.RegisterNetworkRequest:
    """GradOperation over a library function holding an ``n``-element float64 parameter filled with ``i``
    (so that each ``i`` is another network)."""
    library: dict = {}
    f = GraphBuilder("f", library)
    fx = f.input("x", "float64", (3,))
    library["f"] = f.build(f.op("Sin", fx) * f.op("ReduceSum", f.param("w", np.full(n, float(i)))))
    b = GraphBuilder("main", library)
    grads = b.op("GradOperation", b.input("x", "float64", (3,)), fn="f")
    return service_pb2.RegisterNetworkRequest(graph=codec.encode_graph(b.build(grads[0])))


def test_networks_a_worker_has_dropped_from_its_cache_are_freed(watch: Watch) -> None:
    """300 networks of 512 KiB each pass through workers that keep 8: the workers' RSS may grow by what
    their caches hold, not by what they have seen (a decoded network must not outlive its cache entry)."""
    n, count, slack = 1 << 16, 300, 48 << 20
    stub = service_pb2_grpc.GradientStub(watch.channel)
    for i in range(3):  # the workers have decoded and dropped such networks before the baseline
        stub.RegisterNetwork(library_network(-i - 1, n), timeout=TIMEOUT)
    before = fuzzkit.total_rss(watch.server.pids())
    for i in range(count):
        watch.check([fuzzkit.Call("RegisterNetwork", [library_network(i, n).SerializeToString()], f"library network {i}")])
    grown = fuzzkit.total_rss(watch.server.pids()) - before
    assert grown <= slack, f"the server's and its workers' RSS grew by {grown / 2**20:.0f} MiB after {count} networks of {n * 8 >> 10} KiB " \
        f"(their caches hold {watch.server.config.worker_cache_size} each; allowed {slack >> 20} MiB)"


def test_after_every_case_the_server_serves_right_answers_with_its_workers_and_memory(watch: Watch) -> None:
    watch.serving()
    # Oracle: d/dx sum(sin(x) * x) = cos(x) * x + sin(x), from NumPy.
    b = GraphBuilder()
    x = b.input("x", "float64", (5,))
    graph = codec.encode_graph(b.build(b.op("ReduceSum", b.op("Sin", x) * x)))
    xs = np.linspace(-2, 2, 5)
    resp = service_pb2_grpc.GradientStub(watch.channel).Grad(
        service_pb2.GradRequest(graph=graph, inputs=[codec.encode_tensor(xs)]), timeout=TIMEOUT)
    np.testing.assert_allclose(codec.decode_tree(resp.gradients), np.cos(xs) * xs + np.sin(xs), rtol=1e-12)
    assert watch.workers() == watch.start, "workers were replaced during the module"
    grown = watch.rss() - watch.baseline
    parts = watch.by_pid()
    assert grown <= RSS_SLACK, f"RSS grew by {grown / 2**20:.0f} MiB over {watch.cases} cases (allowed {RSS_SLACK >> 20} MiB); " \
        f"MiB by pid now (the server first): {parts}, baseline {watch.parts}"
