"""Webhook signing and the kept events' schedule (mailflow/webhooks/, mailflow/queue/events.py)."""

from __future__ import annotations

import base64
import json
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


def test_due_events_go_out_in_bounded_batches_and_a_lost_batch_comes_back(tmp_path):
    where = events.directory(tmp_path)
    where.mkdir()
    record = {"endpoint": "app", "attempt": 0, "body": {}}
    for n in range(events.BATCH_MAX * 3):  # due
        (where / f"{1000 + n}_msg_{n}.json").write_text(json.dumps({**record, "id": f"msg_{n}"}))
    (where / "999999999999999_msg_later.json").write_text(json.dumps({**record, "id": "msg_later"}))
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
    assert (where / "999999999999999_msg_later.json").exists()  # not due: not sent
