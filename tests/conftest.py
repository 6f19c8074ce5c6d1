"""Fixtures shared by the server and remote-client tests. ``server`` and ``channel`` run the module's
``server_config`` (one worker on a free loopback port unless the module overrides it, and ``channel_options``);
``stub`` is a Gradient stub on its own channel to it; ``where`` runs a client test on the embedded engine and then through the module's server."""
from __future__ import annotations

import datetime
import ipaddress
from typing import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings

import gradserve as gs
from gradserve.client import backends, context
from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig
from gradserve.v1 import service_pb2_grpc

settings.register_profile("gradserve", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gradserve")
"""Hypothesis checks nothing against the clock (per-example deadline, slow generation): on a loaded machine
those fail tests that are right. A test's own @settings still override the rest."""


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    """One worker on a free loopback port, unless the module overrides this."""
    return ServerConfig(host="127.0.0.1", port=0, workers=1)


@pytest.fixture(scope="module")
def server(server_config: ServerConfig) -> Iterator[Server]:
    """A server running the module's ``server_config`` for the whole module."""
    with running(server_config) as s:
        yield s


@pytest.fixture(scope="module")
def channel_options() -> list[tuple[str, int]]:
    """Options for the module's ``channel``: none unless the module overrides this."""
    return []


@pytest.fixture(scope="module")
def channel(server: Server, channel_options: list[tuple[str, int]]) -> Iterator[grpc.Channel]:
    """An insecure loopback channel to the module's ``server``."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=channel_options) as ch:
        yield ch


@pytest.fixture()
def stub(server: Server) -> Iterator[service_pb2_grpc.GradientStub]:
    """A Gradient stub on its own loopback channel to the module's ``server``, closed after the test."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield service_pb2_grpc.GradientStub(ch)


@pytest.fixture()
def clean_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No context option set and no GRADSERVE_* client variable; restored afterwards, and the backends made meanwhile
    closed (an open one keeps reconnecting to its stopped servers' ports, which later servers may get)."""
    for key, var in context.OPTIONS.items():
        monkeypatch.setitem(context._state, key, context._UNSET)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(backends, "_backends", {})
    monkeypatch.setitem(context._mindspore, "mode", gs.PYNATIVE_MODE)
    yield
    for backend in backends._backends.values():
        backend.close()


@pytest.fixture(params=["embedded", "remote"])
def where(request: pytest.FixtureRequest, clean_context: None) -> Iterator[str]:
    """Run the test on the embedded engine, then through the module's server (remote backends closed afterwards)."""
    if request.param == "remote":
        server: Server = request.getfixturevalue("server")
        gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    yield request.param


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
           ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server and a client certificate it signed, as PEM files: {name: path}."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca.pem": _issue("gradserve test CA", ca_key, "gradserve test CA", ca_key, ca=True)}
    keys = {}
    for who in ("server", "client"):
        keys[f"{who}.key"] = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = _issue(f"gradserve test {who}", keys[f"{who}.key"], "gradserve test CA", ca_key, ca=False)
    paths = {}
    for name, cert in files.items():
        (d / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[name] = str(d / name)
    for name, key in keys.items():
        (d / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        paths[name] = str(d / name)
    return paths
