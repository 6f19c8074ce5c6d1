"""Regenerate the committed Python code for proto/gradserve/v1, written beside the .proto files it comes from
(run: python tools/gen_proto.py).

The output is committed; tests/test_wire_codegen.py regenerates into a temporary directory and
fails on any difference, so edit the .proto files and rerun this script, never the output."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("gradserve") / "v1"
GRPCIO_TOOLS_VERSION = "1.85.1"
MYPY_PROTOBUF_VERSION = "5.1.0"
INIT_TEXT = '"""Generated protobuf and gRPC code for the gradserve.v1 wire format (see tools/gen_proto.py)."""\n'


def _check_versions() -> None:
    """Refuse to run with other generator versions, whose output would differ from the committed code."""
    for dist, want in (("grpcio-tools", GRPCIO_TOOLS_VERSION), ("mypy-protobuf", MYPY_PROTOBUF_VERSION)):
        have = importlib.metadata.version(dist)
        if have != want:
            sys.exit(f"gen_proto: {dist} {have} is installed but the committed code comes from {want}; pip install {dist}=={want}")


def _include_dirs() -> list[str]:
    """Include paths: ours, protobuf's well-known types, and googleapis' google/rpc/status.proto."""
    import google.rpc.status_pb2 as status_pb2
    import grpc_tools

    googleapis = Path(status_pb2.__file__).resolve().parent.parent.parent
    return [str(PROTO_ROOT), str(Path(grpc_tools.__file__).parent / "_proto"), str(googleapis)]


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules for every proto under proto/gradserve/v1 into ``out_root``/gradserve/v1."""
    from grpc_tools import protoc

    _check_versions()
    plugin = shutil.which("protoc-gen-mypy", path=os.path.dirname(sys.executable)) or shutil.which("protoc-gen-mypy")
    grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=os.path.dirname(sys.executable)) or shutil.which("protoc-gen-mypy_grpc")
    if plugin is None or grpc_plugin is None:
        sys.exit("gen_proto: protoc-gen-mypy not found; pip install mypy-protobuf")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    out = out_root / PACKAGE
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_proto: protoc failed")
    (out / "__init__.py").write_text(INIT_TEXT)
    return sorted(p for p in out.iterdir() if p.is_file())


def main() -> None:
    """Command line: regenerate into the repository (default) or into --out."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root to write gradserve/v1/ under (default: proto/)")
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
