"""Claims lent to other hosts: parcels under the cap, reports applied, leases kept or ended
(mailflow/queue/lending.py, reports.py, relay/fence.py, pipeline/parcels.py; issue 12)."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from harness.mxserver import MXServer
from mailflow import config
from mailflow.config.settings import Outbound
from mailflow.errors import NothingToDo, Reply
from mailflow.pipeline.parcels import RemoteLedger
from mailflow.pipeline.transmit import Courier
from mailflow.queue import counters, lending, remote_outcomes
from mailflow.queue.entry import BadName
from mailflow.queue.spool import FAILED, Spool, now_ms
from mailflow.relay import fence
from mailflow.relay.fence import Holdings
from mailflow.relay.mx import MX
from mailflow.wire import lease
from mailflow.wire.payloads import Batch, Outcome, Parcel, RemoteOutcomes, Route
from tests.support.entries import make_entry

SETTINGS = Outbound(temp_fail_intervals=(60, 120))
OK = Reply(250, "2.0.0 ok", "DATA")


def claimed(tmp_path, bodies: dict[str, bytes]) -> tuple[Spool, Route]:
    spool = Spool(tmp_path / "queue").ensure()
    for ident, body in bodies.items():
        spool.write([make_entry(ident)], body)
    claim, names = spool.claim(sorted(spool.names()))
    return spool, Route(Batch(spool.identity, claim, tuple(names), "example.com"), mx=(MX("mx.example.com"),))


def test_parcels_stay_under_the_cap_and_a_message_too_large_stays_with_the_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(lending, "PAYLOAD_MAX", 4000)
    spool, route = claimed(tmp_path, {"L.1": b"a" * 1200 + b"\r\n", "L.2": b"b" * 1200 + b"\r\n",
                                      "L.3": b"c" * 1200 + b"\r\n", "L.4": b"d" * 9000 + b"\r\n"})
    parcels, local = lending.pack(spool, route)
    assert [len(p.letters) for p in parcels] == [2, 1]
    assert all(sum(x.size() for x in p.letters) <= 4000 for p in parcels)
    assert local is not None and [n.split("_")[3] for n in local.batch.names] == ["L.4"]
    first = parcels[0].letters[0]
    assert first.message.endswith(b"a" * 1200 + b"\r\n") and first.rcpt_to == ("x@example.com",)
    again = Parcel.from_json(parcels[0].to_json(tmp_path), tmp_path)
    assert again == parcels[0]


def test_a_parcel_or_report_that_names_other_entries_is_refused(tmp_path):
    spool, route = claimed(tmp_path, {"R.1": b"m\r\n"})
    [parcel], _ = lending.pack(spool, route)
    data = parcel.to_json(tmp_path)
    data["letters"][0]["name"] = "x"
    with pytest.raises(BadName):
        Parcel.from_json(data, tmp_path)
    report = RemoteOutcomes(route.batch, "h",
                            results={route.batch.names[0]: Outcome(results={"x@example.com": OK})})
    data = report.to_json()
    data["results"] = {"1_0_1_Z.9_example.com": data["results"].popitem()[1]}
    with pytest.raises(BadName):
        RemoteOutcomes.from_json(data)


def test_a_lent_claim_outlives_its_lease_while_the_owner_cannot_hear_the_broker(tmp_path, monkeypatch):
    monkeypatch.setattr(lending, "PARCEL_WAIT_SECONDS", 0.0)
    spool, route = claimed(tmp_path, {"E.1": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    old = time.time() - 100
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    os.utime(tmp_path / "queue" / lending.LENT / route.batch.claim, (old, old))
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 0  # never heard: kept
    now = now_ms()
    lending.heard(spool, "w@a", now - 20_000)
    lending.heard(spool, "w@a", now - 2 * int(lending.HEARD_GAP_S * 1000) - 20_000)  # a gap...
    lending.heard(spool, "w@a", now)  # ...so heard only since now
    assert not lending.heard_for(spool, 10)
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 0
    step = int(lending.HEARD_GAP_S * 1000 / 2)
    path = tmp_path / "queue" / lending.HEARD / "w@a"
    path.unlink()
    for at in range(now - 12_000, now + 1, step):  # heard without a gap for longer than the lease
        lending.heard(spool, "w@a", at)
    assert lending.heard_for(spool, 10)
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 1
    assert [n.id for n in spool.names()] == ["E.1"]
    lending.spare(spool, 10)  # sweeps the marks of claims that are gone
    assert not lending.is_lent(spool, route.batch.claim)


def test_a_parcel_may_wait_in_the_broker_before_its_lease_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(lending, "PARCEL_WAIT_SECONDS", 30.0)
    spool, route = claimed(tmp_path, {"W.1": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    old = time.time() - 100
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    now = now_ms()
    for at in range(now - 12_000, now + 1, 500):
        lending.heard(spool, "w@a", at)
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 0  # lent 0 s ago: waits 30 + 10
    lent = time.time() - 41
    os.utime(tmp_path / "queue" / lending.LENT / route.batch.claim, (lent, lent))
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 1


def test_only_lent_claims_are_renewed_from_another_host(tmp_path):
    spool, route = claimed(tmp_path, {"N.1": b"m\r\n"})
    old = time.time() - 100
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    assert lending.renew(spool, [route.batch.claim, "../x"]) == 0
    lending.lend(spool, route.batch.claim, route.batch.names)
    assert lending.renew(spool, [route.batch.claim]) == 1
    assert os.stat(spool.claim_dir(route.batch.claim)).st_mtime > old + 50


def test_a_report_records_outcomes_gives_back_the_rest_and_ends_the_claim(tmp_path):
    spool, route = claimed(tmp_path, {"A.1": b"m\r\n", "A.2": b"m\r\n", "A.3": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    one, two, three = route.batch.names
    remote_outcomes.apply(spool, RemoteOutcomes(route.batch, "w@b", results={
        one: Outcome(host="mx", results={"x@example.com": OK}),
        two: Outcome(host="mx", results={"x@example.com": Reply(451, "4.2.1 later", "RCPT")})},
        back=(three,)), SETTINGS)
    pending = sorted(spool.names(), key=lambda n: n.id)
    assert [(n.id, n.num_failures) for n in pending] == [("A.2", 1), ("A.3", 0)]
    assert pending[1].next_attempt_ms <= now_ms()
    assert counters.read(spool.root, "delivered") == 1
    assert not spool.claim_dir(route.batch.claim).exists()
    assert not lending.is_lent(spool, route.batch.claim)


def test_a_late_outcome_is_applied_only_while_the_entry_waits_untouched(tmp_path, caplog):
    spool, route = claimed(tmp_path, {"T.1": b"m\r\n", "T.2": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    first, second = route.batch.names
    old = time.time() - 100
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    spool.expire(10)  # both back in pending/
    again, _ = spool.claim([n for n in spool.names() if n.id == "T.2"])  # T.2 attempted again
    delivered = Outcome(host="mx", results={"x@example.com": OK})
    with caplog.at_level(logging.INFO):
        remote_outcomes.apply(spool, RemoteOutcomes(route.batch, "w@b",
                                                     results={first: delivered, second: delivered}),
                              SETTINGS)
    assert [n.id for n in spool.names()] == []  # T.1 was waiting: its delivery is recorded
    assert "it had not been attempted again, so it was applied" in caplog.text
    assert "possible duplicate: T.2 was delivered by w@b" in caplog.text
    assert [p.name.split("_")[3] for p in spool.claim_dir(again).iterdir()] == ["T.2"]  # untouched


# ── issue 23 item 3: a report proves its claim ─────────────────────────────────────────


def test_a_report_for_a_claim_never_lent_is_refused_and_changes_nothing(tmp_path, caplog):
    """At 7ff0849 a report naming any claimed entry with 250 removed it (with 550: bounced
    it and suppressed the recipient), lent or not."""
    spool, route = claimed(tmp_path, {"F.1": b"m\r\n"})
    [name] = route.batch.names
    for code in (OK, Reply(550, "5.1.1 no such user", "RCPT")):
        with pytest.raises(NothingToDo):
            remote_outcomes.apply(spool, RemoteOutcomes(route.batch, "evil", results={
                name: Outcome(host="mx", results={"x@example.com": code})}), SETTINGS)
    assert [p.name for p in spool.claim_dir(route.batch.claim).iterdir()] == [name]
    assert counters.read(spool.root, "delivered") == 0 and not list(spool.names(FAILED))
    assert "refused a report from evil" in caplog.text


def test_a_report_may_name_only_the_entries_lent_under_its_claim(tmp_path):
    spool, route = claimed(tmp_path, {"G.1": b"m\r\n", "G.2": b"m\r\n"})
    lent, kept = route.batch.names
    lending.lend(spool, route.batch.claim, [lent])  # G.2 stayed with the owner (too large)
    with pytest.raises(NothingToDo):
        remote_outcomes.apply(spool, RemoteOutcomes(route.batch.part([kept]), "w@b", results={
            kept: Outcome(host="mx", results={"x@example.com": OK})}), SETTINGS)
    assert sorted(p.name for p in spool.claim_dir(route.batch.claim).iterdir()) == sorted([lent, kept])
    remote_outcomes.apply(spool, RemoteOutcomes(route.batch.part([lent]), "w@b", results={
        lent: Outcome(host="mx", results={"x@example.com": OK})}), SETTINGS)
    assert [p.name for p in spool.claim_dir(route.batch.claim).iterdir()] == [kept]


def test_a_late_report_is_checked_against_the_record_of_a_returned_claim(tmp_path, caplog):
    spool, route = claimed(tmp_path, {"L.1": b"m\r\n"})
    [name] = route.batch.names
    lending.lend(spool, route.batch.claim, [name])
    old = time.time() - 100
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    spool.expire(10)
    lending.spare(spool, 10)  # the claim is gone: its record is kept aside
    assert not lending.is_lent(spool, route.batch.claim)
    assert lending.lent_names(spool, route.batch.claim) == {name}
    with caplog.at_level(logging.INFO):
        remote_outcomes.apply(spool, RemoteOutcomes(route.batch, "w@b", results={
            name: Outcome(host="mx", results={"x@example.com": OK})}), SETTINGS)
    assert list(spool.names()) == [] and counters.read(spool.root, "delivered") == 1
    assert "via=w@b" in caplog.text  # the attempt line names the host that sent


def test_a_taken_claim_comes_back_a_lease_after_its_last_renewal(tmp_path, monkeypatch):
    """At 7ff0849 a lent claim was kept ``lent + parcel wait + lease`` whatever its holder had
    done: a killed worker host's batches came back after two leases (issue 23 item 11)."""
    monkeypatch.setattr(lending, "PARCEL_WAIT_SECONDS", 300.0)
    spool, route = claimed(tmp_path, {"K.1": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    now = now_ms()
    for at in range(now - 12_000, now + 1, 500):
        lending.heard(spool, "w@a", at)
    assert lending.renew(spool, [route.batch.claim]) == 1 and lending.taken(spool, route.batch.claim)
    old = time.time() - 11  # renewed 11 s ago, lease 10 s; lent just now, parcel wait 300 s
    os.utime(spool.claim_dir(route.batch.claim), (old, old))
    assert spool.expire(10, spare=lending.spare(spool, 10)) == 1
    lending.spare(spool, 10)
    assert not lending.taken(spool, route.batch.claim)


def test_the_default_parcel_wait_brings_an_untaken_claim_back_within_a_lease_and_a_minute():
    assert lease.PARCEL_WAIT_SECONDS <= 60


def parcel(issued_ms: int, names=("1_0_1_P.1_example.com",)) -> Parcel:
    return Parcel(Route(Batch("owner-1", "a" * 32, tuple(names), "example.com"), mx=(MX("mx.example.com"),)),
                  letters=(), issued_ms=issued_ms, lease_ms=int(lease.LEASE_SECONDS * 1000))


def test_a_parcel_past_its_fence_is_not_taken_and_a_renewal_moves_the_fence():
    holdings = Holdings()
    assert holdings.take(parcel(now_ms() - int(lease.LEASE_SECONDS * 1000)), hop=True) is None
    fresh = parcel(now_ms())
    held = holdings.take(fresh, hop=True)
    assert held is not None and held.may_start()
    assert holdings.claims() == {"owner-1": ["a" * 32]}
    held.fence = lease.clock() - 1  # no renewal taken for a while: the fence has passed
    assert not held.may_start()
    holdings.renewed({"owner-1": ["a" * 32]}, lease.clock())
    assert held.may_start()
    holdings.let_go(fresh)
    assert holdings.claims() == {}


def test_a_holder_must_renew_within_half_a_lease_of_taking_a_parcel_however_long_it_may_wait():
    """The cut-off case: a parcel taken just before the link went must not be sent from until
    its (long) wait runs out: half a lease after taking it, with no renewal, it stops."""
    waited = Parcel(parcel(now_ms()).route, letters=(), issued_ms=now_ms(),
                    lease_ms=int(lease.LEASE_SECONDS * 1000), wait_ms=10 * int(lease.LEASE_SECONDS * 1000))
    held = Holdings().take(waited, hop=False)
    assert held is not None and held.fence <= lease.clock() + lease.FENCE_SECONDS


def test_a_parcel_whose_next_step_never_comes_is_no_longer_renewed(monkeypatch):
    holdings = Holdings()
    monkeypatch.setattr(fence, "HOP_GRACE", -1.0)
    assert holdings.take(parcel(now_ms()), hop=True) is not None
    assert holdings.claims() == {}


class Reports:
    def __init__(self, fail: bool = False):
        self.sent: list[RemoteOutcomes] = []
        self.fail = fail

    def __call__(self, report: RemoteOutcomes) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append(report)


def test_a_holder_that_cannot_report_starts_nothing_more_and_hands_back_the_rest(tmp_path):
    spool, route = claimed(tmp_path, {"H.1": b"m\r\n", "H.2": b"m\r\n"})
    [p], _ = lending.pack(spool, route)
    lending.lend(spool, route.batch.claim, p.batch.names)
    broken = Reports(fail=True)
    ledger = RemoteLedger(p, Holdings().take(p, hop=False), broken, "w@b")
    first, second = p.letters
    assert ledger.may_start()
    ledger.record(first, Outcome(results={"x@example.com": OK}))
    ledger.send(final=False)
    assert ledger.cut_off and not ledger.may_start()
    broken.fail = False
    ledger.send(final=True)
    [report] = broken.sent
    assert list(report.results) == [first.name] and report.back == (second.name,)


def test_no_entry_is_in_two_reports_of_one_parcel(tmp_path):
    """Reports of a parcel may be applied in any order: an entry reported delivered must never
    also be handed back by a later report (it would be sent again)."""
    spool, route = claimed(tmp_path, {"D.1": b"m\r\n", "D.2": b"m\r\n", "D.3": b"m\r\n"})
    [p], _ = lending.pack(spool, route)
    lending.lend(spool, route.batch.claim, p.batch.names)
    sent = Reports()
    ledger = RemoteLedger(p, Holdings().take(p, hop=False), sent, "w@b")
    first, second, third = p.letters
    ledger.record(first, Outcome(results={"x@example.com": OK}))
    ledger.send(final=False)
    ledger.give_back([second, third])
    ledger.give_back([third])
    ledger.send(final=True)
    early, last = sent.sent
    assert list(early.results) == [first.name] and early.back == ()
    assert last.results == {} and last.back == (second.name, third.name)
    remote_outcomes.apply(spool, last, SETTINGS)  # the final report first
    remote_outcomes.apply(spool, early, SETTINGS)
    assert sorted(n.id for n in spool.names()) == ["D.2", "D.3"]
    assert counters.read(spool.root, "delivered") == 1
    assert not spool.claim_dir(route.batch.claim).exists()


def test_the_letters_cross_the_broker_once_and_wait_on_the_worker_for_transmit(tmp_path):
    spool, route = claimed(tmp_path, {"B.1": b"m\r\n"})
    [p], _ = lending.pack(spool, route)
    lending.lend(spool, route.batch.claim, p.batch.names)
    holdings = Holdings()
    holdings.take(p, hop=True)  # acquire_connection, which came with the letters
    light = p.to_json(tmp_path, letters=False)
    assert light["letters"] is None and "bQ0K" not in json.dumps(light)
    assert "bQ0K" in json.dumps(p.to_json(tmp_path))
    again = Parcel.from_json(light, tmp_path)
    assert again.letters == () and again.batch == p.batch
    held = holdings.take(again, hop=False)  # transmit, on the same worker
    assert held is not None and held.letters == p.letters


def test_a_worker_host_shares_a_slow_receivers_parcel_over_lanes_and_reports_each_once(tmp_path):
    """Lanes behind a RemoteLedger (issue 14): the ledger is called one lane at a time, so
    every letter is reported once, delivered, and none handed back."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "outbound.ini").write_text(
        f"queue_dir = {tmp_path / 'queue'}\nenable_tls = false\npool_concurrency_max = 4\n")
    cfg = config.Config(tmp_path / "config")
    with MXServer("127.0.0.2", 0, delay={"DOT": 0.3}) as mx:
        spool = Spool(tmp_path / "queue").ensure()
        for n in range(12):
            spool.write([make_entry(f"S.{n}")], b"Subject: s\r\n\r\nm\r\n")
        claim, names = spool.claim(sorted(spool.names()))
        route = Route(Batch(spool.identity, claim, tuple(names), "example.com"),
                      mx=(MX("127.0.0.2", port=mx.port, from_dns=False),))
        [p], _ = lending.pack(spool, route)
        lending.lend(spool, route.batch.claim, p.batch.names)
        sent = Reports()
        ledger = RemoteLedger(p, Holdings().take(p, hop=False), sent, "w@b")
        courier = Courier(cfg, p.route, None, ledger)
        try:
            courier.run()
        finally:
            courier.let_go()
        ledger.send(final=True)
        assert len(mx.deliveries) == 12 and 2 <= mx.high_water <= 4
    reported = [name for report in sent.sent for name in report.results]
    assert sorted(reported) == sorted(x.name for x in p.letters)  # each once
    assert all(report.back == () for report in sent.sent)


def test_entries_a_holder_gives_back_for_a_shaping_rule_are_listed_as_held_on_the_owner(tmp_path):
    """A worker on another host held the parcel back under a rule: its report carries the
    rule, through the broker's JSON, and the owner's ``queue list`` says it."""
    from mailflow.queue import holds
    from mailflow.queue import tools as queuetools

    spool, route = claimed(tmp_path, {"A.1": b"m\r\n", "A.2": b"m\r\n"})
    lending.lend(spool, route.batch.claim, route.batch.names)
    due = now_ms() + 600_000
    sent = RemoteOutcomes(route.batch, "w@b", back=route.batch.names, back_due_ms=due,
                  back_why="shaping:mx:.example.com")
    received = RemoteOutcomes.from_json(json.loads(json.dumps(sent.to_json())))
    assert received == sent
    remote_outcomes.apply(spool, received, SETTINGS)
    rows = queuetools.rows(spool)
    assert sorted((r["id"], r["held"], r["num_failures"]) for r in rows) == [  # same arrival: any order
        ("A.1", "shaping:mx:.example.com", 0), ("A.2", "shaping:mx:.example.com", 0)]
    bad = RemoteOutcomes.from_json({**sent.to_json(), "back_why": "x\n" * 10})  # shown, so printable only
    assert bad.back_why == "" and holds.current(spool.root)
