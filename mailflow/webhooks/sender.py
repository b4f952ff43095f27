"""POSTing one kept event to its endpoint, signed as Standard Webhooks sign (PRODUCT §8).

Headers ``webhook-id`` (the same on every retry: a receiver drops duplicates by it),
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` keyed with the secret's bytes.  A 2xx accepts the event; anything
else, a timeout or a refused connection is retried on mailflow/queue/events.py's
schedule.  No redirect is followed.

A receiver that is slow or hung must never slow delivery, which shares the worker's
threads: at most ``INFLIGHT_MAX`` POSTs run at once in a process, and an event that
finds them all busy is put back for a few seconds rather than wait for a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mailflow.application import app
from mailflow.config.loader import Config
from mailflow.config.webhooks import Endpoint
from mailflow.errors import NothingToDo
from mailflow.queue import events

log = logging.getLogger(__name__)

#: At most this many POSTs at once in a process, and never more than a quarter of its threads.
INFLIGHT_MAX = 4
BUSY_WAIT = 2.0
_slots: list[threading.BoundedSemaphore] = []
_slots_lock = threading.Lock()


def slots() -> threading.BoundedSemaphore:
    with _slots_lock:
        if not _slots:
            threads = int(app.conf.worker_concurrency or 1)
            _slots.append(threading.BoundedSemaphore(max(1, min(INFLIGHT_MAX, threads // 4))))
        return _slots[0]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def signature(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def post(endpoint: Endpoint, record: dict[str, Any], cfg: Config) -> str | None:
    """None when the endpoint accepted the event, else why not."""
    body = json.dumps(record["body"], separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "mailflow",
               "webhook-id": record["id"], "webhook-timestamp": str(timestamp)}
    if endpoint.secret is not None:
        headers["webhook-signature"] = signature(endpoint.secret, record["id"], timestamp, body)
    ca = cfg.tls_outbound.ca or None
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca)), _NoRedirect())
    request = urllib.request.Request(endpoint.url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=endpoint.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None if 200 <= status < 300 else f"HTTP {status}"


def deliver(cfg: Config, name: str, publish: events.Publish | None = None) -> str:
    """POST the event file ``name``; what became of it, for the task's result."""
    root = cfg.queue_path()
    publish = publish or events.publisher(root)
    claimed = events.claim(root, name)
    if claimed is None:
        raise NothingToDo(f"webhook event {name} is gone (accepted, or taken by another task)")
    record = _read(claimed)
    if record is None:
        return "unreadable"
    endpoint = next((e for e in cfg.webhooks if e.name == record.get("endpoint")), None)
    if endpoint is None:
        log.warning("webhook event %s: endpoint [%s] is no longer in webhooks.ini; dropped", name,
                    record.get("endpoint"))
        claimed.unlink(missing_ok=True)
        return "dropped"
    gate = slots()
    if not gate.acquire(blocking=False):
        events.reschedule(root, claimed, record, BUSY_WAIT, publish)
        return "busy"
    try:
        why = post(endpoint, record, cfg)
    finally:
        gate.release()
    if why is None:
        claimed.unlink(missing_ok=True)
        return "accepted"
    attempt = int(record.get("attempt", 0)) + 1
    if attempt > len(events.SCHEDULE):
        log.error("webhook event %s to [%s] given up after %d attempts: %s", record["id"],
                  endpoint.name, attempt, why)
        claimed.unlink(missing_ok=True)
        return "given up"
    wait = events.SCHEDULE[attempt - 1]
    log.info("webhook event %s to [%s] not accepted (%s); attempt %d in %d s", record["id"],
             endpoint.name, why, attempt + 1, wait)
    events.reschedule(root, claimed, {**record, "attempt": attempt}, wait, publish)
    return "retry"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.error("webhook event %s unreadable (%s): set aside", path.name, exc)
        path.rename(path.with_name(f"error.{path.name}"))
        return None
    return record if isinstance(record, dict) else None
