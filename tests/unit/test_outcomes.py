"""What an attempt's outcome does to an entry: delivered, deferred, failed (queue/outcomes.py)."""

from __future__ import annotations

from mailflow import hooks
from mailflow.address import parse_address
from mailflow.codes import DENYSOFT
from mailflow.config.settings import Outbound
from mailflow.errors import Reply, TemporaryError, local_reply
from mailflow.queue import counters
from mailflow.queue.claims import load
from mailflow.queue.hmail import HMail
from mailflow.queue.outcomes import crashed, defer_by_rename, fail_each, record
from mailflow.queue.spool import FAILED, Spool, now_ms
from mailflow.wire.payloads import Batch, Outcome
from tests.support.entries import make_entry

SETTINGS = Outbound(temp_fail_intervals=(60, 120))


def claimed(tmp_path, *rcpts: str) -> tuple[Spool, HMail]:
    spool = Spool(tmp_path).ensure()
    entry = make_entry("O.1")
    entry.todo.rcpt_to = [parse_address(r) for r in rcpts] or entry.todo.rcpt_to
    spool.write([entry], b"Subject: s\r\n\r\nbody\r\n")
    claim, names = spool.claim(list(spool.names()))
    [hmail] = load(spool, Batch(spool.identity, claim, tuple(names)))
    return spool, hmail


def test_split_outcome_delivers_defers_and_fails_each_recipient(tmp_path):
    spool, hmail = claimed(tmp_path, "ok@example.com", "later@example.com", "gone@example.com")
    outcome = Outcome(host="mx.example.com", ip="192.0.2.1", port=25, results={
        "ok@example.com": Reply(250, "2.0.0 ok", "DATA"),
        "later@example.com": Reply(451, "4.2.1 later", "RCPT"),
        "gone@example.com": Reply(550, "5.1.1 gone", "RCPT")})
    record(spool, hmail, outcome, SETTINGS)
    assert not hmail.path.exists()
    [waiting] = [HMail.load(spool.path(n)) for n in spool.names()]
    assert [r.address for r in waiting.todo.rcpt_to] == ["later@example.com"]
    assert waiting.num_failures == 1 and waiting.name.next_attempt_ms >= now_ms() + 59_000
    assert waiting.todo.record["history"][-1]["error"] == "451 4.2.1 later"
    [failed] = [HMail.load(spool.path(n, FAILED)) for n in spool.names(FAILED)]
    assert [r.address for r in failed.todo.rcpt_to] == ["gone@example.com"]
    assert failed.todo.record["rcpt_status"]["gone@example.com"]["status"] == "5.1.1"
    assert failed.num_failures == 0  # counts attempts at its bounce from here
    assert counters.read(spool.root, "delivered") == 0  # one recipient still waits


def test_the_schedule_used_up_fails_with_too_many_failures(tmp_path):
    spool, hmail = claimed(tmp_path)
    hmail.num_failures = 2
    outcome = Outcome(results={hmail.todo.rcpt_to[0].address: Reply(451, "4.4.1 down", "banner")})
    record(spool, hmail, outcome, SETTINGS)
    [failed] = [HMail.load(spool.path(n, FAILED)) for n in spool.names(FAILED)]
    assert failed.todo.record["reason"] == "Too many failures (451 4.4.1 down)"
    [status] = failed.todo.record["rcpt_status"].values()
    assert (status["code"], status["status"], status["text"]) == (451, "4.4.1", "4.4.1 down")


def test_the_deferred_hook_may_change_the_wait(tmp_path):
    def wait_7(**kwargs):
        return DENYSOFT, 7

    hooks.deferred.connect(wait_7, weak=False)
    try:
        spool, hmail = claimed(tmp_path)
        fail_each(spool, [hmail], TemporaryError(local_reply("4.4.3", "dns down")), SETTINGS)
    finally:
        hooks.deferred.disconnect(wait_7)
    [name] = list(spool.names())
    assert 6_000 <= name.next_attempt_ms - now_ms() <= 7_000


def test_an_unexpected_exception_defers_with_the_error_in_history(tmp_path):
    spool, hmail = claimed(tmp_path)
    crashed(spool, hmail, ValueError("odd reply"), SETTINGS)
    [waiting] = [HMail.load(spool.path(n)) for n in spool.names()]
    assert waiting.num_failures == 1
    assert waiting.todo.record["history"][-1]["error"] == "4.3.0 internal error: ValueError: odd reply"


def test_when_nothing_can_be_written_the_entry_is_renamed_back_with_its_failure(tmp_path):
    spool, hmail = claimed(tmp_path)
    defer_by_rename(spool, hmail, SETTINGS)
    [name] = list(spool.names())
    assert name.num_failures == 1 and name.next_attempt_ms >= now_ms() + 59_000
    assert HMail.load(spool.path(name)).todo.record == {}  # nothing inside was changed
