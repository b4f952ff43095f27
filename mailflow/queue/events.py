"""Delivery events for webhooks, kept in the queue directory before anyone is told.

An event is one JSON line appended, in the same step that gives the entry its outcome,
to this process's *journal* segment ``<queue>/.webhooks/journal/<pid>-<token>.jsonl``:
one ``write`` of a few hundred bytes, where a file per event (create, rename, then
read and unlink) kept the filesystem journal busy that every delivery's own rename and
unlink waits on.  Nothing is published per event either: Celery costs a millisecond of
CPU per task, as much as a delivery.

Once a second, one worker of the owner's host (:func:`dispatch`):

1. *drains* the journal: each segment's lines become *waiting* files of at most
   ``BATCH_MAX`` events, ``<due ms>_<count>_<token>.jsonl``, and the segment is unlinked.
   The segment's lock (``flock``) makes the hand-over exact: a writer appends only
   while holding it, and finding its segment unlinked starts another;
2. *claims* the due waiting files into batch directories, ``inflight/<batch>/``, at
   most ``BATCHES_MAX`` out at once (so a receiver that hangs holds at most that many
   worker threads), and publishes one ``mailflow.webhook`` task per batch.

The sender (mailflow/webhooks/sender.py) gives back what was not accepted as a new
waiting file, due later; a batch whose task was lost comes back after
``INFLIGHT_STALE`` without a sign of life.  Every step can be repeated after a crash: at
worst an event is POSTed twice with the same id, which receivers drop.  Writing an event
never fails a delivery: a problem is logged and the mail goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailflow.config import environ
from mailflow.config.loader import Config
from mailflow.config.tenants import labels
from mailflow.queue.identity import identity, owner_queue
from mailflow.queue.todo import ToDo
from mailflow.runtime.application import app
from mailflow.util.atomic import one_at_a_time, replace_text
from mailflow.wire.names import check_webhook_batch
from mailflow.wire.payloads import WEBHOOK

log = logging.getLogger(__name__)

DIRECTORY = ".webhooks"
JOURNAL = "journal"
INFLIGHT = "inflight"
SUFFIX = ".jsonl"
#: The waits after the 1st, 2nd, … failed POST: the first within 10 s, about 31 h in all.
SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 57600)
#: Events in one batch (one task), and batches out at once per host.
BATCH_MAX = 200
BATCHES_MAX = 2
#: A batch whose task showed no sign of life this long (its directory's mtime) is due again
#: (``MAILFLOW_WEBHOOK_STALE_SECONDS``: the tests' kill -9 does not wait five minutes).
INFLIGHT_STALE: float = environ.value("MAILFLOW_WEBHOOK_STALE_SECONDS")
#: An empty journal segment left this long by its process is removed (the writer, if alive,
#: starts another at its next event).
EMPTY_STALE = 60.0

#: Publish ``mailflow.webhook`` for a claimed batch.
Publish = Callable[[str], None]
Record = dict[str, Any]


def directory(queue_root: Path) -> Path:
    return queue_root / DIRECTORY


def batch_dir(queue_root: Path, batch: str) -> Path:
    """A claimed batch's directory; BadName for anything but a batch name (from a task)."""
    return directory(queue_root) / INFLIGHT / check_webhook_batch(batch)


def due_ms(name: str) -> int:
    try:
        return int(name.split("_", 1)[0])
    except ValueError:
        return 0


def count_of(name: str) -> int:
    """The number of events a waiting file holds, from its name (no need to read it)."""
    try:
        return int(name.split("_", 2)[1])
    except (IndexError, ValueError):
        return 0


def _waiting(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".") and name.count("_") >= 2


def line(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def parse(data: bytes, where: str) -> list[Record]:
    """The records of a journal segment or waiting file; a broken line is logged and skipped."""
    out = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict) and "id" in record and "endpoint" in record:
            out.append(record)
        else:
            log.error("webhook event in %s unreadable, skipped: %.200r", where, raw)
    return out


def put_waiting(queue_root: Path, records: list[Record], due: int) -> None:
    """Records due at ``due`` (ms), as waiting files of at most ``BATCH_MAX`` each."""
    _put_lines(queue_root, [line(r) for r in records], due)


def _put_lines(queue_root: Path, lines: list[bytes], due: int) -> None:
    for start in range(0, len(lines), BATCH_MAX):
        chunk = lines[start:start + BATCH_MAX]
        name = f"{due}_{len(chunk)}_{uuid.uuid4().hex}{SUFFIX}"
        replace_text(directory(queue_root) / name, b"".join(chunk).decode())


class Journal:
    """This process's segment: appended by its threads, taken whole by the dispatcher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._where: Path | None = None

    def append(self, queue_root: Path, data: bytes) -> None:
        where = directory(queue_root) / JOURNAL
        with self._lock:
            if self._pid != os.getpid() or self._where != where:  # forked, or another queue
                self._close()
            while True:
                fd = self._fd if self._fd is not None else self._open(where)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    info = os.fstat(fd)
                    if info.st_nlink:  # still ours: the dispatcher has not taken it
                        if os.write(fd, data) != len(data):  # a full disk: no half line left
                            os.ftruncate(fd, info.st_size)
                            raise OSError(errno.ENOSPC, "short write to the webhook journal")
                        return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._close()

    def _open(self, where: Path) -> int:
        path = where / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o640)
        except FileNotFoundError:
            where.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o640)
        self._fd, self._pid, self._where = fd, os.getpid(), where
        return fd

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


JOURNAL_OF_THIS_PROCESS = Journal()


def publisher(queue_root: Path) -> Publish:
    """``mailflow.webhook`` on the owner's queue: only this host has the event files."""
    queue = owner_queue(identity(queue_root))

    def publish(batch: str) -> None:
        app.send_task(WEBHOOK, args=[batch], queue=queue)
    return publish


