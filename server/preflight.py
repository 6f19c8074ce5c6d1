"""Checks made before the worker pool starts, so that a server that cannot start says why at once, in one line."""
from __future__ import annotations

import errno
import socket
import ssl

from .config import ServerConfig


class StartupError(Exception):
    """The server cannot start; the message names the cause (``gradserve`` prints it as one line and exits 1)."""


def check(config: ServerConfig) -> None:
    """Raise StartupError when the TLS files do not load as gRPC needs them or a fixed port is taken."""
    if config.tls_cert:
        check_tls(config.tls_cert, config.tls_key, config.tls_client_ca)
    if config.port and config.port == config.metrics_port:
        raise StartupError(f"--metrics-port {config.metrics_port} is also the gRPC --port")
    check_port(config.host, config.port, "--port")
    if config.metrics_port:
        check_port(config.host, config.metrics_port, "--metrics-port")


def unavailable(host: str, port: int, flag: str, cause: str) -> StartupError:
    """The error for a port the server cannot listen on."""
    return StartupError(f"cannot listen on {host}:{port} ({flag} {port}): {cause}")


def check_port(host: str, port: int, flag: str) -> None:
    """Bind and release ``port`` on each of ``host``'s addresses as gRPC and the HTTP server do (SO_REUSEADDR);
    raise StartupError when one is in use or not permitted. Port 0 always works; other failures (an address
    family this machine lacks) are left to the real bind, which may fall back."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve --host {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise unavailable(host, port, flag, exc.strerror or str(exc)) from None


class _Encrypted(Exception):
    """Raised by ``ssl`` asking for a key's password: gRPC takes unencrypted keys only."""


def _no_password() -> bytes:
    raise _Encrypted


def _certificates(path: str, flag: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        raise StartupError(f"{flag} {path} holds no PEM certificate") from None


def check_tls(cert: str, key: str, client_ca: str = "") -> None:
    """Raise StartupError unless ``cert`` holds PEM certificates, ``key`` is its unencrypted PEM private key,
    and ``client_ca`` (when set) holds PEM certificates. (gRPC itself says only that it cannot bind.)"""
    _certificates(cert, "--tls-cert")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise StartupError(f"--tls-key {key} is encrypted; gRPC needs an unencrypted PEM private key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(f"--tls-key {key} is not the private key of the certificate in --tls-cert {cert}") from None
        raise StartupError(f"--tls-key {key} is not a PEM private key (or --tls-cert {cert} does not start "
                           f"with a certificate): {exc.reason or exc}") from None
    if client_ca:
        _certificates(client_ca, "--tls-client-ca")
