"""A slow receiver's batch looks for lanes only where room can be had (pipeline/transmit.py).

After each message a slow batch looks for room another batch left; a lane that looked and
found none cost a thread, the route's policy and addresses and the pool's lock -- with every
slot busy (a hundred domains sharing a hundred connections), after every message of every
batch.  Once a lane found the addresses full, more start only as room frees there.
"""

import threading
from collections.abc import Callable
from typing import Any

from harness.mxserver import MXServer
from harness.waiting import until
from mailflow import config
from mailflow.pipeline import transmit
from mailflow.queue.spool import Spool
from mailflow.relay.mx import MX
from mailflow.relay.pool import POOL
from mailflow.wire.payloads import Batch, Route
from tests.support.entries import make_entry


def _batch_of_twelve(cfg: config.Config, port: int,
                     before: Callable[[Route], object] = lambda route: None) -> tuple[Route, Any]:
    """Twelve queued messages claimed as one batch to the MX at 127.0.0.4:``port``, and its
    courier (made after ``before(route)``)."""
    spool = Spool(cfg.queue_path()).ensure()
    for n in range(12):
        spool.write([make_entry(f"R.{n}")], b"Subject: s\r\n\r\nm\r\n")
    claim, names = spool.claim(sorted(spool.names()))
    route = Route(Batch(spool.identity, claim, tuple(names), "example.com"),
                  mx=(MX("127.0.0.4", port=port, from_dns=False),))
    before(route)
    return route, transmit.Courier(cfg, route, None, transmit.LocalLedger(spool, route, cfg.outbound))


def test_a_slow_batch_with_no_room_for_lanes_stops_looking_for_them(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "outbound.ini").write_text(
        f"queue_dir = {tmp_path / 'queue'}\nenable_tls = false\npool_concurrency_max = 1\n")
    cfg = config.Config(tmp_path / "config")
    looked = []
    real = transmit.session_for
    monkeypatch.setattr(transmit, "session_for", lambda *a, **k: looked.append(1) or real(*a, **k))
    with MXServer("127.0.0.4", 0, delay={"DOT": 0.25}) as mx:  # slow: a quarter second a message
        route, courier = _batch_of_twelve(cfg, mx.port)
        try:
            courier.run()
        finally:
            courier.let_go()
        assert len(mx.deliveries) == 12 and mx.high_water == 1
    # the first lane's session, then the lanes started when the batch was found slow (all
    # found the one slot taken); without the check, four more after each of the 11 messages
    assert len(looked) <= 1 + 11, len(looked)
    POOL.reap()


def test_room_that_frees_is_taken_at_the_next_look_not_a_few_lanes_at_a_time(tmp_path):
    """Ten connections to the receiver, nine held elsewhere: the batch starts on the tenth, is
    found slow, and its lanes find no room.  The nine are let go at once (idle in the pool):
    at its next look the batch takes all nine, not four (and then the few left)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "outbound.ini").write_text(
        f"queue_dir = {tmp_path / 'queue'}\nenable_tls = false\npool_concurrency_max = 10\n"
        "pool_timeout = 30\n")
    cfg = config.Config(tmp_path / "config")
    held: list[Any] = []
    with MXServer("127.0.0.4", 0, delay={"DOT": 0.25}) as mx:
        route, courier = _batch_of_twelve(cfg, mx.port, before=lambda route: held.extend(
            transmit.session_for(route, cfg) for _ in range(9)))  # another batch's, say
        sending = threading.Thread(target=courier.run)
        sending.start()
        try:
            until(lambda: courier._full, 30, "the batch's lanes found no room")
            for session in held:
                POOL.release(session, cfg.outbound)
            sending.join(60)
        finally:
            courier.let_go()
        assert len(mx.deliveries) == 12
        sending_sessions = [s for s in mx.sessions if s.deliveries]
        # the first lane's and the nine let go; four a look gave six
        assert len(sending_sessions) >= 9, len(sending_sessions)
    POOL.reap()
