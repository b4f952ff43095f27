"""Delivery events for webhooks, kept in the queue directory before anyone is told (PRODUCT §8).

An event for an endpoint is one file in ``<queue>/.webhooks/``, named by when it is
next due: ``<due ms>_<event id>.json``.  It is written (temp file, rename) in the
same step that gives the entry its outcome, then ``mailflow.webhook`` is published on
the owner's queue to POST it (mailflow/webhooks/sender.py).  A publish that the
broker lost, or a wait too long for a countdown, is picked up by the sweep
(:func:`overdue`) a minute after it was due: the file is the record, as an entry
is.  Writing an event never fails a delivery: a problem is logged and the mail
goes on.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailflow.application import app
from mailflow.config.loader import Config
from mailflow.payloads import WEBHOOK
from mailflow.queue.identity import identity, owner_queue
from mailflow.queue.todo import ToDo

log = logging.getLogger(__name__)

DIRECTORY = ".webhooks"
INFLIGHT = "inflight"
#: The waits after the 1st, 2nd, … failed POST: the first within 10 s, about 31 h in all.
SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 57600)
#: Waits up to this long are Celery countdowns; longer ones are left to the sweep.
COUNTDOWN_MAX = 300
#: The sweep publishes an event this long after it was due (its countdown was lost).
GRACE_MS = 60_000
#: An event claimed longer ago than this by a POST that never finished is due again.
INFLIGHT_STALE = 300.0

#: Publish ``mailflow.webhook`` for an event file, after ``countdown`` seconds.
Publish = Callable[[str, float], None]


def directory(queue_root: Path) -> Path:
    return queue_root / DIRECTORY


def due_ms(name: str) -> int:
    try:
        return int(name.split("_", 1)[0])
    except ValueError:
        return 0


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(record, separators=(",", ":")))
    os.replace(tmp, path)


def publisher(queue_root: Path) -> Publish:
    """``mailflow.webhook`` on the owner's queue: only this host has the event files."""
    queue = owner_queue(identity(queue_root))

    def publish(name: str, countdown: float) -> None:
        app.send_task(WEBHOOK, args=[name], queue=queue, countdown=countdown or None)
    return publish


def message_event(cfg: Config, event: str, todo: ToDo, rcpts: list[str], *, status: str = "",
                  response: str = "", host: str = "-", ip: str = "-", tls_level: str = "none",
                  num_failures: int = 0) -> None:
    """One entry's event (PRODUCT §8 fields); nothing at all when no endpoint wants it, and
    never an exception into the delivery that caused it."""
    if not any(event in e.events for e in cfg.webhooks):
        return
    try:
        emit(cfg, event, {"id": todo.uuid, "domain": todo.domain, "mail_from": todo.mail_from.address,
                          "rcpt_to": rcpts, "status": status, "response": response, "host": host,
                          "ip": ip, "tls_level": tls_level, "num_failures": num_failures})
    except Exception:
        log.exception("webhook event %s for %s not kept", event, todo.uuid)


def emit(cfg: Config, event: str, data: dict[str, Any], publish: Publish | None = None) -> None:
    """Keep the event for each endpoint that wants it, then have it POSTed."""
    endpoints = [e for e in cfg.webhooks if event in e.events]
    if not endpoints:
        return
    body = {"type": f"message.{event}",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": data}
    where = directory(cfg.queue_path())
    publish = publish or publisher(cfg.queue_path())
    now = int(time.time() * 1000)
    for endpoint in endpoints:
        event_id = f"msg_{uuid.uuid4().hex}"
        name = f"{now}_{event_id}.json"
        try:
            where.mkdir(exist_ok=True)
            _write(where / name, {"id": event_id, "endpoint": endpoint.name, "attempt": 0, "body": body})
        except OSError as exc:
            log.error("webhook event %s for %s not kept: %s", event, endpoint.name, exc)
            continue
        try:
            publish(name, 0)
        except Exception as exc:  # the sweep publishes it in a minute
            log.warning("webhook event %s not published now (%s); the sweep will", name, exc)


def reschedule(queue_root: Path, claimed: Path, record: dict[str, Any], wait: float,
               publish: Publish) -> None:
    """Put a claimed event back, due in ``wait`` seconds (a countdown when that is short)."""
    due = int((time.time() + wait) * 1000)
    name = f"{due}_{record['id']}.json"
    _write(directory(queue_root) / name, record)
    claimed.unlink(missing_ok=True)
    if wait <= COUNTDOWN_MAX:
        try:
            publish(name, wait)
        except Exception as exc:
            log.warning("webhook event %s not published now (%s); the sweep will", name, exc)


def claim(queue_root: Path, name: str) -> Path | None:
    """Take the event for one POST (None: another task has it, or it is done)."""
    where = directory(queue_root)
    target = where / INFLIGHT / name
    try:
        target.parent.mkdir(exist_ok=True)
        os.rename(where / name, target)
    except FileNotFoundError:
        return None
    os.utime(target)
    return target


def overdue(queue_root: Path, now_ms: int | None = None) -> list[str]:
    """Events due more than GRACE_MS ago (their publish lost, or too long for a countdown),
    after putting back any claimed too long ago by a POST that never finished."""
    where = directory(queue_root)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        stale = [p for p in (where / INFLIGHT).iterdir()
                 if p.stat().st_mtime < now_ms / 1000 - INFLIGHT_STALE]
    except FileNotFoundError:
        stale = []
    for path in stale:
        try:
            os.rename(path, where / path.name)
        except FileNotFoundError:
            pass
    try:
        names = [n for n in os.listdir(where) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if due_ms(n) < now_ms - GRACE_MS)


def backlog(queue_root: Path) -> int:
    """Events not yet accepted by their endpoint (waiting or being POSTed)."""
    where = directory(queue_root)
    count = 0
    for folder in (where, where / INFLIGHT):
        try:
            count += sum(1 for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            pass
    return count


def sweep(queue_root: Path, publish: Publish | None = None) -> int:
    """Publish every overdue event, by one process of the host at a time; how many."""
    where = directory(queue_root)
    if not where.is_dir():
        return 0
    fd = os.open(where / ".sweep", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        names = overdue(queue_root)
        publish = publish or publisher(queue_root)
        for name in names:
            publish(name, 0)
        if names:
            log.info("webhook events: %d overdue published again", len(names))
        return len(names)
    finally:
        os.close(fd)
