"""The ``gradserve`` command: ``serve``, ``demo``, ``health`` and ``import-onnx``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, TypeVar

from gradserve import __version__

from . import config

N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), without the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    """An argparse type: ``kind`` of the text, which must be above 0."""

    def convert(text: str) -> N:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    convert.__name__ = getattr(kind, "__name__", "number")  # argparse's "invalid int value" names it
    return convert


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gradserve", description="gradserve: gradients of dataflow graphs over gRPC")
    p.add_argument("--version", action="version", version=f"gradserve {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server until SIGTERM/SIGINT (then drain and exit)",
                           description="Run the gRPC server until SIGTERM or SIGINT, then drain and exit. Each --flag "
                                       "also reads the variable GRADSERVE_<FLAG>; a flag wins over its variable.")
    config.add_arguments(serve)
    demo = sub.add_parser("demo", help="start a server on a free port and run the GradOperation tutorial through it")
    demo.add_argument("--workers", type=_positive(int), default=2, help="worker processes (default: 2)")
    health = sub.add_parser("health", help="ask a server's grpc.health.v1 service; exit 0 when SERVING")
    health.add_argument("--target", default=f"127.0.0.1:{os.environ.get('GRADSERVE_PORT', '50051')}",
                        help="host:port to ask (default 127.0.0.1 at $GRADSERVE_PORT, else 50051)")
    health.add_argument("--timeout", type=_positive(float), default=3.0, help="seconds to wait for the answer (default: 3)")
    health.add_argument("--tls-ca", default=os.environ.get("GRADSERVE_TLS_CA", ""),
                        help="PEM CA bundle to check a TLS server's certificate with (env GRADSERVE_TLS_CA; default: plaintext)")
    onnx = sub.add_parser("import-onnx", help="convert an ONNX model and print the network listing (needs gradserve[onnx])",
                          description="Convert an ONNX model as the server and gradserve.onnx.load do, and print the network's "
                                      "listing; with --grad also its gradient program (all inputs and initializers).")
    onnx.add_argument("model", help="path of the .onnx file")
    onnx.add_argument("--grad", action="store_true", help="also print the gradient program (optimized, as a worker runs it)")
    onnx.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                      help="static shape of an input whose dimensions are symbolic in the model (repeatable)")
    return p


def import_onnx(path: str, grad: bool, shapes: list[str]) -> int:
    """Print the listing of the ONNX model at ``path`` converted (and its gradient program); 1 with a one-line
    message when it cannot be read or converted."""
    from gradserve.engine import EngineError, grad_operation
    from gradserve.engine.compiler import optimize
    from gradserve.engine.onnx_import import convert, load_model

    try:
        fixed = {name: [int(d) for d in dims.split(",") if d] for name, _, dims in (s.partition("=") for s in shapes)}
    except ValueError:
        print(f"gradserve import-onnx: --shape takes NAME=D0,D1,... with integer dimensions, got {shapes}", file=sys.stderr)
        return 1
    try:
        g = convert(load_model(path), shapes=fixed)
        print(g)
        if grad:
            print()
            print(optimize(grad_operation(g, get_all=True, get_by_list=True, weights=[p.name for p in g.params])))
    except (OSError, ImportError, EngineError) as exc:
        print(f"gradserve import-onnx: {path}: {exc}", file=sys.stderr)
        return 1
    return 0


def health_check(target: str, timeout: float, tls_ca: str = "") -> int:
    """0 when ``target`` answers SERVING, 1 otherwise (for container HEALTHCHECKs); over TLS when ``tls_ca`` is a CA file."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        try:
            with open(tls_ca, "rb") as f:
                ca = f.read()
        except OSError as exc:
            print(f"gradserve health: cannot read --tls-ca {tls_ca}: {exc.strerror}", file=sys.stderr)
            return 1
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))
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
    """Entry point of the ``gradserve`` console script (and ``python -m gradserve``). A server that cannot
    start prints one line naming the cause and returns 1."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return health_check(args.target, args.timeout, args.tls_ca)
    if args.command == "import-onnx":
        return import_onnx(args.model, args.grad, args.shape)
    from .preflight import StartupError

    try:
        if args.command == "demo":
            from . import demo

            return demo.run(args.workers)
        from .app import Server

        server = Server(config.from_arguments(args))
        server.start()
    except StartupError as exc:
        print(f"gradserve: {exc}", file=sys.stderr)
        return 1
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
