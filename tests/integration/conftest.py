"""Fixtures shared by the pipeline tests (test_delivery, test_failures)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.mxserver import MX_PORT, MXServer
from tests.support.disk import small_disk  # noqa: F401  (a fixture for the modules here)


@pytest.fixture
def mx(env: Any) -> Iterator:
    """Start MX servers (default 127.0.0.2 on the shared port); stopped and settings reset after."""
    servers: list[MXServer] = []

    def make(host: str = "127.0.0.2", port: int = MX_PORT, **kw: Any) -> MXServer:
        server = MXServer(host, port, **kw).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()
    env.configure()  # back to the module's base settings
