"""The ``where`` fixture of the custom-derivative and control-flow tests: each test runs on the embedded engine and
through a loopback server (one per module, always stopped), with the client's mode restored afterwards."""
from __future__ import annotations

from typing import Iterator

import pytest

import gradserve as gs
from gradserve.client import context
from gradserve.server.app import Server
from gradserve.server.config import ServerConfig


@pytest.fixture(scope="module")
def server_config() -> ServerConfig:
    """One worker on a free loopback port."""
    return ServerConfig(host="127.0.0.1", port=0, workers=1)


@pytest.fixture(params=["embedded", "remote"])
def where(request: pytest.FixtureRequest, clean_context: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on the embedded engine, then through the module's server."""
    monkeypatch.setitem(context._mindspore, "mode", gs.PYNATIVE_MODE)
    if request.param == "remote":
        server: Server = request.getfixturevalue("server")
        gs.set_context(target=f"127.0.0.1:{server.port}", retry_seconds=0)
    yield request.param
    for backend in context._backends.values():
        close = getattr(backend, "close", None)
        if close is not None:
            close()
