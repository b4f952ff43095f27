"""The queue manager: due entries become destination batches, one task chain each."""

import os
import threading
import time

import pytest

from harness.waiting import until
from mailflow import config as configmod
from mailflow import outbound
from mailflow.address import parse_address
from mailflow.pipeline import shaping
from mailflow.queue import feed
from mailflow.queue import manager as qmgr
from mailflow.queue.sites import JOIN_MAX, NEWCOMERS
from mailflow.queue.spool import Spool
from mailflow.relay.shaping import Shaper
from mailflow.wire.names import EntryName, tenant_tag
from mailflow.wire.payloads import Batch


def load_cfg(tmp_path):
    (tmp_path / "outbound.ini").write_text(f"queue_dir = {tmp_path / 'queue'}\n")
    (tmp_path / "me").write_text("mx.sender.example\n")
    return configmod.load(tmp_path)


class Recorder:
    def __init__(self):
        self.batches = []
        self.lock = threading.Lock()

    def __call__(self, task, batch):
        with self.lock:
            self.batches.append(batch)

    def claimed(self):
        with self.lock:
            return sum(len(b.names) for b in self.batches)


class Delivering(Recorder):
    """Each batch delivered as soon as it is published: its entries gone, its claim ended."""

    def __init__(self, spool):
        super().__init__()
        self.spool = spool

    def __call__(self, task, batch):
        super().__call__(task, batch)
        for name in batch.names:
            os.unlink(self.spool.claimed_path(batch.claim, name))
        self.spool.finish(batch.claim)


def test_a_stream_of_submissions_makes_few_large_batches(tmp_path):
    """Each queued message wakes the manager; wake-ups during the coalescing pause share one
    scan, so a burst costs a handful of chains, not one chain (four tasks) per message."""
    cfg = load_cfg(tmp_path)
    publish = Delivering(Spool(cfg.queue_path()))
    manager = qmgr.QueueManager(cfg, publish=publish).start()
    try:
        sender = parse_address("a@sender.example")
        started = time.monotonic()
        total = 200
        for n in range(total):
            outbound.queue_message(sender, [parse_address(f"r{n}@dest.example")], b"Subject: s\r\n\r\nx\r\n",
                                   cfg=cfg)
        took = time.monotonic() - started
        deadline = time.monotonic() + 10
        while publish.claimed() < total and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        manager.stop()
    assert publish.claimed() == total
    assert all(b.domain == "dest.example" and len(b.names) <= qmgr.BATCH_MAX for b in publish.batches)
    # at most one scan per coalescing pause while the burst lasted (plus the last one),
    # each making full batches of BATCH_MAX but for its last
    scans = took / qmgr.SCAN_COALESCE + 2
    assert len(publish.batches) <= scans + total / qmgr.BATCH_MAX, (len(publish.batches), took)


