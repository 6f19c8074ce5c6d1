"""The gradserve_compiles_total counter: plans compiled by each worker, exposed on /metrics. Training with
changing weights (the SDK sends them as overrides of the registered values) compiles once per worker."""
from __future__ import annotations

import urllib.request

import numpy as np
from trainkit import LR, STEPS, W0, B, T, X, squared_error

from gradserve.client.backend import GradFlags
from gradserve.client.remote import RemoteBackend
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig


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
