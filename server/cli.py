"""The ``gradserve`` command: ``serve``, ``demo`` and ``health``."""
from __future__ import annotations

import argparse
import os
import sys

from . import config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradserve", description="gradserve: gradients of dataflow graphs over gRPC")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server until SIGTERM/SIGINT (then drain and exit)")
    config.add_arguments(serve)
    demo = sub.add_parser("demo", help="start a server on a free port and run the GradOperation tutorial through it")
    demo.add_argument("--workers", type=int, default=2)
    health = sub.add_parser("health", help="ask a server's grpc.health.v1 service; exit 0 when SERVING")
    health.add_argument("--target", default=f"127.0.0.1:{os.environ.get('GRADSERVE_PORT', '50051')}",
                        help="host:port to ask (default 127.0.0.1 at $GRADSERVE_PORT, else 50051)")
    health.add_argument("--timeout", type=float, default=3.0)
    health.add_argument("--tls-ca", default=os.environ.get("GRADSERVE_TLS_CA", ""),
                        help="PEM CA bundle to check a TLS server's certificate with (env GRADSERVE_TLS_CA; default: plaintext)")
    return p


def health_check(target: str, timeout: float, tls_ca: str = "") -> int:
    """0 when ``target`` answers SERVING, 1 otherwise (for container HEALTHCHECKs); over TLS when ``tls_ca`` is a CA file."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        with open(tls_ca, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    print(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradserve`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return health_check(args.target, args.timeout, args.tls_ca)
    if args.command == "demo":
        from . import demo

        return demo.run(args.workers)
    from .app import Server

    server = Server(config.from_arguments(args))
    server.start()
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
