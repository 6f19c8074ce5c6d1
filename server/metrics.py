"""Prometheus metrics: request counts and latencies recorded by the servicer, pool and registry state read at scrape time.

The request counter is the one record of requests served: ``ServerInfo.request_counters`` and
``/metrics`` both read it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .pool import WorkerPool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
"""Seconds: from a cached tiny gradient (about a millisecond) up to the largest allowed deadline."""


class _PoolCollector(Collector):
    """Queue depth, workers, worker replacements, registered networks and local-lane requests, read when scraped."""

    def __init__(self, pool: WorkerPool, networks: Callable[[], int], local: Callable[[], int]) -> None:
        self._pool = pool
        self._networks = networks
        self._local = local

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        yield GaugeMetricFamily("gradserve_queue_depth", "Requests waiting for a free worker.", value=pool.queued)
        yield GaugeMetricFamily("gradserve_workers_busy", "Workers computing a request.", value=len(pool.busy_pids()))
        yield GaugeMetricFamily("gradserve_workers", "Worker processes in the pool.", value=pool.size)
        yield CounterMetricFamily("gradserve_worker_replacements", "Workers killed or found dead and started again.",
                                  value=pool.replaced)
        yield GaugeMetricFamily("gradserve_registered_networks", "Networks in the server's registry.", value=self._networks())
        yield CounterMetricFamily("gradserve_local_requests", "Requests computed in the server process (tiny plans).",
                                  value=self._local())


class Metrics:
    """The server's own Prometheus registry (not the process-wide default, so servers in one process stay apart)."""

    def __init__(self, pool: WorkerPool, networks: Callable[[], int], local: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter("gradserve_requests", "Gradient calls (GradStream: messages) by method and status code.",
                                 ["method", "code"], registry=self.registry)
        self._latency = Histogram("gradserve_request_duration_seconds", "Time to answer a Gradient call (GradStream: a message).",
                                  ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_PoolCollector(pool, networks, local))
        self._counters: dict[tuple[str, str], Any] = {}
        self._latencies: dict[str, Any] = {}
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def record(self, method: str, code: str, seconds: float | None = None) -> None:
        """Count one answer; ``seconds`` is its latency when it was measured (calls rejected before the method have none)."""
        counter = self._counters.get((method, code))
        if counter is None:  # looking labels up costs more than counting; methods and codes are few
            counter = self._counters[method, code] = self._requests.labels(method, code)
        counter.inc()
        if seconds is not None:
            latency = self._latencies.get(method)
            if latency is None:
                latency = self._latencies[method] = self._latency.labels(method)
            latency.observe(seconds)

    def snapshot(self) -> list[tuple[str, str, int]]:
        """(method, code, count) sorted, from the same counter /metrics exposes."""
        samples = (s for family in self._requests.collect() for s in family.samples if s.name.endswith("_total"))
        return sorted((s.labels["method"], s.labels["code"], int(s.value)) for s in samples)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on ``host:port`` (0: a free port) in a thread; returns the port."""
        self._http, self._thread = start_http_server(port, host.strip("[]"), registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        """Stop serving /metrics (if serving)."""
        if self._http is not None and self._thread is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join()
            self._http = self._thread = None
