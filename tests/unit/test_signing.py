"""The MAC every published message carries (mailflow/wire/signing.py, issue 23 item 1)."""

from __future__ import annotations

import pytest

from mailflow.runtime.authentic import body_bytes
from mailflow.wire import signing

KEY = b"k" * 32
HEADERS = {"task": "mailflow.record_outcomes", "id": "1", "eta": None, "expires": None, "retries": 0,
           "argsrepr": "[...]", "kwargsrepr": "{}", "shadow": None}
BODY = body_bytes([[{"claim": "0" * 32}], {}, {"callbacks": None}], "json")


def signed(**changes: object) -> dict:
    headers = {**HEADERS, **changes}
    return {**headers, signing.HEADER: signing.task_mac(KEY, headers, "mailflow.owner.x", BODY)}


def test_the_message_as_published_is_authentic():
    assert signing.task_authentic(KEY, signed(), "mailflow.owner.x", BODY)


@pytest.mark.parametrize("field,value", [("task", "mailflow.bounce"), ("id", "2"), ("retries", 1),
                                         ("eta", "2026-01-01T00:00:00+00:00"),
                                         ("expires", "2030-01-01T00:00:00+00:00"), ("argsrepr", "x")])
def test_any_covered_header_changed_fails(field, value):
    headers = signed()
    headers[field] = value
    assert not signing.task_authentic(KEY, headers, "mailflow.owner.x", BODY)


def test_another_queue_another_body_or_another_key_fails():
    assert not signing.task_authentic(KEY, signed(), "celery", BODY)
    assert not signing.task_authentic(KEY, signed(), "mailflow.owner.x", BODY + b" ")
    assert not signing.task_authentic(b"j" * 32, signed(), "mailflow.owner.x", BODY)
    assert not signing.task_authentic(KEY, HEADERS, "mailflow.owner.x", BODY)  # no MAC at all


def test_a_broadcast_is_refused_when_forged_changed_or_old():
    args = signing.sign_broadcast(KEY, "mailflow_flush", {"domain": None, "owner": None}, now=1000.0)
    assert signing.broadcast_refusal(KEY, "mailflow_flush", args, now=1001.0) is None
    assert signing.broadcast_refusal(KEY, "mailflow_renew", args, now=1001.0)  # another command
    assert signing.broadcast_refusal(KEY, "mailflow_flush", {**args, "domain": "x"}, now=1001.0)
    assert signing.broadcast_refusal(b"j" * 32, "mailflow_flush", args, now=1001.0)
    assert "ago" in signing.broadcast_refusal(KEY, "mailflow_flush", args, now=1000.0 + 3600)
    assert signing.broadcast_refusal(KEY, "mailflow_flush", {"domain": None, "owner": None}) == "no MAC"
