"""Assembling a running server: the worker pool first, then gRPC with health and reflection; draining."""
from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..v1 import service_pb2, service_pb2_grpc
from . import worker
from .config import ServerConfig
from .jsonlog import log
from .pool import WorkerPool
from .servicer import GradientServicer

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["Gradient"].full_name
SPARE_THREADS = 8
"""gRPC threads beyond workers + queue, so health checks and ServerInfo answer while the pool is full."""



SEND_GRACE_SECONDS = 5.0
"""How long responses already produced may take to reach their callers once a drain is done."""

class Server:
    """A gradserve server: ``start()`` returns the bound port, ``stop()`` drains and shuts down."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        lim = config.limits
        # The pool's processes come first: no grpc object may exist when they are created.
        self.pool = WorkerPool(config.workers, lim.max_queue_depth, worker.main, (lim, config.worker_cache_size))
        threads = config.workers + lim.max_queue_depth + SPARE_THREADS
        options = [
            ("grpc.max_receive_message_length", lim.max_message_bytes or -1),
            ("grpc.max_send_message_length", lim.max_message_bytes or -1),
            ("grpc.so_reuseport", 0),
        ]
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                                options=options, maximum_concurrent_rpcs=threads * 4)
        self.servicer = GradientServicer(self.pool, config)
        service_pb2_grpc.add_GradientServicer_to_server(self.servicer, self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.grpc
        )
        self.port = 0
        self._stopped = threading.Event()

    def start(self) -> int:
        """Bind and start serving; returns the port (useful with port 0)."""
        self.port = self.grpc.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if self.port == 0:
            self.pool.close()
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        self.grpc.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log("server_start", host=self.config.host, port=self.port, workers=self.pool.size, pids=self.pool.pids(),
            limits=self.config.limits.__dict__)
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Answer new calls UNAVAILABLE (health NOT_SERVING) while in-flight calls finish, for at most
        ``grace`` seconds; then stop gRPC and the workers. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_seconds if grace is None else grace
        self.servicer.draining = True
        self.health.enter_graceful_shutdown()
        log("server_draining", port=self.port, grace_seconds=grace)
        idle = self.servicer.wait_idle(grace)
        # Handlers that returned may still be sending their responses: give those a moment, unless the
        # drain timed out, in which case the remaining calls are cancelled now.
        self.grpc.stop(SEND_GRACE_SECONDS if idle else 0).wait()
        self.pool.close()
        log("server_stop", port=self.port, counters=self.servicer.stats.snapshot(), workers_replaced=self.pool.replaced)

    def wait_for_termination(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: signalled.set())
        while not signalled.wait(1.0):
            pass
        self.stop()


@contextmanager
def running(config: ServerConfig, grace: float = 1.0) -> Iterator[Server]:
    """A started server for the ``with`` block (its ``port`` set), always stopped afterwards."""
    server = Server(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace)
