"""Prometheus metrics: request counts and latencies recorded by the servicer, pool and registry state read at scrape time.

The request counter is the one record of requests served: ``ServerInfo.request_counters`` and
``/metrics`` both read it.
"""
from __future__ import annotations

import bisect
import itertools
import math
import socket
import threading
from typing import Any, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Info, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gradserve import __version__

from .pool import WorkerPool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
"""Seconds: from a cached tiny gradient (about a millisecond) up to the largest allowed deadline."""


class _PoolCollector(Collector):
    """Queue depth, workers, worker replacements, plans compiled by each worker, registered networks and
    local-lane requests (and those it passed to a worker), read when scraped."""

    def __init__(self, pool: WorkerPool, networks: Callable[[], int], local: Callable[[], int],
                 passed: Callable[[], int]) -> None:
        self._pool = pool
        self._networks = networks
        self._local = local
        self._passed = passed

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        yield GaugeMetricFamily("gradserve_queue_depth", "Requests waiting for a free worker.", value=pool.queued)
        yield GaugeMetricFamily("gradserve_workers_busy", "Workers computing a request.", value=len(pool.busy_pids()))
        yield GaugeMetricFamily("gradserve_workers", "Worker processes in the pool.", value=pool.size)
        yield CounterMetricFamily("gradserve_worker_replacements", "Workers killed or found dead and started again.",
                                  value=pool.replaced)
        compiles = CounterMetricFamily("gradserve_compiles", "Plans (compiled programs) built by the workers of each "
                                       "worker slot; a plan is reused until its worker's cache drops it.", labels=["worker"])
        for slot, n in enumerate(pool.compiles()):
            compiles.add_metric([str(slot)], n)
        yield compiles
        yield GaugeMetricFamily("gradserve_registered_networks", "Networks in the server's registry.", value=self._networks())
        yield CounterMetricFamily("gradserve_local_requests", "Requests computed in the server process (small plans).",
                                  value=self._local())
        yield CounterMetricFamily("gradserve_local_passed", "Requests for a bounded plan the server process runs that "
                                  "went to a worker instead (its lane busy, no worker idle, other calls in flight, or a GradStream's).", value=self._passed())


class _Requests(Collector):
    """Answers by method and status code, and latency histograms by method, exposed at scrape time.

    Recording takes one lock and a bisect: prometheus_client's Counter and Histogram take several
    Python calls and locks per observation, a noticeable share of a tiny gradient's time."""

    _BOUNDS = (*LATENCY_BUCKETS, math.inf)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._buckets: dict[str, list[int]] = {}
        """Per method, the observations falling in each bucket (not cumulative; the last is +Inf)."""
        self._sums: dict[str, float] = {}

    def record(self, method: str, code: str, seconds: float | None) -> None:
        with self._lock:
            self._counts[method, code] = self._counts.get((method, code), 0) + 1
            if seconds is not None:
                buckets = self._buckets.get(method)
                if buckets is None:
                    buckets = self._buckets[method] = [0] * len(self._BOUNDS)
                buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds
                self._sums[method] = self._sums.get(method, 0.0) + seconds

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, sums = dict(self._counts), dict(self._sums)
            buckets = {method: list(itertools.accumulate(b)) for method, b in self._buckets.items()}
        requests = CounterMetricFamily("gradserve_requests", "Gradient calls (GradStream: messages) by method and status code.",
                                       labels=["method", "code"])
        for (method, code), n in sorted(counts.items()):
            requests.add_metric([method, code], n)
        yield requests
        latency = HistogramMetricFamily("gradserve_request_duration_seconds",
                                        "Time to answer a Gradient call (GradStream: a message).", labels=["method"])
        for method, cumulative in sorted(buckets.items()):
            latency.add_metric([method], [(floatToGoString(b), n) for b, n in zip(self._BOUNDS, cumulative)], sums[method])
        yield latency


PATH = "/metrics"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def only_metrics(app: WSGIApp) -> WSGIApp:
    """``app`` at ``PATH``; any other path answers 404."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: gradserve serves only {PATH} here\n".encode()]

    return serve


class _Quiet(WSGIRequestHandler):
    """No stderr line per scrape (the server's log is JSON)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Metrics:
    """The server's own Prometheus registry (not the process-wide default, so servers in one process stay apart):
    requests, pool state, ``process_*`` (Linux) and ``gradserve_build_info``."""

    def __init__(self, pool: WorkerPool, networks: Callable[[], int], local: Callable[[], int],
                 passed: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._requests = _Requests()
        self.registry.register(self._requests)
        self.registry.register(_PoolCollector(pool, networks, local, passed))
        ProcessCollector(registry=self.registry)
        Info("gradserve_build", "The running gradserve's version.", registry=self.registry).info({"version": __version__})
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def record(self, method: str, code: str, seconds: float | None = None) -> None:
        """Count one answer; ``seconds`` is its latency when it was measured (calls rejected before the method have none)."""
        self._requests.record(method, code, seconds)

    def snapshot(self) -> list[tuple[str, str, int]]:
        """(method, code, count) sorted: the counts /metrics exposes."""
        return sorted((method, code, n) for (method, code), n in self._requests.counts().items())

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics (only) over HTTP on ``host:port`` (0: a free port) in a thread; returns the port."""
        family, _, _, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        self._http = make_server(str(address[0]), port, only_metrics(make_wsgi_app(self.registry)), server_class, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self._http.server_port

    def close(self) -> None:
        """Stop serving /metrics (if serving)."""
        if self._http is not None and self._thread is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join()
            self._http = self._thread = None
