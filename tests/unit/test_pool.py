"""The connection pool against a real MX on loopback: it never blocks a thread for a slot,
wakes waiters when one frees, and reuses a session only for what its TLS meets."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from harness.mxserver import MXServer
from harness.waiting import until
from mailflow.config.settings import Outbound, Tls
from mailflow.relay.mx import MX, Target
from mailflow.relay.pool import NoSlot, Pool
from mailflow.relay.tlsneed import TlsNeed

OUT = Outbound(pool_concurrency_max=1, pool_timeout=50)
NO_TLS = Tls()


@pytest.fixture
def server():
    with MXServer("127.0.0.2", 0) as mx:
        yield mx


def target(server: MXServer, exchange: str = "127.0.0.2") -> Target:
    return Target(mx=MX(exchange=exchange, from_dns=False), ip="127.0.0.2", port=server.port)


def acquire(pool: Pool, server: MXServer, settings: Outbound = OUT, tls: Tls = NO_TLS, **kw):
    return pool.acquire([target(server)], helo="test.example", bind=None, settings=settings, tls=tls,
                        domain="pool.test", **kw)


def test_a_full_pool_raises_at_once_instead_of_blocking_the_thread(server):
    """The old pool waited up to two minutes here: with every worker thread doing so while
    the slots were held by leases whose transmit tasks needed a thread, delivery stalled."""
    pool = Pool()
    first = acquire(pool, server)
    started = time.monotonic()
    with pytest.raises(NoSlot) as caught:
        acquire(pool, server)
    assert time.monotonic() - started < 5
    assert caught.value.ips == {"127.0.0.2"} and "4.4.5" in str(caught.value.reply)
    pool.discard(first)


def test_a_waiter_is_woken_when_the_slot_frees(server):
    pool = Pool()
    held = acquire(pool, server)
    woken = threading.Event()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken.set, OUT)
    assert not woken.wait(0.3) and pool.waiting == 1
    pool.release(held, OUT)  # idle in the pool: the waiter may reuse it
    assert woken.wait(5)
    again = acquire(pool, server)
    assert again is held
    pool.discard(again)


def test_a_waiter_for_a_free_address_goes_at_once(server):
    pool = Pool()
    woken = threading.Event()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken.set, OUT)
    assert woken.wait(5)


def test_reopen_keeps_the_slot(server):
    pool = Pool()
    session = acquire(pool, server, settings=replace(OUT, pool_timeout=0))
    session.messages = 1
    fresh = pool.reopen(session, settings=OUT, tls=NO_TLS, domain="pool.test")
    assert fresh is not session and pool.open_connections == 1
    assert server.sessions[0].quit
    pool.discard(fresh)
    assert pool.open_connections == 0


@pytest.mark.parametrize("need,reusable", [
    (TlsNeed(want=False, must=False, verify=False, name="127.0.0.2"), True),
    (TlsNeed(want=True, must=False, verify=False, name="127.0.0.2"), False),  # it offers STARTTLS
    (TlsNeed(want=True, must=True, verify=True, name="127.0.0.2"), False),
])
def test_plaintext_session_is_reused_only_where_plaintext_may_go(server, mx_tls_context, need, reusable):
    server.tls_context = mx_tls_context  # offers STARTTLS; the first session does not take it
    pool = Pool()
    plain = acquire(pool, server, settings=replace(OUT, pool_concurrency_max=2))
    assert plain.offered_tls and not plain.secured
    assert plain.meets(need) is reusable
    pool.release(plain, OUT)
    with pool._cond:
        taken = pool._take_idle_locked(target(server), "test.example", None, need)
    assert (taken is plain) is reusable
    pool.stop()  # QUITs what is idle
    plain.close()


def test_a_lane_uses_spare_room_only_where_a_batch_may_close_an_idle_session(server):
    """At concurrency_max, a new batch closes another destination's idle session to get one;
    a slow receiver's extra lane (evict=False) does not: it would trade one for another."""
    settings = Outbound(concurrency_max=1, pool_concurrency_max=1, pool_timeout=50)
    with MXServer("127.0.0.3", 0) as other:
        elsewhere = Target(mx=MX(exchange="127.0.0.3", from_dns=False), ip="127.0.0.3", port=other.port)
        pool = Pool()
        idle = acquire(pool, server, settings)
        pool.release(idle, settings)  # idle, holding the one slot
        with pytest.raises(NoSlot):
            pool.acquire([elsewhere], helo="test.example", bind=None, settings=settings, tls=NO_TLS,
                         domain="other.test", evict=False)
        assert pool.open_connections == 1
        got = pool.acquire([elsewhere], helo="test.example", bind=None, settings=settings, tls=NO_TLS,
                           domain="other.test")
        assert got.target.ip == "127.0.0.3" and pool.open_connections == 1  # the idle one went
        pool.discard(got)


def test_freed_slots_go_to_the_waiting_domains_in_turn(server):
    """Three batches of a large domain wait, then one of a one-message domain behind the same
    host: the second slot to free goes to the small domain, not to the large one's second."""
    pool = Pool()
    held = acquire(pool, server)
    woken: list[str] = []
    for name in ("big-1", "big-2", "big-3", "small-1"):
        pool.wait_for_slot(frozenset({"127.0.0.2"}), lambda n=name: woken.append(n), OUT,
                           domain=name.split("-")[0] + ".test")
    assert pool.waiting == 4
    for _ in range(4):  # the slot frees, its waiter is woken (and takes the slot again)
        count = len(woken)
        pool.discard(held)
        until(lambda c=count: len(woken) > c, 5, "for a waiter to be woken")
        held = acquire(pool, server)
    pool.discard(held)
    assert woken == ["big-1", "small-1", "big-2", "big-3"]


class _Rule:
    def __init__(self, name: str):
        self.name = name


class _Lease:
    """A shaping place (mailflow/relay/shaping.py Lease) as the pool sees one."""

    def __init__(self, *names: str):
        self.rules = [_Rule(n) for n in names]
        self.released = 0

    def release(self) -> None:
        self.released += 1


def test_a_leased_session_waits_idle_for_its_own_rules_only_and_briefly(server, monkeypatch):
    """Mail for a destination under max_connections, arriving while its one connection is
    busy, goes over that connection next, its place kept (LEASED_IDLE); a route under other
    rules, or none, never gets it (that rule's count would be skipped); past LEASED_IDLE the
    reaper closes it and gives the place up."""
    from mailflow.relay import pool as poolmod
    settings = replace(OUT, pool_concurrency_max=3)
    pool = Pool()
    first = acquire(pool, server, settings)
    lease = _Lease("domain:fill.test")
    first.lease = lease
    pool.release(first, settings)
    assert lease.released == 0  # kept idle, with its place

    def leased(*names):
        return pool.take_leased([target(server)], helo="test.example", bind=None,
                                need_for=lambda t: TlsNeed(want=False, must=False, verify=False, name="x"),
                                rules=list(names))

    assert leased("domain:other.test") is None
    other = acquire(pool, server, settings)  # a route without rules: a connection of its own
    assert other is not first
    pool.discard(other)
    assert leased("domain:fill.test") is first
    pool.release(first, settings)
    monkeypatch.setattr(poolmod, "LEASED_IDLE", 0.0)
    pool.reap()
    assert lease.released == 1 and first.lease is None
    assert leased("domain:fill.test") is None
    pool.stop()
