"""The committed generated code matches the .proto files, the dependency pins match the gencode, and
the engine stays free of grpc and generated code."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "proto" / "gradserve" / "v1"
"""The generated modules live beside the .proto files they come from."""


def _gen_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _deps() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["test"]
    return {re.split(r"[<>=!~ ]", r, maxsplit=1)[0]: r for r in reqs}


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    gen = _gen_module()
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file() and p.suffix != ".proto"}
    assert sorted(fresh) == sorted(committed), "run: python tools/gen_proto.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale ({stale}); run: python tools/gen_proto.py"


def test_pins_match_generator_and_gencode() -> None:
    gen, deps = _gen_module(), _deps()
    assert deps["grpcio-tools"] == f"grpcio-tools=={gen.GRPCIO_TOOLS_VERSION}"
    assert deps["mypy-protobuf"] == f"mypy-protobuf=={gen.MYPY_PROTOBUF_VERSION}"
    pb2 = (GENERATED / "graph_pb2.py").read_text()
    gencode = re.search(r"Protobuf Python Version: (\S+)", pb2).group(1)  # type: ignore[union-attr]
    assert deps["protobuf"].startswith(f"protobuf>={gencode},"), (deps["protobuf"], gencode)
    grpc_gen = re.search(r"GRPC_GENERATED_VERSION = '(\S+)'", (GENERATED / "service_pb2_grpc.py").read_text())
    assert deps["grpcio"].startswith(f"grpcio>={grpc_gen.group(1)},")  # type: ignore[union-attr]


def test_generated_modules_import_as_gradserve_v1() -> None:
    from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

    assert graph_pb2.DESCRIPTOR.package == "gradserve.v1"
    methods = set(service_pb2.DESCRIPTOR.services_by_name["Gradient"].methods_by_name)
    assert methods == {"RegisterNetwork", "Grad", "Run", "GradStream", "ListOps", "ServerInfo"}
    assert hasattr(service_pb2_grpc, "GradientStub") and hasattr(service_pb2_grpc, "add_GradientServicer_to_server")


@pytest.mark.timeout(60)
def test_engine_imports_neither_grpc_nor_generated_code() -> None:
    code = (
        "import sys, gradserve.engine\n"
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'gradserve.v1', 'google.protobuf'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
