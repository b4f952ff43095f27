"""Shared fixtures: DNS and MX servers on loopback, test TLS, brokers, mailflow instances."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from harness import brokers, mxserver
from harness.dnsserver import DNSServer, free_port
from harness.instance import Instance

LOOPBACK = "127.0.0.1"

#: How long a thread a test started may take to end after the test (it was told to stop).
THREAD_GRACE = 10.0


@pytest.fixture(autouse=True)
def no_thread_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread running: one it started (directly, or through a
    server, a pool or a ticker of mailflow's) and did not stop.  Threads of fixtures wider
    than the test (a module's worker and DNS server) were there before it began."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()
                and not t.name.startswith(SHARED_THREADS)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads left running by the test: {sorted(t.name for t in left)}"


#: Threads a process keeps for good once something has used them: the default asyncio
#: executor's workers of a loop still open, and nothing else.
SHARED_THREADS = ("asyncio_",)


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