def test_a_single_message_is_dispatched_without_waiting_for_the_periodic_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(qmgr, "SCAN_INTERVAL", 30.0)
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish).start()
    try:
        until(lambda: manager.scans >= 1, 10, "for the first scan (of an empty queue)")
        outbound.queue_message(parse_address("a@sender.example"), [parse_address("b@dest.example")],
                               b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
        deadline = time.monotonic() + 5
        while not publish.batches and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        manager.stop()
    assert len(publish.batches) == 1 and len(publish.batches[0].names) == 1


def test_a_deferred_backlog_is_not_listed_again_until_something_changes(tmp_path, monkeypatch):
    """Listing 100,000 deferred names every second cost a quarter of a core: pending/ is listed
    again only when it changed (mtime), an entry's time came, or FULL_SCAN_MS passed."""
    from mailflow.queue.entry import EntryName
    from mailflow.queue.spool import PENDING

    monkeypatch.setattr(qmgr, "MTIME_SETTLE_NS", 0)
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    listings = []
    names = manager.spool.names
    monkeypatch.setattr(manager.spool, "names",
                        lambda state=PENDING, known=None: listings.append(state) or names(state, known))
    sender = parse_address("a@sender.example")
    outbound.queue_message(sender, [parse_address("b@later.example")], b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    [path] = list(manager.spool.pending.iterdir())
    later = EntryName.parse(path.name).rescheduled(qmgr.now_ms() + 3_600_000, 1)
    path.rename(manager.spool.pending / str(later))
    time.sleep(0.02)

    def pending_listings():
        return listings.count(PENDING)

    manager.scan()
    assert pending_listings() == 1 and not publish.batches
    manager.scan()
    manager.scan()
    assert pending_listings() == 1, "an unchanged directory of deferred entries was listed again"

    time.sleep(0.02)  # a new arrival changes the directory: it is listed and the entry claimed
    outbound.queue_message(sender, [parse_address("c@now.example")], b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    manager.scan()
    assert pending_listings() == 2
    assert [b.domain for b in publish.batches] == ["now.example"]

    # the deferred entry's time comes: listed again without any change to the directory
    manager.scan()
    listed = pending_listings()
    monkeypatch.setattr(qmgr, "now_ms", lambda: later.next_attempt_ms + 1)
    manager.scan()
    assert pending_listings() == listed + 1
    assert [b.domain for b in publish.batches] == ["now.example", "later.example"]


def test_mail_queued_by_another_process_is_seen_by_the_directory_change(tmp_path, monkeypatch):
    """No wake-up reaches the manager from another process (another smtpd node, mailflow send):
    it notices pending/ change long before the periodic scan."""
    from mailflow.queue.entry import EntryName
    from mailflow.queue.spool import NewEntry
    from mailflow.queue.todo import ToDo

    monkeypatch.setattr(qmgr, "SCAN_INTERVAL", 60.0)
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish).start()
    try:
        # the first scan is done; the next periodic one is a minute away
        until(lambda: manager.scans >= 1, 10, "for the first scan")
        now = qmgr.now_ms()
        todo = ToDo(uuid="other.1", queue_time=now, domain="dest.example",
                    mail_from=parse_address("a@sender.example"), rcpt_to=[parse_address("b@dest.example")])
        manager.spool.write([NewEntry(EntryName(now, 0, now, todo.uuid, todo.domain), todo)], b"x\r\n")
        deadline = time.monotonic() + 10
        while not publish.batches and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        manager.stop()
    assert [b.domain for b in publish.batches] == ["dest.example"]


def test_bytes_in_flight_are_bounded_as_well_as_entries(tmp_path, monkeypatch):
    """Issue 12: claimed messages are also in the broker with worker hosts about; the manager
    claims no more bytes than ACTIVE_BYTES_MAX, yet one message larger than it still goes."""
    cfg = load_cfg(tmp_path)
    sender = parse_address("a@sender.example")
    for n in range(6):
        outbound.queue_message(sender, [parse_address(f"r{n}@dest.example")],
                               b"Subject: s\r\n\r\n" + b"x" * 3000 + b"\r\n", cfg=cfg)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    largest = max(p.stat().st_size for p in manager.spool.pending.iterdir())
    monkeypatch.setattr(qmgr, "ACTIVE_BYTES_MAX", int(largest * 4.5))
    manager.scan()
    assert publish.claimed() == 3  # three fit in one destination's share: 4/5 of four and a half
    assert manager.scan() == 0  # nothing more until a claim is done
    spool = manager.spool
    for batch in publish.batches:  # the batch is delivered: its claim goes
        for name in batch.names:
            (spool.claim_dir(batch.claim) / name).unlink()
        spool.finish(batch.claim)
    manager._listed_mtime_ns = None
    assert manager.scan() == 3
    monkeypatch.setattr(qmgr, "ACTIVE_BYTES_MAX", 100)
    outbound.queue_message(sender, [parse_address("big@other.example")],
                           b"Subject: s\r\n\r\n" + b"x" * 3000 + b"\r\n", cfg=cfg)
    for batch in publish.batches[1:]:
        for name in batch.names:
            (spool.claim_dir(batch.claim) / name).unlink()
        spool.finish(batch.claim)
    manager._listed_mtime_ns = None
    assert manager.scan() == 1  # larger than the window, and nothing in flight


def _queue(cfg, recipients: list[str]) -> None:
    sender = parse_address("a@sender.example")
    for rcpt in recipients:
        outbound.queue_message(sender, [parse_address(rcpt)], b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
        time.sleep(0.002)  # arrival times apart: the older backlog is due first


def test_due_destinations_are_served_round_robin_the_longest_waiting_first(tmp_path, monkeypatch):
    """One batch per destination per turn: a one-message domain queued after a large backlog
    is in the second batch published, not after all of the backlog's."""
    monkeypatch.setattr(qmgr, "BATCH_MAX", 10)
    cfg = load_cfg(tmp_path)
    _queue(cfg, [f"r{n}@big.example" for n in range(35)])
    _queue(cfg, ["one@small.example"])
    _queue(cfg, [f"r{n}@mid.example" for n in range(15)])
    publish = Recorder()
    assert qmgr.QueueManager(cfg, publish=publish).scan() == 41
    # the remainders (5 of mid, 5 of big) wait for their destination's batches in flight
    assert [(b.domain, len(b.names)) for b in publish.batches] == [
        ("big.example", 10), ("small.example", 1), ("mid.example", 10),
        ("big.example", 10), ("big.example", 10)]


def test_a_busy_destinations_new_mail_waits_for_its_batch_and_goes_as_one(tmp_path, monkeypatch):
    """Hold and fill: mail for a destination with a batch in flight is not claimed in a batch
    of its own as each message arrives; once that batch ends, what came meanwhile is one batch
    -- and the manager notices the end without waiting for its next periodic scan."""
    monkeypatch.setattr(qmgr, "BATCH_MAX", 10)
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    _queue(cfg, ["r0@busy.example"])
    assert manager.scan() == 1
    for n in range(1, 8):  # a trickle, a scan after each message
        _queue(cfg, [f"r{n}@busy.example"])
        manager._listed_mtime_ns = None
        assert manager.scan() == 0
        assert not manager.held_back()  # nothing ended yet: no scan is asked for
    _queue(cfg, ["one@quiet.example"])  # a destination with nothing in flight is not held
    manager._listed_mtime_ns = None
    assert manager.scan() == 1
    first = publish.batches[0]
    spool = manager.spool
    for name in list(spool.claim_names(first.claim)):
        os.rename(spool.claimed_path(first.claim, str(name)), spool.path(name.rescheduled(10**15)))
    spool.finish(first.claim)
    assert manager.held_back()  # the batch ended: the held mail is claimed at once
    manager._listed_mtime_ns = None
    assert manager.scan() == 7
    assert [(b.domain, len(b.names)) for b in publish.batches] == [
        ("busy.example", 1), ("quiet.example", 1), ("busy.example", 7)]


def test_a_batch_whose_lease_went_stale_holds_no_new_mail_back(tmp_path, monkeypatch):
    """Hold and fill waits for a live batch only: one whose claim has not been renewed for
    HOLD_STALE (its worker may have died; its lease expires in minutes) lets new mail go."""
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    _queue(cfg, ["first@busy.example"])
    assert manager.scan() == 1
    _queue(cfg, ["second@busy.example"])
    manager._listed_mtime_ns = None
    assert manager.scan() == 0  # its batch is alive: held
    stale = time.time() - qmgr.HOLD_STALE - 1
    os.utime(manager.spool.claim_dir(publish.batches[0].claim), (stale, stale))
    manager._listed_mtime_ns = None
    assert manager.scan() == 1
    assert [len(b.names) for b in publish.batches] == [1, 1]


def test_lapsed_leases_are_looked_for_every_few_seconds_not_at_every_scan(tmp_path):
    """Looking stats every live claim; the manager scans several times a second under load.
    A claim whose lease ran out goes back at the next look, at most EXPIRE_EVERY later."""
    cfg = load_cfg(tmp_path)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    _queue(cfg, ["first@a.example", "second@b.example"])
    for domain in ("a.example", "b.example"):  # two claims: known domains, no newcomers
        manager.sites.learn(domain, None)
    assert manager.scan() == 2
    first, second = (manager.spool.claim_dir(b.claim) for b in publish.batches)
    lapsed = time.time() - qmgr.LEASE_SECONDS - 1
    os.utime(first, (lapsed, lapsed))
    assert manager.expire_lapsed() == 1 and not first.exists()  # the first look: at once
    os.utime(second, (lapsed, lapsed))
    assert manager.expire_lapsed() == 0 and second.exists()  # looked just now: it waits
    manager._expired_at -= qmgr.EXPIRE_EVERY
    assert manager.expire_lapsed() == 1 and not second.exists()


def test_due_names_listed_again_are_not_parsed_again(tmp_path, monkeypatch):
    """Mail held for its destination's batch stays due in pending/ and is listed at every
    scan: its names are parsed once, not at each listing."""
    cfg = load_cfg(tmp_path)
    manager = qmgr.QueueManager(cfg, publish=Recorder())
    _queue(cfg, ["first@busy.example"])
    assert manager.scan() == 1
    _queue(cfg, [f"r{n}@busy.example" for n in range(5)])
    parsed = []
    real = EntryName.parse.__func__
    monkeypatch.setattr(EntryName, "parse", classmethod(lambda cls, n: parsed.append(n) or real(cls, n)))
    for expected in (5, 0, 0):
        parsed.clear()
        manager._listed_mtime_ns = None  # list pending/ again
        assert manager.scan() == 0  # held: the first batch is in flight
        assert len(parsed) == expected
    _queue(cfg, ["late@busy.example"])
    parsed.clear()
    manager._listed_mtime_ns = None
    manager.scan()
    assert len(parsed) == 1


def _queue_for(cfg, tenant: str, recipients: list[str]) -> None:
    """One message to each recipient, all of one tenant's."""
    sender = parse_address("a@sender.example")
    for rcpt in recipients:
        outbound.queue_message(sender, [parse_address(rcpt)], b"Subject: s\r\n\r\nx\r\n",
                               notes={"tenant": tenant}, cfg=cfg)


def test_each_tenants_mail_for_a_destination_takes_turns_of_its_own(tmp_path, monkeypatch):
    """One tenant's backlog to a domain never keeps another tenant's due mail for the same
    domain waiting behind it: tenants are served in turn, from the entry names alone."""
    monkeypatch.setattr(qmgr, "BATCH_MAX", 10)
    cfg = load_cfg(tmp_path)
    _queue_for(cfg, "acme", [f"r{n}@big.example" for n in range(35)])
    time.sleep(0.002)
    _queue_for(cfg, "globex", ["one@big.example"])
    publish = Recorder()
    assert qmgr.QueueManager(cfg, publish=publish).scan() == 31  # acme's last 5 wait for a batch
    sizes = [len(b.names) for b in publish.batches]
    assert sizes[:2] == [10, 1]  # globex's one message in the second batch, not the fourth
    assert all(b.domain == "big.example" for b in publish.batches)
    [second] = [publish.batches[1]]
    assert "t" + tenant_tag("globex") in second.names[0]


def test_a_tenant_whose_backlog_fills_its_share_leaves_room_for_another_tenants_mail(tmp_path, monkeypatch):
    """The window's share is each tenant's for a destination: a backlog at its share to one
    domain leaves another tenant's fresh mail for that same domain its place."""
    monkeypatch.setattr(qmgr, "ACTIVE_MAX", 20)
    monkeypatch.setattr(qmgr, "BATCH_MAX", 5)
    cfg = load_cfg(tmp_path)
    _queue_for(cfg, "acme", [f"r{n}@big.example" for n in range(100)])
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    assert manager.scan() == 16  # acme's share: four fifths of the window
    assert manager.scan() == 0
    _queue_for(cfg, "globex", ["fresh@big.example"])
    manager._listed_mtime_ns = None
    assert manager.scan() == 1
    assert "t" + tenant_tag("globex") in publish.batches[-1].names[0]


def test_one_destination_never_takes_the_whole_window(tmp_path, monkeypatch):
    """A backlog takes at most its share of the in-flight window, however slowly it drains:
    a fresh message for another domain finds room at the next scan."""
    monkeypatch.setattr(qmgr, "ACTIVE_MAX", 20)
    monkeypatch.setattr(qmgr, "BATCH_MAX", 5)
    cfg = load_cfg(tmp_path)
    _queue(cfg, [f"r{n}@backlog.example" for n in range(100)])
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish)
    assert manager.scan() == 16  # four fifths of 20; nothing of it delivered yet
    assert manager.scan() == 0
    _queue(cfg, ["fresh@quiet.example"])
    manager._listed_mtime_ns = None
    assert manager.scan() == 1
    assert publish.batches[-1].domain == "quiet.example"


@pytest.mark.parametrize("rule_text,held_for", [
    ("suspend_on = 4.7.28\nsuspend_for = 10m\n", 590),  # suspended: about suspend_for from now
    ("messages_per_hour = 2\n", 3590),  # its hour's places all taken
])
def test_a_held_domain_is_not_claimed_but_waits_in_pending_with_a_later_due_time(
        tmp_path, monkeypatch, rule_text, held_for):
    """A suspended or full [domain:…] shaping rule: its mail is never claimed (so never
    counted as a failure) and waits in pending/ until the rule allows; other domains go on."""
    cfg = load_cfg(tmp_path)
    (tmp_path / "shaping.ini").write_text(f"[domain:held.example]\n{rule_text}")
    cfg = configmod.load(tmp_path)
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(tmp_path / "state"))
    [rule] = cfg.shaping
    if rule.suspend_on:
        Shaper(None).suspend(rule)
    else:
        assert Shaper(None).take([rule], 2) == (2, 0)
    sender = parse_address("a@sender.example")
    for domain in ("held.example", "free.example"):
        outbound.queue_message(sender, [parse_address(f"r@{domain}")], b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    publish = Recorder()
    manager = qmgr.QueueManager(cfg, publish=publish, held=shaping.held)
    manager.scan()
    assert [b.domain for b in publish.batches] == ["free.example"]
    [waiting] = [n for n in manager.spool.names(qmgr.PENDING) if n.domain == "held.example"]
    assert waiting.num_failures == 0
    assert waiting.next_attempt_ms > time.time() * 1000 + held_for * 1000
    from mailflow.queue import tools as queuetools
    rows = {r["domain"]: r for r in queuetools.rows(manager.spool)}
    assert rows["held.example"]["held"] == "shaping:domain:held.example"  # why it waits
    assert rows["free.example"]["held"] is None


def test_an_unreachable_broker_is_said_once_a_minute_and_its_return_once(tmp_path, monkeypatch, caplog):
    """Issue 24 item 5: mail is still accepted and kept while the broker is away; the log says
    so once, then once a minute, not once per batch every five seconds."""
    monkeypatch.setattr(qmgr, "MTIME_SETTLE_NS", 0)
    cfg = load_cfg(tmp_path)
    up = Recorder()
    down = {"yes": True}

    def publish(task, batch):
        if down["yes"]:
            raise ConnectionError("broker away")
        up(task, batch)

    manager = qmgr.QueueManager(cfg, publish=publish)
    sender = parse_address("a@sender.example")
    clock = [1000.0]
    monkeypatch.setattr(qmgr.time, "monotonic", lambda: clock[0])
    for n in range(3):  # three batches refused within the minute: one line
        outbound.queue_message(sender, [parse_address(f"b@d{n}.example")], b"Subject: s\r\n\r\nx\r\n",
                               cfg=cfg)
        monkeypatch.setattr(qmgr, "now_ms", lambda n=n: int(time.time() * 1000) + 60_000 * (n + 1))
        manager.scan()
    said = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    clock[0] += 61  # a minute later it is said again
    outbound.queue_message(sender, [parse_address("b@late.example")], b"Subject: s\r\n\r\nx\r\n", cfg=cfg)
    monkeypatch.setattr(qmgr, "now_ms", lambda: int(time.time() * 1000) + 600_000)
    manager.scan()
    assert len([r for r in caplog.records if "cannot be reached" in r.getMessage()]) == 2
    down["yes"] = False
    monkeypatch.setattr(qmgr, "now_ms", lambda: int(time.time() * 1000) + 900_000)
    manager.scan()
    assert up.batches and any("can be reached again" in r.getMessage() for r in caplog.records)


def test_a_hold_record_describes_an_entry_only_while_it_is_due_at_the_hold_s_time(tmp_path):
    """A stale record (the entry claimed again, or rescheduled by a failure) never makes
    ``queue list`` say an entry is held; past records are removed by the next hold."""
    from mailflow.queue import holds
    from mailflow.queue.entry import EntryName

    now = int(time.time() * 1000)
    name = EntryName(now + 60_000, 0, now, "abc.1", "x.test")
    holds.record(tmp_path, [name], name.next_attempt_ms, "shaping:domain:x.test")
    found = holds.current(tmp_path)
    assert holds.of(found, name) == holds.Hold("shaping:domain:x.test", now + 60_000)
    assert holds.of(found, name.rescheduled(now + 90_000)) is None  # deferred meanwhile
    old = EntryName(now - 10 * holds.KEEP_MS, 0, now, "old.1", "x.test")
    holds.record(tmp_path, [old], old.next_attempt_ms, "shaping:domain:x.test")
    holds.record(tmp_path, [name], now + 70_000, "shaping:mx:.x.test")  # prunes the old one
    assert "old.1" not in holds.current(tmp_path)
    assert len(list((tmp_path / holds.DIRECTORY).iterdir())) == 2


def test_the_window_is_counted_without_listing_every_claim_at_every_scan(tmp_path, monkeypatch):
    """A claim counts whole, as claimed, until its directory is gone; a claim this process
    did not make (an earlier process's) is listed once, when first seen."""
    from collections import Counter

    from mailflow.queue.inflight import InFlight

    cfg = load_cfg(tmp_path)
    _queue(cfg, [f"r{n}@a.example" for n in range(3)] + ["x@b.example"])
    manager = qmgr.QueueManager(cfg, publish=Recorder())
    spool = manager.spool
    earlier, _ = spool.claim([n for n in spool.names() if n.domain == "a.example"])  # not this manager's
    listed = []
    names = spool.claim_names
    monkeypatch.setattr(spool, "claim_names", lambda claim: listed.append(claim) or names(claim))
    flight = InFlight(spool)
    flight.refresh()
    assert flight.entries == Counter({"a.example": 3}) and listed == [earlier]
    flight.refresh()
    assert listed == [earlier]  # known: not listed again
    [one] = list(spool.claim_names(earlier))[:1]
    (spool.claim_dir(earlier) / str(one)).unlink()  # delivered: the claim still counts whole
    flight.refresh()
    assert flight.entries == Counter({"a.example": 3})
    for rest in list(spool.claim_names(earlier)):
        (spool.claim_dir(earlier) / str(rest)).unlink()
    spool.finish(earlier)
    flight.refresh()
    assert flight.entries == Counter() and flight.bytes == Counter()
    assert manager.scan() == 1  # b.example's; its claim recorded with its bytes, not listed
    assert manager.in_flight.entries == Counter({"b.example": 1}) and manager.in_flight.bytes["b.example"] > 0


def test_domains_known_to_share_a_site_are_claimed_as_one_destination(tmp_path, monkeypatch):
    """The lookups wrote down that three domains share one MX set: their entries are claimed
    together, oldest first, in batches of several domains (one lookup, one connection),
    taking turns with the other destinations as one; a domain with no site goes alone."""
    monkeypatch.setattr(qmgr, "BATCH_MAX", 4)
    cfg = load_cfg(tmp_path)
    _queue(cfg, ["a1@a.example", "b1@b.example", "x1@alone.example", "c1@c.example", "a2@a.example"])
    manager = qmgr.QueueManager(cfg, publish=(publish := Recorder()))
    for domain in ("a.example", "b.example", "c.example"):
        manager.sites.learn(domain, "0123456789abcdef")
    manager.sites.learn("alone.example", None)  # needs of its own
    assert manager.scan() == 5
    first, second = publish.batches
    assert (first.site, first.domain) == ("0123456789abcdef", None)
    assert [n.rsplit("_", 1)[1] for n in first.names] == ["a.example", "b.example", "c.example",
                                                         "a.example"]
    assert (second.site, second.domain, len(second.names)) == (None, "alone.example", 1)


def test_first_seen_domains_with_a_few_entries_are_claimed_together_for_one_lookup(tmp_path, monkeypatch):
    """A long tail's first messages: no lookup has written their domains' sites down yet.
    Each with a few entries is a newcomer, and newcomers are claimed together, a batch of
    many domains (one lookup learns all their sites), in turn with the other destinations.
    A first-seen domain with more than a few is a batch of its own, and one with mail in
    flight (its newcomer batch still being looked up) waits for it as any busy domain."""
    monkeypatch.setattr(qmgr, "BATCH_MAX", 8)
    cfg = load_cfg(tmp_path)
    tail = [f"u@t{n}.example" for n in range(10)]
    big = [f"r{n}@big.example" for n in range(JOIN_MAX + 1)]
    _queue(cfg, [*tail, *big, "k@known.example"])
    manager = qmgr.QueueManager(cfg, publish=(publish := Recorder()))
    manager.sites.learn("known.example", None)
    assert manager.scan() == 17
    shapes = sorted(((b.site or "-"), b.domain or "-", len(b.names)) for b in publish.batches)
    assert shapes == [("-", "big.example", JOIN_MAX + 1), ("-", "known.example", 1),
                      (NEWCOMERS, "-", 2), (NEWCOMERS, "-", 8)]
    newcomers = [n.rsplit("_", 1)[1] for b in publish.batches if b.site == NEWCOMERS for n in b.names]
    assert sorted(newcomers) == sorted(r.split("@")[1] for r in tail)  # oldest first, each once
    _queue(cfg, ["again@t0.example"])  # t0's newcomer batch is still in flight: held for it
    manager._listed_mtime_ns = None
    assert manager.scan() == 0


def test_a_site_batch_of_one_domain_is_that_domain_s_batch(tmp_path):
    cfg = load_cfg(tmp_path)
    _queue(cfg, ["a1@a.example", "a2@a.example"])
    manager = qmgr.QueueManager(cfg, publish=(publish := Recorder()))
    manager.sites.learn("a.example", "0123456789abcdef")
    assert manager.scan() == 2
    [batch] = publish.batches
    assert (batch.domain, batch.site) == ("a.example", None)


def test_domains_routes_ini_sends_to_one_host_are_one_site_from_their_first_message(tmp_path):
    """No lookup has run yet: routes.ini (or relay_host) already says where they go.  What a
    lookup wrote down wins: a domain it found needs to travel alone does."""
    cfg = load_cfg(tmp_path)
    (tmp_path / "routes.ini").write_text("[.hosted.example]\nvia = [192.0.2.1]:2525\n\n"
                                         "[elsewhere.example]\nvia = [192.0.2.9]:2525\n")
    cfg = configmod.load(tmp_path)
    _queue(cfg, ["a@a.hosted.example", "b@b.hosted.example", "c@c.hosted.example",
                 "d@elsewhere.example", "e@dns.example"])
    manager = qmgr.QueueManager(cfg, publish=(publish := Recorder()))
    manager.sites.learn("c.hosted.example", None)  # a lookup found it needs what others may not
    assert manager.scan() == 5
    shapes = sorted((b.site is not None, b.domain, len(b.names)) for b in publish.batches)
    assert shapes == [(False, "c.hosted.example", 1), (False, "dns.example", 1),
                      (False, "elsewhere.example", 1), (True, None, 2)]


def busy_with_an_open_claim(tmp_path) -> tuple[configmod.Config, qmgr.QueueManager, Recorder, Batch]:
    """A manager whose one batch for busy.example is in flight, its claim open to be fed."""
    cfg = load_cfg(tmp_path)
    _queue(cfg, ["first@busy.example"])
    manager = qmgr.QueueManager(cfg, publish=(publish := Recorder()))
    manager.sites.learn("busy.example", None)
    assert manager.scan() == 1
    [batch] = publish.batches
    assert feed.open_feed(manager.spool, batch.claim)
    return cfg, manager, publish, batch


def test_a_busy_domain_s_new_mail_is_fed_into_its_open_claim_and_counted_as_it_goes(tmp_path):
    """A claim whose transmit takes more as it sends (feed.py) gets the domain's new mail
    instead of holding it: no new batch, no task.  What it delivered stops counting in the
    window at the next recount, however long the claim lives."""
    cfg, manager, publish, batch = busy_with_an_open_claim(tmp_path)
    _queue(cfg, [f"r{n}@busy.example" for n in range(3)])
    manager._listed_mtime_ns = None
    assert manager.scan() == 3
    assert len(publish.batches) == 1  # fed, not a batch of their own
    assert len(list(manager.spool.claim_names(batch.claim))) == 4
    assert manager.in_flight.entries["busy.example"] == 4
    for name in list(manager.spool.claim_names(batch.claim))[:3]:  # delivered
        (manager.spool.claim_dir(batch.claim) / str(name)).unlink()
    manager._recounted_at -= qmgr.RECOUNT_EVERY
    manager.scan()
    assert manager.in_flight.entries["busy.example"] == 1
    feed.close_feed(manager.spool, batch.claim)
    _queue(cfg, ["later@busy.example"])  # closed: held for the batch, as before
    manager._listed_mtime_ns = None
    assert manager.scan() == 0 and len(publish.batches) == 1


def test_a_full_open_claim_is_listed_again_only_when_its_directory_changes(tmp_path, monkeypatch):
    """A busy destination's held mail asks at every scan how much its open claim can take:
    the claim is listed once while its directory is unchanged, and again once an entry
    leaves it -- then the held mail is fed."""
    monkeypatch.setattr(qmgr, "RECOUNT_EVERY", 3600.0)  # no recount of fed claims meanwhile
    cfg, manager, publish, batch = busy_with_an_open_claim(tmp_path)
    _queue(cfg, [f"f{n}@busy.example" for n in range(qmgr.BATCH_MAX - 1)])
    manager._listed_mtime_ns = None
    assert manager.scan() == qmgr.BATCH_MAX - 1  # fed up to a batch
    directory = manager.spool.claim_dir(batch.claim)
    listed: list[str] = []
    real = manager.spool.claim_names
    monkeypatch.setattr(manager.spool, "claim_names", lambda claim: listed.append(claim) or real(claim))
    _queue(cfg, [f"h{n}@busy.example" for n in range(3)])
    for _ in range(3):  # held at each scan: the claim is full
        manager._listed_mtime_ns = None
        assert manager.scan() == 0
    assert listed.count(batch.claim) == 1
    for name in sorted(os.listdir(directory))[:2]:  # delivered
        (directory / name).unlink()
    later = os.stat(directory).st_mtime_ns + 10_000_000  # a tick on, whatever the clock's grain
    os.utime(directory, ns=(later, later))
    manager._listed_mtime_ns = None
    assert manager.scan() == 2
    assert listed.count(batch.claim) == 2
    assert len(publish.batches) == 1  # fed, not a batch of their own
