"""Configuration from flags and GRADSERVE_* variables; the ``gradserve`` command (``health``, ``--help``,
``--version``, ``python -m gradserve``) and the log level; the built wheel's contract files, license and metadata."""
from __future__ import annotations

import email
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import trove_classifiers
from serverkit import parse

import gradserve
from gradserve.server import cli, config, jsonlog
from gradserve.server.app import running


def test_flags_beat_environment_which_beats_defaults() -> None:
    cfg = parse(["--workers", "3", "--max-graph-nodes", "7"], {"GRADSERVE_WORKERS": "5", "GRADSERVE_MAX_TENSOR_RANK": "4"})
    assert (cfg.workers, cfg.limits.max_graph_nodes, cfg.limits.max_tensor_rank) == (3, 7, 4)
    assert cfg.limits.max_message_bytes > 256 * 2**20  # room for a 256 MB tensor plus the message around it
    assert parse([], {}).limits == config.Limits()
    assert parse([], {"GRADSERVE_LOCAL_MAX_ELEMENTS": "0"}).local_max_elements == 0
    lane = parse(["--local-max-flops", "5000"], {"GRADSERVE_LOCAL_MAX_FLOPS": "7", "GRADSERVE_LOCAL_MAX_PEAK_BYTES": "4096"})
    assert (lane.local_max_flops, lane.local_max_peak_bytes) == (5000, 4096)


@pytest.mark.parametrize("argv,environ", [(["--workers", "0"], {}), ([], {"GRADSERVE_PORT": "eighty"}),
                                          (["--max-queue-depth", "-1"], {}), (["--local-max-elements", "-1"], {}),
                                          (["--local-max-flops", "-1"], {}), ([], {"GRADSERVE_LOCAL_MAX_PEAK_BYTES": "-5"}),
                                          ([], {"GRADSERVE_MAX_CONNECTION_AGE_SECONDS": "-2"})])
def test_bad_settings_exit_with_a_message(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(argv, environ)
    assert "gradserve:" in str(info.value)


def test_health_command_reports_serving_and_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with running(config.ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        assert cli.main(["health", "--target", f"127.0.0.1:{server.port}"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert cli.main(["health", "--target", f"127.0.0.1:{server.port}", "--timeout", "0.5"]) == 1


# ---- the command: help, version, python -m gradserve, log level ----

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    return subprocess.run(list(argv), capture_output=True, text=True, env=environ, timeout=120, check=True)


def test_serve_help_describes_every_flag_with_its_default_and_variable() -> None:
    usage, _, text = " ".join(run(str(Path(sys.executable).with_name("gradserve")), "serve", "--help").stdout.split()).partition(" server: ")
    assert usage.startswith("usage: gradserve serve [-h] [--host HOST] [--port N]") and " limits (reported by ServerInfo): " in text
    base = config.ServerConfig()
    words = {"workers": f"one per CPU this process may use, {len(os.sched_getaffinity(0))} here", "metrics_port": "off",
             "auth_token": "none", "tls_cert": "none (plaintext)"}
    fields = config._scalar_fields()
    assert set(config.HELP) == {f.name for f, _ in fields}, "every setting needs a line of help in config.HELP"
    for f, is_limit in fields:
        flag, env = "--" + f.name.replace("_", "-"), "GRADSERVE_" + f.name.upper()
        default = words.get(f.name, str(getattr(base.limits if is_limit else base, f.name)))
        described = re.search(rf"{flag} \S+ (.+?) \(default: ([^;]+); env {env}\)", text)
        assert described is not None, f"{flag} in: {text}"
        assert described.group(1) == config.HELP[f.name] and len(described.group(1).split()) >= 3
        if f.name in words or f.type in ("int", "float"):
            assert described.group(2) == default, flag
    assert "--port N gRPC port (0: a free port, logged as port in server_start) (default: 50051; env GRADSERVE_PORT)" in text
    assert "--log-level LOG_LEVEL the least severe JSON log lines written: debug, info, warning, error (default: info;" in text


def test_version_and_python_m_gradserve_match_the_package_metadata() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gradserve.__version__ == importlib.metadata.version("gradserve") == declared
    script = run(str(Path(sys.executable).with_name("gradserve")), "--version").stdout
    module = run(sys.executable, "-m", "gradserve", "--version").stdout
    assert script == module == f"gradserve {declared}\n"
    assert "usage: gradserve serve" in run(sys.executable, "-m", "gradserve", "serve", "--help").stdout


def test_log_level_flag_and_variable() -> None:
    assert parse(["--log-level", "warning"], {"GRADSERVE_LOG_LEVEL": "debug"}).log_level == "warning"
    assert parse([], {"GRADSERVE_LOG_LEVEL": "error"}).log_level == "error"
    assert parse([], {}).log_level == "info"


@pytest.fixture()
def restore_log_level() -> Iterator[None]:
    yield
    jsonlog.set_level("info")


def test_log_level_drops_less_severe_lines(restore_log_level: None, capfd: pytest.CaptureFixture[str]) -> None:
    with running(config.ServerConfig(host="127.0.0.1", port=0, workers=1, log_level="error")) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/gradserve.v1.Gradient/Grad")(b"\xff\xff", timeout=10)
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert [(e["level"], e["event"]) for e in events] == [("error", "request_error")]
    buffer = io.StringIO()
    for level in jsonlog.LEVELS:
        jsonlog.set_level(level)
        for event_level in jsonlog.LEVELS:
            jsonlog.log("probe", stream=buffer, level=event_level, at=level)
    written = [(e["at"], e["level"]) for e in map(json.loads, buffer.getvalue().splitlines())]
    assert written == [(at, lv) for i, at in enumerate(jsonlog.LEVELS) for lv in jsonlog.LEVELS[i:]]


# ---- the package: a wheel carries the contract and the license ----

APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"
"""MD5 of the Apache License 2.0 text as the ASF publishes it (https://www.apache.org/licenses/LICENSE-2.0.txt)."""


def test_license_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"


def test_wheel_ships_the_proto_files_license_and_valid_classifiers(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("gradserve-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        protos = sorted((ROOT / "proto" / "gradserve" / "v1").glob("*.proto"))
        assert len(protos) == 2
        for proto in protos:
            assert z.read(f"gradserve/proto/gradserve/v1/{proto.name}") == proto.read_bytes()
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert hashlib.md5(z.read(f"{dist}/licenses/LICENSE")).hexdigest() == APACHE_2_MD5
        metadata = email.message_from_bytes(z.read(f"{dist}/METADATA"))
    assert metadata["License-Expression"] == "Apache-2.0" and metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert classifiers and not set(classifiers) - trove_classifiers.classifiers
    assert "gradserve/__main__.py" in names and "gradserve/proto/__init__.py" in names
    # The installed package tells a client in another language where protoc's include root is.
    root = importlib.resources.files("gradserve.proto")
    assert sorted(p.name for p in (root / "gradserve" / "v1").iterdir() if p.name.endswith(".proto")) == [p.name for p in protos]
