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


def test_a_lost_publish_or_a_stale_claim_comes_back_through_the_sweep(tmp_path):
    where = events.directory(tmp_path)
    (where / events.INFLIGHT).mkdir(parents=True)
    record = json.dumps({"id": "msg_1", "endpoint": "app", "attempt": 0, "body": {}})
    (where / "1000_msg_1.json").write_text(record)  # due long ago, never published
    (where / "999999999999999_msg_2.json").write_text(record)  # due far ahead
    (where / events.INFLIGHT / "2000_msg_3.json").write_text(record)  # claimed, never finished
    stale = (where / events.INFLIGHT / "2000_msg_3.json")
    os.utime(stale, (0, 0))
    published: list[tuple[str, float]] = []
    assert events.sweep(tmp_path, lambda name, countdown: published.append((name, countdown))) == 2
    assert sorted(published) == [("1000_msg_1.json", 0), ("2000_msg_3.json", 0)]
    assert events.backlog(tmp_path) == 3
    assert events.claim(tmp_path, "1000_msg_1.json") is not None
    assert events.claim(tmp_path, "1000_msg_1.json") is None  # one POST at a time
