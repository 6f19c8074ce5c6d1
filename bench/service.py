"""Service benchmark, ratios from one run (targets from issue 5):

* tiny tutorial gradient over gRPC vs a bare gRPC unary echo of the same payload: p50 <= 1.5x
* a 64 MB float32 elementwise gradient vs a bare echo of 64 MB: <= 2x
* throughput of a CPU-bound graph with 2 workers vs 1 under concurrent clients: >= 1.7x

Run: ``python bench/service.py``.
"""
from __future__ import annotations

import statistics
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
import numpy as np

from gradserve import codec
from gradserve.engine import GraphBuilder
from gradserve.server.app import running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2, service_pb2_grpc

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def echo_server() -> tuple[grpc.Server, int]:
    """A bare gRPC server whose one method returns the request bytes."""
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=UNLIMITED)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def timings(fn: Callable[[], object], n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.quantile(xs, q))


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
    b = GraphBuilder()
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("Sin", b.input("x", "float32", (n,))))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(np.random.rand(n).astype(np.float32))])


def cpu_request(stub: service_pb2_grpc.GradientStub, n: int = 700, k: int = 6) -> service_pb2.GradRequest:
    b = GraphBuilder()
    h = b.op("MatMul", b.input("x", "float64", (n, 1)), b.input("y", "float64", (1, n)))
    for _ in range(k):
        h = b.op("Sin", h)
    nid = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(
        graph=codec.encode_graph(b.build(b.op("ReduceSum", h))))).network_id
    return service_pb2.GradRequest(network_id=nid, inputs=[codec.encode_tensor(np.full((n, 1), 0.5)),
                                                           codec.encode_tensor(np.full((1, n), 0.5))])


def throughput(workers: int, clients: int = 4, per_client: int = 12) -> float:
    """Requests per second of the CPU-bound graph with ``clients`` concurrent callers."""
    with running(ServerConfig(host="127.0.0.1", port=0, workers=workers)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = service_pb2_grpc.GradientStub(ch)
        req = cpu_request(stub)
        for _ in range(workers):
            stub.Grad(req)

        def client() -> None:
            for _ in range(per_client):
                stub.Grad(req)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return clients * per_client / (time.perf_counter() - t)


def main() -> None:
    echo, echo_port = echo_server()
    try:
        with running(ServerConfig(host="127.0.0.1", port=0, workers=2)) as server, \
                grpc.insecure_channel(f"127.0.0.1:{server.port}", options=UNLIMITED) as ch, \
                grpc.insecure_channel(f"127.0.0.1:{echo_port}", options=UNLIMITED) as ech:
            stub = service_pb2_grpc.GradientStub(ch)
            echo_call = ech.unary_unary("/bench.Echo/Echo")  # bytes in, bytes out

            tiny = tutorial_request(stub)
            tiny_bytes = tiny.SerializeToString()
            g = timings(lambda: stub.Grad(tiny), 400)
            e = timings(lambda: echo_call(tiny_bytes), 400)
            print(f"tiny gradient  p50 {pct(g, .5)*1e3:.3f} ms  p99 {pct(g, .99)*1e3:.3f} ms")
            print(f"tiny echo      p50 {pct(e, .5)*1e3:.3f} ms  p99 {pct(e, .99)*1e3:.3f} ms")
            print(f"RATIO tiny p50 {pct(g, .5) / pct(e, .5):.2f}x (target <= 1.5x)  p99 {pct(g, .99) / pct(e, .99):.2f}x")

            big = big_request(stub, 16 << 20)  # 16 Mi float32 = 64 MiB
            big_bytes = big.SerializeToString()
            g = timings(lambda: stub.Grad(big), 5)
            e = timings(lambda: echo_call(big_bytes), 5)
            print(f"64 MB gradient median {statistics.median(g)*1e3:.0f} ms, 64 MB echo median {statistics.median(e)*1e3:.0f} ms")
            print(f"RATIO 64MB {statistics.median(g) / statistics.median(e):.2f}x (target <= 2x)")
    finally:
        echo.stop(0)
    one, two = throughput(1), throughput(2)
    print(f"CPU-bound throughput: 1 worker {one:.2f} req/s, 2 workers {two:.2f} req/s")
    print(f"RATIO throughput 2 vs 1 workers {two / one:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
