"""The ``acquire_connection`` step reads a claim's entries only when it has no session to
hand on (pipeline/acquire.py): the transmit reads them anyway, and each read is an open, a
read and a parse per entry on the worker."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness.mxserver import MXServer
from mailflow import config
from mailflow.errors import NothingToDo
from mailflow.pipeline import acquire, transmit
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import Spool
from mailflow.relay.mx import MX
from mailflow.wire.payloads import Batch, Route
from tests.support.entries import make_entry

HOST = "127.0.0.4"


def claimed(tmp_path: Path, port: int, count: int = 2) -> tuple[Spool, Route]:
    cfgdir = tmp_path / "config"
    cfgdir.mkdir()
    (cfgdir / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\nenable_tls = false\n"
                                         "temp_fail_intervals = 1m\n")
    cfg = config.load(cfgdir)
    spool = Spool(cfg.queue_path()).ensure()
    for n in range(count):
        spool.write([make_entry(f"A.{n}")], b"Subject: s\r\n\r\nm\r\n")
    claim, names = spool.claim(sorted(spool.names()))
    return spool, Route(Batch(spool.identity, claim, tuple(names), "example.com"),
                        mx=(MX(HOST, port=port, from_dns=False),))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_a_session_is_handed_on_without_reading_the_entries(tmp_path):
    """A corrupt entry stays where it is for the transmit to find: acquiring read nothing."""
    with MXServer(HOST, 0) as mx:
        spool, route = claimed(tmp_path, mx.port)
        corrupt = spool.claimed_path(route.batch.claim, route.batch.names[0])
        corrupt.write_bytes(b"not a queue file")
        handed: list[tuple[Route, str]] = []
        acquire.acquire(route, lambda r, ticket: handed.append((r, ticket)), None)
        try:
            assert [r for r, _ in handed] == [route]
            assert corrupt.exists()
            assert sorted(os.listdir(spool.claim_dir(route.batch.claim))) == sorted(route.batch.names)
        finally:
            for _, ticket in handed:
                transmit.drop_ticket(ticket)


def test_a_claim_whose_entries_went_is_gone_and_hands_on_nothing(tmp_path):
    with MXServer(HOST, 0) as mx:
        spool, route = claimed(tmp_path, mx.port)
        for name in route.batch.names:
            spool.claimed_path(route.batch.claim, name).unlink()
        spool.claimed_path(route.batch.claim, route.batch.names[0]).with_name(
            "some-other-file").write_bytes(b"x")  # not one of the batch's entries
        handed: list[str] = []
        with pytest.raises(NothingToDo):
            acquire.acquire(route, lambda r, ticket: handed.append(ticket), None)
        assert handed == []
        assert mx.sessions == []


def test_no_session_reads_the_entries_and_defers_each(tmp_path):
    spool, route = claimed(tmp_path, closed_port(), count=3)
    acquire.acquire(route, lambda r, ticket: pytest.fail("nothing to hand on"), None)
    deferred = list(spool.names())
    assert sorted(n.id for n in deferred) == ["A.0", "A.1", "A.2"]
    assert all(isinstance(n, EntryName) and n.num_failures == 1 for n in deferred)
    assert not spool.claim_dir(route.batch.claim).exists()
