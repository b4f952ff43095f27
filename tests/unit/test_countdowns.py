"""The countdown record in the queue directory (mailflow/queue/countdowns.py; issue 13).

A countdown that fires claims exactly the names it was armed with: an entry flushed,
deleted or claimed meanwhile has another name or none, so the firing does nothing.
"""

from __future__ import annotations

import dataclasses

import pytest

from mailflow.queue import countdowns
from mailflow.queue.countdowns import Deferral
from mailflow.queue.entry import EntryName
from mailflow.queue.flush import flush
from mailflow.queue.spool import Spool, now_ms
from mailflow.queue.tools import delete
from tests.support.entries import make_entry


def deferred(tmp_path, *idents: str, wait_s: float = 60) -> tuple[Spool, list[Deferral]]:
    """Entries waiting in pending/ ``wait_s`` after a first failure, as a deferral leaves them."""
    spool = Spool(tmp_path / "queue").ensure()
    due = now_ms() + int(wait_s * 1000)
    found = []
    for ident in idents:
        entry = make_entry(ident)
        entry = dataclasses.replace(entry, name=dataclasses.replace(entry.name, next_attempt_ms=due,
                                                                    num_failures=1))
        spool.write([entry], b"m\r\n")
        found.append(Deferral(entry.name, wait_s, "451 4.3.0 later"))
    return spool, found


def fire(spool: Spool, group: list[Deferral], ident: str):
    return countdowns.fire(spool, spool.identity, "example.com", [str(d.name) for d in group], ident)


def test_an_untouched_entry_is_claimed_when_its_countdown_fires(tmp_path):
    spool, group = deferred(tmp_path, "C.1", "C.2")
    ident = countdowns.arm(spool, group, grace=60)
    assert countdowns.armed_names(spool) == {str(d.name) for d in group}
    batch = fire(spool, group, ident)
    assert batch is not None and sorted(EntryName.parse(n).id for n in batch.names) == ["C.1", "C.2"]
    assert countdowns.armed_names(spool) == set()  # disarmed
    assert list(spool.names()) == []  # both claimed


@pytest.mark.parametrize("meanwhile", ["flush", "delete", "claimed"])
def test_a_countdown_that_fires_after_flush_delete_or_a_claim_does_nothing(tmp_path, meanwhile):
    spool, group = deferred(tmp_path, "C.1")
    ident = countdowns.arm(spool, group, grace=60)
    if meanwhile == "flush":
        assert flush(spool) == 1  # renamed: due now, no longer the armed name
    elif meanwhile == "delete":
        assert delete(spool, ident="C.1") == 1
    else:
        spool.claim(list(spool.names()))
    assert fire(spool, group, ident) is None
    assert countdowns.armed_names(spool) == set()
    if meanwhile == "flush":
        [back] = spool.names()
        assert back.id == "C.1" and back.next_attempt_ms <= now_ms()  # left for the scan, once


def test_a_countdown_fires_only_for_its_domain_and_well_formed_names(tmp_path):
    spool, group = deferred(tmp_path, "C.1")
    ident = countdowns.arm(spool, group, grace=60)
    assert countdowns.fire(spool, spool.identity, "other.example", [str(group[0].name)], ident) is None
    assert countdowns.fire(spool, spool.identity, "example.com", ["../../etc/passwd"], ident) is None
    assert [n.id for n in spool.names()] == ["C.1"]


def test_deferrals_share_a_countdown_per_wait_and_waits_past_the_horizon_are_parked():
    name = EntryName(1, 1, 1, "X.1", "example.com")
    waits = [Deferral(name, w, "r") for w in (60, 60.4, 300, 7200, 0)]
    assert [[d.delay for d in g] for g in countdowns.groups(waits, 3600)] == [[60, 60.4], [300]]
    assert countdowns.groups(waits, 0) == []  # countdown_max = 0: every wait parked


def test_the_scan_sees_an_armed_entry_until_due_plus_grace_then_takes_it_back(tmp_path):
    spool, group = deferred(tmp_path, "C.1", wait_s=0.001)
    countdowns.arm(spool, group, grace=0.05)
    armed = countdowns.Armed(spool)
    [(name, until)] = armed.until(now_ms()).items()
    assert name == str(group[0].name) and until == group[0].name.next_attempt_ms + 50
    assert armed.until(until + 1) == {}
    assert not [p for p in (tmp_path / "queue" / "armed").iterdir() if not p.name.startswith(".")]
