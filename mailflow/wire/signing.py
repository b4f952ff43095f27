"""Every message mailflow publishes carries a MAC; a worker acts on none without a valid one.

The broker is outside the trust boundary: Redis is often shared with web applications
(and reached through their SSRFs), and whoever can write to it could otherwise name a
queue entry in a forged report, or hand a worker a parcel for any MX.  So each task
message carries ``mailflow_mac``: an HMAC-SHA256, under a key derived from
``broker.key``, over the message's serialized body (the bytes the worker receives, so
nothing is serialized twice to check it) and the headers that say what it is: the task
name, its id, when it may run (``eta``) and until when (``expires``), its retry count,
what Flower shows of it, and the routing key it was published with (its queue).

Remote-control broadcasts mailflow acts on (claim renewals, flushes) carry a MAC of
their own over the command and its arguments, with the time they were sent: an old one
replayed is refused, so a recorded renewal cannot keep a dead holder's claims alive.

HMAC rather than Celery's ``security`` serializer: that one signs only the body (the task
name travels in protocol 2's headers, unsigned), needs an X.509 certificate and key on
every host, and costs an RSA signature per publish (docs/architecture.md, "Trust").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

#: The header that carries a task message's MAC.
HEADER = "mailflow_mac"
#: The headers a MAC covers, besides the routing key and the body.
COVERED = ("task", "id", "eta", "expires", "retries", "argsrepr", "kwargsrepr", "shadow")
#: The argument that carries a broadcast's MAC, and the one that says when it was sent.
BROADCAST_MAC = "mac"
BROADCAST_SENT = "sent"
#: A broadcast older (or, by clock skew, younger) than this many seconds is refused.
BROADCAST_FRESH = 60.0


def _text(value: Any) -> Any:
    """A header as both ends see it: a value the JSON of the message carries unchanged."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def task_mac(key: bytes, headers: Mapping[str, Any], routing_key: str | None, body: bytes) -> str:
    """The MAC of one task message."""
    covered = json.dumps([[name, _text(headers.get(name))] for name in COVERED] + [routing_key or ""],
                         separators=(",", ":")).encode()
    mac = hmac.new(key, len(covered).to_bytes(4, "big") + covered, hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def task_authentic(key: bytes, headers: Mapping[str, Any], routing_key: str | None,
                   body: bytes) -> bool:
    given = headers.get(HEADER)
    return isinstance(given, str) and hmac.compare_digest(given, task_mac(key, headers, routing_key, body))


def _broadcast_text(command: str, arguments: Mapping[str, Any]) -> bytes:
    shown = {k: v for k, v in arguments.items() if k != BROADCAST_MAC}
    return json.dumps([command, shown], sort_keys=True, separators=(",", ":")).encode()


def sign_broadcast(key: bytes, command: str, arguments: Mapping[str, Any],
                   now: float | None = None) -> dict[str, Any]:
    """``arguments`` with the time sent and a MAC over them and the command."""
    stamped = {**arguments, BROADCAST_SENT: time.time() if now is None else now}
    mac = hmac.new(key, _broadcast_text(command, stamped), hashlib.sha256).hexdigest()
    return {**stamped, BROADCAST_MAC: mac}


def broadcast_refusal(key: bytes, command: str, arguments: Mapping[str, Any],
                      now: float | None = None) -> str | None:
    """None when the broadcast is mailflow's own and fresh, else why it is refused."""
    given = arguments.get(BROADCAST_MAC)
    if not isinstance(given, str):
        return "no MAC"
    expected = hmac.new(key, _broadcast_text(command, arguments), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given, expected):
        return "a MAC that does not match"
    sent = arguments.get(BROADCAST_SENT)
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        return "no time sent"
    age = (time.time() if now is None else now) - sent
    if abs(age) > BROADCAST_FRESH:
        return f"sent {age:.0f} s ago"
    return None
