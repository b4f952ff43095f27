"""Shared fixtures: DNS and MX servers on loopback, test TLS, brokers, mailflow instances."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from harness import brokers, mxserver
from harness.dnsserver import DNSServer, free_port
from harness.instance import Instance

LOOPBACK = "127.0.0.1"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def mx_tls_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    return mxserver.tls_context(tls_ca)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(params=brokers.BROKERS)
def broker(request: pytest.FixtureRequest) -> str | None:
    """Each broker in turn: None for embedded, else its URL (reset before the test)."""
    return brokers.url_for(request.param)


@pytest.fixture
def make_instance(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    made: list[Instance] = []

    def make(broker_url: str | None = None, config: dict[str, str] | None = None,
             name: str = "mf", copy_shipped: bool = True, wrap: Any = None) -> Instance:
        inst = Instance(tmp_path / name, broker_url=broker_url, config=config,
                        copy_shipped=copy_shipped, wrap=wrap)
        made.append(inst)
        return inst

    yield make
    failed = getattr(request.node, "rep_call", None)
    for inst in made:
        inst.stop_all()
        if failed is not None and failed.failed:
            print(inst.dump_logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def hostname() -> str:
    return socket.gethostname()
