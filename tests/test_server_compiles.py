"""The gradserve_compiles_total counter: plans compiled by each worker, exposed on /metrics. Training with
changing weights (the SDK sends them as overrides of the registered values) compiles once per worker."""
from __future__ import annotations

import urllib.request

import numpy as np

from gradserve.client.backend import GradFlags
from gradserve.client.remote import RemoteBackend
from gradserve.engine import Graph, GraphBuilder
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig

STEPS = 1000
LR = 0.05
X = np.array([0.5, -1.0, 1.5, 2.0])
T = np.array([1.0, 2.0, -1.0, 0.5])
W0 = np.array([0.3, -0.2, 0.1, 0.4])
B = np.array([0.25, -0.5, 0.75, 1.0])


def squared_error() -> Graph:
    """sum((x * w + b - t)^2) over float64[4]: d/dw = 2 (x w + b - t) x, d/db = 2 (x w + b - t)."""
    g = GraphBuilder()
    r = g.input("x", "float64", (4,)) * g.param("w", W0) + g.param("b", B) - g.input("t", "float64", (4,))
    return g.build(g.op("ReduceSum", r * r, axis=(0,)))


def compiles(server: Server) -> dict[str, float]:
    """gradserve_compiles_total by worker label, scraped from ``server``'s /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        lines = page.read().decode().splitlines()
    found = {}
    for line in lines:
        if line.startswith("gradserve_compiles_total{"):
            labels, value = line.split()
            found[labels.split('worker="')[1].split('"')[0]] = float(value)
    return found


def test_a_thousand_steps_with_changed_weights_compile_once_per_worker() -> None:
    # local_max_elements=0: every request goes to a worker (none runs in the server process's local lane).
    with running(ServerConfig(host="127.0.0.1", port=0, workers=2, metrics_port=0, local_max_elements=0)) as server:
        assert compiles(server) == {"0": 0.0, "1": 0.0}
        backend = RemoteBackend(f"127.0.0.1:{server.port}")
        try:
            nid = backend.register(squared_error())
            w = W0
            for _ in range(STEPS):
                (dw,) = backend.grad(nid, GradFlags(get_by_list=True, weights=("w",)), [X, T], {"w": w, "b": B})
                np.testing.assert_allclose(dw, 2 * (X * w + B - T) * X, rtol=1e-12, atol=1e-15)
                w = w - LR * dw
            after_training = compiles(server)
            assert set(after_training) == {"0", "1"}
            assert all(n <= 1 for n in after_training.values()), after_training  # one compile per worker at most
            assert sum(after_training.values()) >= 1
            # Another GradOperation is another plan: exactly one more compile, in the worker that served it.
            (db,) = backend.grad(nid, GradFlags(get_by_list=True, weights=("b",)), [X, T], {"w": w, "b": B})
            np.testing.assert_allclose(db, 2 * (X * w + B - T), rtol=1e-12, atol=1e-15)
            assert sum(compiles(server).values()) == sum(after_training.values()) + 1
        finally:
            backend.close()
        np.testing.assert_allclose(X * w + B, T, atol=1e-6)  # the training converged
        assert server.pool.compiles() == [int(n) for _, n in sorted(compiles(server).items())]
