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
from mailflow.relay import pool as pool_module
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


class Woken:
    """A waiter's wake-up: the token of the room kept for it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.tokens: list[str | None] = []

    def __call__(self, token: str | None) -> None:
        self.tokens.append(token)
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


def test_a_waiter_is_woken_when_the_slot_frees_and_its_session_kept_for_it(server):
    pool = Pool()
    held = acquire(pool, server)
    woken = Woken()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, OUT)
    assert not woken.wait(0.3) and pool.waiting == 1
    pool.release(held, OUT)  # idle in the pool: granted to the waiter
    assert woken.wait(5)
    with pytest.raises(NoSlot):  # a batch that did not wait cannot take it meanwhile
        acquire(pool, server)
    again = acquire(pool, server, grant=woken.tokens[0])
    assert again is held
    pool.discard(again)


def test_a_freed_slot_is_reserved_for_the_woken_waiter_until_its_task_comes(server):
    pool = Pool()
    held = acquire(pool, server)
    woken = Woken()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, OUT)
    pool.discard(held)  # the slot frees: reserved for the waiter
    assert woken.wait(5) and woken.tokens[0] is not None
    with pytest.raises(NoSlot):
        acquire(pool, server, evict=False)  # a running batch's lane
    with pytest.raises(NoSlot):
        acquire(pool, server, grant="0" * 32)  # a token that is not one
    got = acquire(pool, server, grant=woken.tokens[0])
    assert pool.open_connections == 1 and len(server.sessions) == 2
    pool.discard(got)
    assert pool.open_connections == 0


def test_granted_room_nobody_comes_for_is_freed_again(server, monkeypatch):
    monkeypatch.setattr(pool_module, "GRANT_TTL", 0.0)
    pool = Pool()
    held = acquire(pool, server)
    woken = Woken()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, OUT)
    pool.release(held, OUT)
    assert woken.wait(5)
    time.sleep(0.01)
    pool.reap()  # the task was lost: the session is idle again, for anyone
    assert acquire(pool, server) is held
    pool.discard(held)


def test_a_waiter_for_a_free_address_goes_at_once(server):
    pool = Pool()
    woken = Woken()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, OUT)
    assert woken.wait(5)
    pool.discard(acquire(pool, server, grant=woken.tokens[0]))
    assert pool.open_connections == 0


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


@pytest.mark.parametrize("turns", [
    ("big.test", "big.test", "big.test", "small.test"),
    ("bulk|shared.test", "bulk|shared.test", "bulk|shared.test", "app|shared.test"),
], ids=["domains", "tenants"])
def test_freed_slots_go_to_the_waiting_turns_in_turn(server, turns):
    """Three batches of a large domain wait, then one of a one-message domain behind the same
    host (or three of one tenant's backlog and one of another tenant's, same domain): the
    second slot to free goes to the small one, not to the large one's second."""
    pool = Pool()
    held = acquire(pool, server)
    woken: list[tuple[int, str | None]] = []
    for n, turn in enumerate(turns):
        pool.wait_for_slot(frozenset({"127.0.0.2"}), lambda token, n=n: woken.append((n, token)), OUT,
                           turn=turn)
    assert pool.waiting == 4
    for _ in range(4):  # the slot frees, its waiter is woken and takes the slot kept for it
        count = len(woken)
        pool.discard(held)
        until(lambda c=count: len(woken) > c, 5, "for a waiter to be woken")
        held = acquire(pool, server, grant=woken[-1][1])
    pool.discard(held)
    assert [n for n, _ in woken] == [0, 3, 1, 2]


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


def test_a_turn_owes_room_to_a_waiting_turn_with_fewer_connections(server):
    """A tenant's backlog holding two connections owes one to another tenant's batch that
    waits with none; a turn never owes room to its own waiters, nor to one as well served."""
    settings = replace(OUT, pool_concurrency_max=2)
    pool = Pool()
    a, b = acquire(pool, server, settings), acquire(pool, server, settings)
    pool.serve(a, "bulk|shared.test")
    pool.serve(b, "bulk|shared.test")
    woken = Woken()
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, settings, turn="bulk|shared.test")
    assert not pool.owes_room("127.0.0.2", "bulk|shared.test")  # its own batch waits
    pool.wait_for_slot(frozenset({"127.0.0.2"}), woken, settings, turn="app|shared.test")
    assert pool.owes_room("127.0.0.2", "bulk|shared.test")
    assert not pool.owes_room("127.0.0.3", "bulk|shared.test")  # another address
    pool.discard(b)  # its slot goes to the bulk turn's waiter (first in turn); the app still waits
    until(lambda: len(woken.tokens) == 1, 5, "for a waiter to be woken")
    assert pool.owes_room("127.0.0.2", "bulk|shared.test")  # one connection against none
    pool.release(a, settings)  # counted no more once released (idle, granted to the app's waiter)
    until(lambda: len(woken.tokens) == 2, 5, "for the app's waiter")
    assert not pool.owes_room("127.0.0.2", "bulk|shared.test")
    got = acquire(pool, server, settings, grant=woken.tokens[1])
    pool.serve(got, "app|shared.test")
    assert not pool.owes_room("127.0.0.2", "app|shared.test")
    pool.discard(got)
    pool.stop()
