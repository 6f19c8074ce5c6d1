"""Fixtures shared by the server tests. A module using ``server`` or ``channel`` defines a module-scoped
``server_config`` fixture (and may override ``channel_options``)."""
from __future__ import annotations

from typing import Iterator

import grpc
import pytest

from gradserve.server.app import Server, running
from gradserve.server.config import ServerConfig


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
