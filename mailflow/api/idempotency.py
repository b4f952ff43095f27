"""``Idempotency-Key``: a request sent again -- a client that timed out waiting for its
answer -- queues nothing new and gets the first answer again, for 24 hours.

The first answer is kept in the request's commit record (mailflow/queue/staging.py),
written in the same step that queues the messages: there is no moment at which a request
is queued and its answer unknown, or known and its messages not queued.  The record's name
is a hash of the API key's name and the client's Idempotency-Key, so keys of two clients
never meet; the request's body is hashed too, and the same key with another body is a
client error (422), never a silent replay.
"""

from __future__ import annotations

import hashlib
import secrets

#: How long a first answer is kept (s).
KEEP = 24 * 3600.0
#: An Idempotency-Key longer than this is refused (it is the client's identifier, not data).
MAX_KEY = 255


def record_name(key_name: str, idempotency_key: str | None) -> str:
    """The commit record's name: the key's for an idempotent request, else a fresh one."""
    if idempotency_key is None:
        return "n-" + secrets.token_hex(16)
    digest = hashlib.sha256(f"{key_name}\0{idempotency_key}".encode("utf-8", "surrogateescape"))
    return "i-" + digest.hexdigest()[:40]


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_KEY or not value.isprintable():
        raise ValueError(f"must be 1 to {MAX_KEY} printable characters")
    return value
