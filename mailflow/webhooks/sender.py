"""POSTing a batch of kept events to their endpoints, signed as Standard Webhooks sign.

Headers ``webhook-id`` (the same on every retry: a receiver drops duplicates by it),
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` keyed with the secret's bytes.  A 2xx accepts an event; another
status puts it back on mailflow/queue/events.py's schedule.  No redirect is followed.
The events of a batch go one after another over one kept-alive connection per
endpoint (mailflow/relay/http.py: the host resolved through the configured nameservers,
``timeout`` a deadline for the whole exchange, the answer bounded); an endpoint that
does not answer (a timeout, a refused connection) is not tried again in this batch: its
other events wait for the next attempt unchanged.

An endpoint with ``batch = N`` (N > 1) takes up to N events per POST, a JSON array of
them, each with its own ``id``: the webhook-id is made of theirs, and a receiver drops
duplicates by each event's id (a retried event may come back in another array).  For a
high volume this costs one request per N events instead of one per event.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mailflow.config.loader import Config
from mailflow.config.webhooks import Endpoint
from mailflow.errors import NothingToDo
from mailflow.queue import events
from mailflow.relay import http
from mailflow.wire.names import BadName

log = logging.getLogger(__name__)


#: A sender task goes on with the next due batch for this long (s) before it ends.
GO_ON_FOR = 10.0
#: Most bytes of a receiver's answer read (it is not used: only its status counts).
ANSWER_MAX = 64 * 1024


class Unreachable(Exception):
    """The endpoint did not answer: leave its other events for later."""


def signature(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def payload(group: list[dict[str, Any]], batched: bool) -> tuple[str, bytes]:
    """The webhook-id and body of one POST: the event itself, or (``batch`` > 1) a JSON
    array of the events, each with its own ``id``, under an id made of theirs."""
    if not batched:
        return group[0]["id"], json.dumps(group[0]["body"], separators=(",", ":")).encode()
    ids = [r["id"] for r in group]
    batch_id = "batch_" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:32]
    return batch_id, json.dumps([{"id": r["id"], **r["body"]} for r in group],
                                separators=(",", ":")).encode()


def post(endpoint: Endpoint, event_id: str, body: bytes, client: http.Client) -> str | None:
    """None when the endpoint accepted the POST, else the status it answered; Unreachable
    when it did not answer within its ``timeout`` (a deadline for the whole exchange)."""
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "webhook-id": event_id,
               "webhook-timestamp": str(timestamp)}
    if endpoint.secret is not None:
        headers["webhook-signature"] = signature(endpoint.secret, event_id, timestamp, body)
    try:
        response = client.request(endpoint.url, method="POST", body=body, headers=headers,
                                  timeout=endpoint.timeout, max_size=ANSWER_MAX)
    except http.HttpError as exc:
        raise Unreachable(str(exc)) from None
    return None if 200 <= response.status < 300 else f"HTTP {response.status}"


def deliver(cfg: Config, batch: str) -> dict[str, int]:
    """POST every event of the claimed batch, then of the next due ones for up to
    ``GO_ON_FOR`` seconds (a task per batch would cost a millisecond of CPU per few
    events while a backlog lasts); how many were accepted, retried, left."""
    root = cfg.queue_path()
    try:
        where = events.batch_dir(root, batch)
    except BadName as exc:
        log.error("mailflow.webhook refused a payload that is not a webhook batch's name: %s", exc)
        raise NothingToDo(f"refused: {exc}") from None
    if not where.is_dir():
        raise NothingToDo(f"webhook batch {batch} is gone (done, or taken back)")
    counts: Counter[str] = Counter()
    started = time.monotonic()
    conns = http.Client(cfg.outbound, cfg.tls_outbound, https_only=False)
    try:
        current: str | None = batch
        while current is not None:
            down = _batch(cfg, root, current, conns, counts)
            if down or time.monotonic() - started > GO_ON_FOR:
                break
            current = events.claim_next(root)
    finally:
        conns.close()
    return {k: v for k, v in counts.items() if v}


def _batch(cfg: Config, root: Path, batch: str, conns: http.Client, counts: Counter[str]) -> bool:
    """One claimed batch: POSTed, what was not accepted written back as waiting files
    (one per wait) before the batch is removed -- a crash in between sends some events
    twice, never none.  Whether an endpoint did not answer."""
    where = events.batch_dir(root, batch)
    try:
        paths = sorted(where.iterdir())
    except FileNotFoundError:
        return False
    endpoints = {e.name: e for e in cfg.webhooks}
    down: dict[str, str] = {}
    later: dict[int, list[dict[str, Any]]] = {}
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    touched = time.monotonic()  # the claim set the batch directory's mtime
    for path in paths:
        for record in _read(root, path):
            by_endpoint.setdefault(str(record.get("endpoint")), []).append(record)
    for name, records in by_endpoint.items():
        endpoint = endpoints.get(name)
        if endpoint is None:
            log.warning("webhook events for [%s], no longer in webhooks.ini: %d dropped", name, len(records))
            counts["dropped"] += len(records)
            continue
        for start in range(0, len(records), endpoint.batch):
            for outcome, wait, record in _group(records[start:start + endpoint.batch], endpoint, down, conns):
                counts[outcome] += 1
                if wait is not None:
                    later.setdefault(wait, []).append(record)
            if time.monotonic() - touched >= 1.0:  # alive: not taken back as a lost batch
                touched = time.monotonic()
                with contextlib.suppress(FileNotFoundError):
                    os.utime(where)
    now = time.time()
    for wait, records in sorted(later.items()):
        events.put_waiting(root, records, int((now + wait) * 1000))
    shutil.rmtree(where, ignore_errors=True)
    return bool(down)


def _group(group: list[dict[str, Any]], endpoint: Endpoint, down: dict[str, str],
           conns: http.Client) -> list[tuple[str, int | None, dict[str, Any]]]:
    """What became of the events of one POST, each with the wait before its next attempt
    (None: none)."""
    if endpoint.name in down:  # not tried: the same wait, no attempt counted
        return [("waiting", events.SCHEDULE[max(0, int(r.get("attempt", 0)) - 1)], r) for r in group]
    event_id, body = payload(group, endpoint.batch > 1)
    try:
        why = post(endpoint, event_id, body, conns)
    except Unreachable as exc:
        down[endpoint.name] = str(exc)
        why = str(exc)
    if why is None:
        return [("accepted", None, r) for r in group]
    out: list[tuple[str, int | None, dict[str, Any]]] = []
    for record in group:
        attempt = int(record.get("attempt", 0)) + 1
        if attempt > len(events.SCHEDULE):
            log.error("webhook event %s to [%s] given up after %d attempts: %s", record["id"],
                      endpoint.name, attempt, why)
            out.append(("dropped", None, record))
            continue
        out.append(("retry", events.SCHEDULE[attempt - 1], {**record, "attempt": attempt}))
    log.info("webhook %s to [%s] not accepted (%s); %d event(s) due again", event_id, endpoint.name,
             why, len(group))
    return out


def _read(root: Path, path: Path) -> list[dict[str, Any]]:
    try:
        return events.parse(path.read_bytes(), path.name)
    except FileNotFoundError:  # taken back meanwhile as a lost batch: it will be sent again
        return []
    except OSError as exc:
        log.error("webhook events %s unreadable (%s): set aside", path.name, exc)
        path.rename(events.directory(root) / f"error.{path.name}")
        return []
