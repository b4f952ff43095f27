"""Several messages queued as one: all of them, or none.

An HTTP request may carry hundreds of messages (one per recipient), and its answer says
they are queued: a request is queued whole or not at all.  Each message is written,
fsync'd, into ``incoming/<request>/`` (never looked at by the queue manager); then the
request's *record* ``requests/<request>.json`` is written durably -- the commit point --
and the messages are renamed into ``pending/``.  At start (:func:`recover`), a request
with a record is finished (its messages moved into ``pending/``), one without is removed:
nothing is left half-queued whatever crashes, and nothing uncommitted is ever delivered.

The record is also what makes a retried request idempotent (mailflow/api/idempotency.py):
its name is derived from the caller's ``Idempotency-Key``, and it holds the first answer.
A request's directory is made with ``mkdir``, so two requests with one record name -- the
same key, in two processes -- cannot both be in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import IO, Any

from mailflow.queue.dirsync import sync_dir
from mailflow.queue.entry import fsync_dir
from mailflow.queue.spool import PENDING, NewEntry, Spool, writer_alive

log = logging.getLogger(__name__)

INCOMING = "incoming"
REQUESTS = "requests"
#: A record's name: it becomes two file names.
NAME = re.compile(r"[A-Za-z0-9_-]{8,80}\Z")
#: The file in a request's directory naming the process writing it.
OWNER = "owner"
#: A request directory without an owner file this old is a writer that died at once (s).
ORPHAN_AFTER = 60.0


class InFlight(Exception):
    """A request with the same record name is being queued now."""


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"not a request name: {name!r}")
    return name


def record_path(spool: Spool, name: str) -> Path:
    return spool.root / REQUESTS / f"{check_name(name)}.json"


def read_record(spool: Spool, name: str) -> dict[str, Any] | None:
    """The committed record of request ``name``, or None (none, or unreadable)."""
    try:
        found = json.loads(record_path(spool, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


class Staged:
    """One request's messages, written but not queued until :meth:`commit`."""

    def __init__(self, spool: Spool, name: str):
        self.spool = spool
        self.name = check_name(name)
        self.directory = spool.root / INCOMING / name
        self.files: list[str] = []

    @classmethod
    def begin(cls, spool: Spool, name: str) -> Staged:
        staged = cls(spool, name)
        (spool.root / INCOMING).mkdir(mode=0o750, exist_ok=True)
        try:
            staged.directory.mkdir(mode=0o750)
        except FileExistsError:
            raise InFlight(name) from None
        (staged.directory / OWNER).write_text(str(os.getpid()))
        return staged

    def write(self, entries: list[NewEntry], data: bytes | IO[bytes]) -> None:
        """One message's entries, durable in the request's directory (not yet queued)."""
        place = f"{INCOMING}/{self.name}"  # the directory is fsync'd once, at the commit
        self.files += [p.name for p in self.spool.write(entries, data, place=place, sync=False)]

    def commit(self, record: dict[str, Any], keep: bool = True) -> None:
        """Write the record (from here on the request is queued, whatever crashes), then
        move every message into ``pending/``; ``keep``: the record stays (an idempotent
        request's first answer), else it goes once the messages are in place."""
        fsync_dir(self.directory)  # every message's rename in it, durable before the record
        path = record_path(self.spool, self.name)
        path.parent.mkdir(mode=0o750, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({**record, "staged": self.name, "time": time.time()}, out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, path)
        fsync_dir(path.parent)
        finish(self.spool, self.directory)
        if not keep:
            path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Nothing of the request is queued: its directory goes."""
        shutil.rmtree(self.directory, ignore_errors=True)


def finish(spool: Spool, directory: Path) -> int:
    """Move a committed request's messages into ``pending/``; how many were moved."""
    pending = spool.root / PENDING
    moved = 0
    for item in sorted(os.listdir(directory)):
        if item == OWNER or item.startswith("."):
            continue
        os.rename(directory / item, pending / item)
        moved += 1
    sync_dir(pending)
    shutil.rmtree(directory, ignore_errors=True)
    return moved


def _owner_alive(directory: Path) -> bool:
    try:
        pid = int((directory / OWNER).read_text())
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            return time.time() - directory.stat().st_mtime < ORPHAN_AFTER
        return False
    return writer_alive(pid)


def recover(spool: Spool) -> tuple[int, int]:
    """Finish every committed request a crash interrupted, remove every uncommitted one.
    Returns (requests finished, requests removed); a request whose writer lives is left."""
    finished = removed = 0
    incoming = spool.root / INCOMING
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(incoming):
            directory = Path(item.path)
            if not item.is_dir() or not NAME.match(item.name) or _owner_alive(directory):
                continue
            if read_record(spool, item.name) is not None:
                moved = finish(spool, directory)
                finished += 1
                log.info("queued request %s finished after a crash: %d entries", item.name, moved)
            else:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
                log.info("request %s was never answered: nothing of it is queued", item.name)
    return finished, removed


def expire(spool: Spool, older_than: float) -> int:
    """Remove the records older than ``older_than`` seconds (their requests are long queued)."""
    gone = 0
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(spool.root / REQUESTS):
            with contextlib.suppress(OSError):
                if now - item.stat().st_mtime > older_than:
                    os.unlink(item.path)
                    gone += 1
    return gone
