"""Feeding a claim while its transmit sends: open, fed, closed for good, swept when dead."""

from __future__ import annotations

from mailflow import config as configmod
from mailflow import outbound
from mailflow.address import parse_address
from mailflow.queue import feed
from mailflow.queue.spool import Spool


def _spool(tmp_path, n: int) -> Spool:
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "me").write_text("mx.sender.example\n")
    cfg = configmod.load(tmp_path)
    for k in range(n):
        outbound.queue_message(parse_address("a@sender.example"), [parse_address(f"r{k}@d.example")],
                               b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    return Spool(cfg.queue_path())


def test_an_open_claim_takes_entries_and_a_closed_one_none(tmp_path):
    spool = _spool(tmp_path, 4)
    names = sorted(spool.names())
    claim, got = spool.claim(names[:1])
    assert feed.feed(spool, claim, names[1:2]) == []  # not opened: nothing goes in
    assert feed.open_feed(spool, claim) and feed.is_open(spool, claim)
    assert feed.feed(spool, claim, names[1:3]) == names[1:3]
    assert sorted(spool.claim_names(claim)) == names[:3]
    feed.close_feed(spool, claim)
    assert not feed.is_open(spool, claim)
    assert feed.feed(spool, claim, names[3:]) == []  # closed: it stays in pending/
    assert list(spool.names()) == names[3:]


def test_markers_of_claims_that_are_gone_are_swept(tmp_path):
    spool = _spool(tmp_path, 2)
    names = sorted(spool.names())
    live, _ = spool.claim(names[:1])
    dead, _ = spool.claim(names[1:])
    feed.open_feed(spool, live)
    feed.open_feed(spool, dead)
    for name in list(spool.claim_names(dead)):  # its transmit died after sending: claim gone
        (spool.claim_dir(dead) / str(name)).unlink()
    spool.finish(dead)
    assert feed.sweep(spool) == 1
    assert feed.is_open(spool, live) and not feed.is_open(spool, dead)
    assert live in spool.claims() and ".feed" not in spool.claims()