def message_event(cfg: Config, event: str, todo: ToDo, rcpts: list[str], *, status: str = "",
                  response: str = "", host: str = "-", ip: str = "-", tls_level: str = "none",
                  num_failures: int = 0, source: str | None = None,
                  bounce_class: str | None = None) -> None:
    """One entry's event; nothing at all when no endpoint wants it, and
    never an exception into the delivery that caused it."""
    if not any(event in e.events for e in cfg.webhooks):
        return
    try:
        emit(cfg, event, {"id": todo.uuid, "domain": todo.domain, "mail_from": todo.mail_from.address,
                          "rcpt_to": rcpts, "status": status, "response": response, "host": host,
                          "ip": ip, "tls_level": tls_level, "num_failures": num_failures,
                          **({"source": source} if source else {}),
                          **({"bounce_class": bounce_class} if bounce_class else {}), **labels(todo.notes)})
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
    lines = b"".join(line({"id": f"msg_{uuid.uuid4().hex}", "endpoint": e.name, "attempt": 0,
                           "body": body}) for e in endpoints)
    try:
        JOURNAL_OF_THIS_PROCESS.append(cfg.queue_path(), lines)
    except OSError as exc:
        log.error("webhook event %s for %s not kept: %s", event,
                  ", ".join(e.name for e in endpoints), exc)


def dispatch(queue_root: Path, publish: Publish | None = None, now_ms: int | None = None,
             batches: int = BATCHES_MAX) -> int:
    """Drain the journal, claim due events into (at most ``batches``) batches and publish a
    task for each, by one process of the host at a time; the number of events sent on
    their way."""
    where = directory(queue_root)
    if not where.is_dir():
        return 0
    with one_at_a_time(where / ".dispatch") as mine:
        if not mine:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        drain(queue_root, now)
        return _claim(queue_root, publish or publisher(queue_root), now, batches)


def claim_next(queue_root: Path) -> str | None:
    """A batch of due events for a sender that has just finished one, to go on with in the
    same task (no task per batch while a backlog lasts); None when nothing is due."""
    claimed: list[str] = []
    dispatch(queue_root, claimed.append, batches=1)
    return claimed[0] if claimed else None


def _segments(queue_root: Path) -> Iterator[Path]:
    try:
        names = os.listdir(directory(queue_root) / JOURNAL)
    except FileNotFoundError:
        return
    for name in sorted(names):
        if name.endswith(SUFFIX) and not name.startswith("."):
            yield directory(queue_root) / JOURNAL / name


def drain(queue_root: Path, now_ms: int) -> int:
    """Every journal segment's events become waiting files due now; the number of events."""
    moved = 0
    for path in _segments(queue_root):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holds it for one write at most
            info = os.fstat(fd)
            if not info.st_nlink:
                continue
            if not info.st_size:
                if info.st_mtime < now_ms / 1000 - EMPTY_STALE:
                    path.unlink(missing_ok=True)
                continue
            chunk: list[bytes] = []
            with os.fdopen(os.dup(fd), "rb") as f:
                for raw in f:  # a line at a time: a segment left for long may be large
                    if not raw.endswith(b"\n"):  # a write cut short by a crash
                        log.error("webhook event in %s cut short, skipped: %.200r", path.name, raw)
                        continue
                    chunk.append(raw)
                    if len(chunk) == BATCH_MAX:
                        _put_lines(queue_root, chunk, now_ms)  # parsed when sent, not here
                        moved, chunk = moved + len(chunk), []
            _put_lines(queue_root, chunk, now_ms)
            moved += len(chunk)
            path.unlink()  # under the lock: the writer sees it gone and starts another
        finally:
            os.close(fd)
    return moved


def _claim(queue_root: Path, publish: Publish, now_ms: int, most: int) -> int:
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
    room = min(most, BATCHES_MAX - len(batches))
    due = deque(sorted(n for n in os.listdir(where) if _waiting(n) and due_ms(n) <= now_ms))
    sent = 0
    while due and room > 0:
        name = uuid.uuid4().hex
        batch = inflight / name
        batch.mkdir()
        taken = 0
        while due and (taken == 0 or taken + count_of(due[0]) <= BATCH_MAX):
            waiting = due.popleft()
            try:
                os.rename(where / waiting, batch / waiting)
            except FileNotFoundError:
                continue
            taken += count_of(waiting)
        try:
            publish(name)
        except Exception as exc:  # given back: the next dispatch tries again
            log.warning("webhook batch not published (%s); its events wait for the next try", exc)
            for path in batch.iterdir():
                os.rename(path, where / path.name)
            batch.rmdir()
            return sent
        sent += taken
        room -= 1
    return sent


def backlog(queue_root: Path) -> int:
    """Events not yet accepted by their endpoint: in the journal, waiting, or in a batch."""
    where = directory(queue_root)
    count = 0
    folders = [where]
    try:
        folders += [p for p in (where / INFLIGHT).iterdir() if p.is_dir()]
    except FileNotFoundError:
        pass
    for folder in folders:
        try:
            count += sum(count_of(n) for n in os.listdir(folder) if _waiting(n))
        except FileNotFoundError:
            pass
    for path in _segments(queue_root):
        try:
            count += path.read_bytes().count(b"\n")
        except FileNotFoundError:
            pass
    return count
