"""A server that cannot start says why in one line on stderr and exits non-zero, without a traceback: the real
``gradserve`` command in a subprocess, for busy ports, certificates and keys that gRPC cannot use, unreadable
files and bad flag values. In process: these are found before any worker starts, and a bind that fails after
the checks passed (a port taken in between) still names the port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gradserve.server import app, preflight
from gradserve.server.app import Server
from gradserve.server.config import ServerConfig
from gradserve.server.preflight import StartupError

GRADSERVE = str(Path(sys.executable).with_name("gradserve"))
"""The console script installed next to this interpreter."""


def gradserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``gradserve`` command (without inherited GRADSERVE_* variables) and wait for it to exit."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    return subprocess.run([GRADSERVE, *args], capture_output=True, text=True, env={**environ, **(env or {})}, timeout=120)


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def assert_one_line(proc: subprocess.CompletedProcess[str], status: int, *says: str) -> None:
    """``proc`` exited with ``status`` after writing one stderr line holding each of ``says`` (and nothing else)."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == status and len(lines) == 1, f"exit {proc.returncode}:\n{proc.stderr}"
    assert all(s in lines[0] for s in says), lines[0]
    assert proc.stdout == ""


SERVE = ("serve", "--host", "127.0.0.1", "--workers", "1")


def test_a_busy_grpc_port_is_named(busy_port: int) -> None:
    proc = gradserve(*SERVE, "--port", str(busy_port))
    assert_one_line(proc, 1, f"gradserve: cannot listen on 127.0.0.1:{busy_port} (--port {busy_port}): ", "in use")


def test_a_busy_metrics_port_is_named(busy_port: int) -> None:
    proc = gradserve(*SERVE, "--port", "0", "--metrics-port", str(busy_port))
    assert_one_line(proc, 1, f"gradserve: cannot listen on 127.0.0.1:{busy_port} (--metrics-port {busy_port}): ", "in use")


def test_the_metrics_port_cannot_be_the_grpc_port() -> None:
    assert_one_line(gradserve(*SERVE, "--port", "50999", "--metrics-port", "50999"), 1,
                    "gradserve: --metrics-port 50999 is also the gRPC --port")


@pytest.fixture(scope="module")
def bad_tls(pki: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files gRPC cannot serve TLS with: the server certificate in DER, its key encrypted, text that is no PEM."""
    d = tmp_path_factory.mktemp("bad_tls")
    cert = x509.load_pem_x509_certificate(Path(pki["server.pem"]).read_bytes())
    key = serialization.load_pem_private_key(Path(pki["server.key"]).read_bytes(), password=None)
    files = {
        "server.der": cert.public_bytes(serialization.Encoding.DER),
        "encrypted.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"secret")),
        "garbage.pem": b"not a certificate\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {**pki, **{name: str(d / name) for name in files}}


@pytest.mark.parametrize("cert,key,client_ca,says", [
    ("server.der", "server.key", None, "--tls-cert {server.der} holds no PEM certificate"),
    ("server.pem", "garbage.pem", None, "--tls-key {garbage.pem} is not a PEM private key"),
    ("server.pem", "client.key", None, "--tls-key {client.key} is not the private key of the certificate in --tls-cert {server.pem}"),
    ("server.pem", "encrypted.key", None, "--tls-key {encrypted.key} is encrypted; gRPC needs an unencrypted PEM private key"),
    ("server.pem", "server.key", "server.der", "--tls-client-ca {server.der} holds no PEM certificate"),
], ids=["DER certificate", "garbage key", "another's key", "encrypted key", "DER client CA"])
def test_tls_files_grpc_cannot_use_are_named(bad_tls: dict[str, str], cert: str, key: str, client_ca: str | None,
                                            says: str) -> None:
    flags = ["--tls-cert", bad_tls[cert], "--tls-key", bad_tls[key]]
    if client_ca:
        flags += ["--tls-client-ca", bad_tls[client_ca]]
    for name, path in bad_tls.items():
        says = says.replace(f"{{{name}}}", path)
    assert_one_line(gradserve(*SERVE, "--port", "0", *flags), 1, "gradserve: " + says)


def test_unreadable_files_are_named(tmp_path: Path, pki: dict[str, str]) -> None:
    missing = str(tmp_path / "missing")
    assert_one_line(gradserve(*SERVE, "--auth-token-file", missing), 1,
                    f"gradserve: cannot read --auth-token-file {missing}: No such file")
    assert_one_line(gradserve(*SERVE, "--auth-token-file", str(tmp_path)), 1,
                    f"gradserve: cannot read --auth-token-file {tmp_path}: Is a directory")
    assert_one_line(gradserve(*SERVE, "--tls-cert", pki["server.pem"], "--tls-key", missing), 1,
                    f"gradserve: cannot read --tls-key {missing}: No such file")
    assert_one_line(gradserve("health", "--tls-ca", missing), 1, f"gradserve health: cannot read --tls-ca {missing}: No such file")


@pytest.mark.parametrize("args,env,status,says", [
    (("demo", "--workers", "0"), {}, 2, "gradserve demo: argument --workers: must be above 0, got 0"),
    (("serve", "--workers", "0"), {}, 1, "gradserve: --workers must be at least 1, got 0"),
    (("serve", "--workers", "two"), {}, 2, "gradserve serve: argument --workers: invalid int value: 'two'"),
    (("serve", "--port", "70000"), {}, 1, "gradserve: --port must be 0 to 65535, got 70000"),
    (("serve", "--log-level", "loud"), {}, 1, "gradserve: --log-level must be one of debug, info, warning, error, got 'loud'"),
    (("serve",), {"GRADSERVE_PORT": "eighty"}, 1, "gradserve: GRADSERVE_PORT='eighty' is not a valid int"),
    (("serve", "--no-such-flag"), {}, 2, "gradserve: unrecognized arguments: --no-such-flag"),
    (("health", "--timeout", "-1"), {}, 2, "gradserve health: argument --timeout: must be above 0, got -1"),
    (("launch",), {}, 2, "gradserve: argument command: invalid choice: 'launch'"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_flag_values_are_one_line(args: tuple[str, ...], env: dict[str, str], status: int, says: str) -> None:
    assert_one_line(gradserve(*args, env=env), status, says)


# ---- in process: found before any worker starts; a late bind failure still names the port ----

def test_start_up_problems_are_found_before_any_worker_starts(busy_port: int, bad_tls: dict[str, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(app, "WorkerPool", no_pool)
    with pytest.raises(StartupError, match=f"--port {busy_port}"):
        Server(ServerConfig(host="127.0.0.1", port=busy_port, workers=1))
    with pytest.raises(StartupError, match=f"--metrics-port {busy_port}"):
        Server(ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=busy_port))
    with pytest.raises(StartupError, match="holds no PEM certificate"):
        Server(ServerConfig(host="127.0.0.1", port=0, workers=1, tls_cert=bad_tls["server.der"], tls_key=bad_tls["server.key"]))


def test_a_port_taken_after_the_checks_is_still_named(busy_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "check_port", lambda host, port, flag: None)
    for cfg, flag in ((ServerConfig(host="127.0.0.1", port=busy_port, workers=1), "--port"),
                      (ServerConfig(host="127.0.0.1", port=0, workers=1, metrics_port=busy_port), "--metrics-port")):
        server = Server(cfg)
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{busy_port} \\({flag} {busy_port}\\)"):
            server.start()
        assert server.pool._closed and not any(slot.proc.is_alive() for slot in server.pool._slots if slot.proc)
