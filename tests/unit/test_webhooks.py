"""Webhook signing and the kept events' schedule (mailflow/webhooks/, mailflow/queue/events.py)."""

from __future__ import annotations

import base64
import os

from mailflow.queue import events
from mailflow.webhooks.sender import signature


def test_the_signature_is_the_standard_webhooks_one():
    """The example of the Standard Webhooks specification, byte for byte."""
    secret = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_schedule_retries_within_10_s_and_keeps_on_for_a_day():
    assert events.SCHEDULE[0] <= 10
    assert sum(events.SCHEDULE) >= 86400
    assert list(events.SCHEDULE) == sorted(events.SCHEDULE)


def _record(n: int | str) -> dict:
    return {"id": f"msg_{n}", "endpoint": "app", "attempt": 0, "body": {"n": n}}


def test_due_events_go_out_in_bounded_batches_and_a_lost_batch_comes_back(tmp_path):
    events.put_waiting(tmp_path, [_record(n) for n in range(events.BATCH_MAX * 3)], 1000)
    events.put_waiting(tmp_path, [_record("later")], 999999999999999)
    published: list[str] = []
    sent = events.dispatch(tmp_path, published.append, now_ms=10**12)
    assert sent == events.BATCH_MAX * events.BATCHES_MAX and len(published) == events.BATCHES_MAX
    assert events.dispatch(tmp_path, published.append, now_ms=10**12) == 0  # no room: 2 batches out
    assert events.backlog(tmp_path) == events.BATCH_MAX * 3 + 1  # claimed ones still count
    lost = events.batch_dir(tmp_path, published[0])
    os.utime(lost, (0, 0))  # its task never ran
    again = events.dispatch(tmp_path, published.append, now_ms=10**12)
    assert again == events.BATCH_MAX and len(published) == 3  # back, and out again (one is still out)
    assert not lost.exists()
    later = [n for n in os.listdir(events.directory(tmp_path)) if n.startswith("999999999999999_")]
    assert len(later) == 1  # not due: not sent


def _ids(tmp_path) -> list[str]:
    """Every event id that went out in a batch."""
    found = []
    for batch in (events.directory(tmp_path) / events.INFLIGHT).iterdir():
        for path in batch.iterdir():
            found += [r["id"] for r in events.parse(path.read_bytes(), path.name)]
    return found


def test_the_journal_hands_every_event_over_once_while_processes_write(tmp_path):
    """Writers in several processes append while the dispatcher drains: no event is lost
    (one taken with its segment, one written after) and none is handed over twice.  Each
    writer stops halfway until the dispatcher has drained once, so a hand-over happens
    while they write whatever the scheduler does."""
    writers, each = 4, 500
    pids, halfway, resume = [], [], []
    for w in range(writers):
        half_r, half_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a writer process, as smtpd and worker processes are
            code = 0
            try:
                for n in range(each):
                    if n == each // 2:
                        os.write(half_w, b"h")
                        os.read(go_r, 1)
                    events.JOURNAL_OF_THIS_PROCESS.append(tmp_path, events.line(_record(f"{w}-{n}")))
            except BaseException:
                code = 1
            os._exit(code)
        os.close(half_w)
        os.close(go_r)
        pids.append(pid)
        halfway.append(half_r)
        resume.append(go_w)
    for fd in halfway:
        assert os.read(fd, 1) == b"h"
        os.close(fd)
    drains = int(events.drain(tmp_path, 1) > 0)  # half of every writer's events are there
    for fd in resume:
        os.write(fd, b"g")
        os.close(fd)
    running = set(pids)
    while running:  # drained over and over while they write
        drains += events.drain(tmp_path, 1) > 0
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert status == 0
                running.discard(pid)
    drains += events.drain(tmp_path, 1) > 0
    assert drains > 1  # the hand-over happened while they wrote, not only at the end

    def done(batch: str) -> None:  # the batch's task ran: set it aside
        (events.directory(tmp_path) / events.INFLIGHT / batch).rename(tmp_path / f"done-{batch}")
    while events.dispatch(tmp_path, done, now_ms=10**12):
        pass
    assert events.backlog(tmp_path) == 0
    found = [r["id"] for batch in tmp_path.glob("done-*") for path in batch.iterdir()
             for r in events.parse(path.read_bytes(), path.name)]
    assert sorted(found) == sorted(f"msg_{w}-{n}" for w in range(writers) for n in range(each))
    assert max(events.count_of(p.name) for p in tmp_path.glob("done-*/*")) <= events.BATCH_MAX


def test_a_broken_line_is_skipped_and_the_rest_kept(tmp_path, caplog):
    data = events.line(_record(1)) + b'{"id": "msg_2", "endp' + b"\n" + events.line(_record(3))
    assert [r["id"] for r in events.parse(data, "seg")] == ["msg_1", "msg_3"]
    assert "unreadable" in caplog.text


def test_a_large_segment_is_drained_in_batches_and_a_line_cut_short_is_skipped(tmp_path, caplog):
    journal = events.Journal()
    for n in range(450):
        journal.append(tmp_path, events.line(_record(n)))
    [segment] = (events.directory(tmp_path) / events.JOURNAL).iterdir()
    with segment.open("ab") as f:  # a writer killed in the middle of its write
        f.write(b'{"id":"msg_cut","endpoint":"ap')
    assert events.drain(tmp_path, 1) == 450
    counts = sorted(events.count_of(p.name) for p in events.directory(tmp_path).glob("*.jsonl"))
    assert counts == [50, 200, 200] and events.backlog(tmp_path) == 450
    assert "cut short" in caplog.text and not segment.exists()
    journal.append(tmp_path, events.line(_record("after")))  # the writer starts another segment
    assert events.backlog(tmp_path) == 451
