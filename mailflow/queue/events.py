"""Delivery events for webhooks, kept in the queue directory before anyone is told (PRODUCT §8).

An event for an endpoint is one file in ``<queue>/.webhooks/``, named by when it is
next due: ``<due ms>_<event id>.json``, written (temp file, rename) in the same step
that gives the entry its outcome.  Nothing is published per event: Celery costs a
millisecond of CPU per task, as much as a delivery.  Instead, once a second, one
worker of the owner's host (:func:`dispatch`) claims the due events into a batch
directory, ``inflight/<batch>/``, and publishes one ``mailflow.webhook`` task for the
batch (mailflow/webhooks/sender.py POSTs them one after another).  An event that is
not accepted goes back, due later; a batch whose task was lost comes back after
``INFLIGHT_STALE``.  At most ``BATCHES_MAX`` batches are out at once, so a receiver
that hangs holds at most that many worker threads.  Writing an event never fails a
delivery: a problem is logged and the mail goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailflow.application import app
from mailflow.atomic import one_at_a_time, replace_text
from mailflow.config.loader import Config
from mailflow.payloads import WEBHOOK
from mailflow.queue.identity import identity, owner_queue
from mailflow.queue.todo import ToDo

log = logging.getLogger(__name__)

DIRECTORY = ".webhooks"
INFLIGHT = "inflight"
#: The waits after the 1st, 2nd, … failed POST: the first within 10 s, about 31 h in all.
SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 57600)
#: Events in one batch (one task), and batches out at once per host.
BATCH_MAX = 200
BATCHES_MAX = 2
#: A batch claimed longer ago than this by a task that never finished is due again.
INFLIGHT_STALE = 300.0

#: Publish ``mailflow.webhook`` for a claimed batch.
Publish = Callable[[str], None]


def directory(queue_root: Path) -> Path:
    return queue_root / DIRECTORY


def due_ms(name: str) -> int:
    try:
        return int(name.split("_", 1)[0])
    except ValueError:
        return 0


def _write(path: Path, record: dict[str, Any]) -> None:
    replace_text(path, json.dumps(record, separators=(",", ":")))


def publisher(queue_root: Path) -> Publish:
    """``mailflow.webhook`` on the owner's queue: only this host has the event files."""
    queue = owner_queue(identity(queue_root))

    def publish(batch: str) -> None:
        app.send_task(WEBHOOK, args=[batch], queue=queue)
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


def emit(cfg: Config, event: str, data: dict[str, Any]) -> None:
    """Keep the event for each endpoint that wants it; the dispatch sends it within a second."""
    endpoints = [e for e in cfg.webhooks if event in e.events]
    if not endpoints:
        return
    body = {"type": f"message.{event}",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": data}
    where = directory(cfg.queue_path())
    now = int(time.time() * 1000)
    for endpoint in endpoints:
        event_id = f"msg_{uuid.uuid4().hex}"
        try:
            _write(where / f"{now}_{event_id}.json",
                   {"id": event_id, "endpoint": endpoint.name, "attempt": 0, "body": body})
        except OSError as exc:
            log.error("webhook event %s for %s not kept: %s", event, endpoint.name, exc)


def put_back(queue_root: Path, claimed: Path, record: dict[str, Any], wait: float) -> None:
    """An event of a batch back among the waiting ones, due in ``wait`` seconds."""
    due = int((time.time() + wait) * 1000)
    _write(directory(queue_root) / f"{due}_{record['id']}.json", record)
    claimed.unlink(missing_ok=True)


def batch_dir(queue_root: Path, batch: str) -> Path:
    return directory(queue_root) / INFLIGHT / batch


def dispatch(queue_root: Path, publish: Publish | None = None, now_ms: int | None = None) -> int:
    """Claim due events into batches and publish a task for each, by one process of the host
    at a time; the number of events sent on their way."""
    where = directory(queue_root)
    if not where.is_dir():
        return 0
    with one_at_a_time(where / ".dispatch") as mine:
        if not mine:
            return 0
        return _dispatch(queue_root, publish or publisher(queue_root),
                         int(time.time() * 1000) if now_ms is None else now_ms)


def _dispatch(queue_root: Path, publish: Publish, now_ms: int) -> int:
    where = directory(queue_root)
    inflight = where / INFLIGHT
    inflight.mkdir(exist_ok=True)
    batches = []
    for batch in inflight.iterdir():
        if batch.stat().st_mtime < now_ms / 1000 - INFLIGHT_STALE:  # its task was lost
            for path in batch.iterdir():
                os.rename(path, where / path.name)
            shutil.rmtree(batch, ignore_errors=True)
        else:
            batches.append(batch)
    room = BATCHES_MAX - len(batches)
    due = sorted(n for n in os.listdir(where) if n.endswith(".json") and not n.startswith(".")
                 and due_ms(n) <= now_ms)
    sent = 0
    while due and room > 0:
        chunk, due = due[:BATCH_MAX], due[BATCH_MAX:]
        name = uuid.uuid4().hex
        batch = inflight / name
        batch.mkdir()
        for event in chunk:
            try:
                os.rename(where / event, batch / event)
            except FileNotFoundError:
                continue
        try:
            publish(name)
        except Exception as exc:  # given back: the next dispatch tries again
            log.warning("webhook batch not published (%s); its events wait for the next try", exc)
            for path in batch.iterdir():
                os.rename(path, where / path.name)
            batch.rmdir()
            return sent
        sent += len(chunk)
        room -= 1
    return sent


def backlog(queue_root: Path) -> int:
    """Events not yet accepted by their endpoint (waiting, or in a batch being POSTed)."""
    where = directory(queue_root)
    count = 0
    folders = [where]
    try:
        folders += [p for p in (where / INFLIGHT).iterdir() if p.is_dir()]
    except FileNotFoundError:
        pass
    for folder in folders:
        try:
            count += sum(1 for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            pass
    return count
