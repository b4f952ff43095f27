"""Warm-up: a new source address sends at most N1 messages on its first UTC day of use, N2
on its second, ... (egress.ini ``warmup = N1, N2, …``), as mailbox providers expect of an
address they do not know yet; past the list, no cap.

A message counts when the receiver accepts it: one it deferred, refused or never saw (a
broken connection) gives its place back, so retries of a deferred message do not eat the
day's allowance.  Counted on the host that has the address (a source address is one host's), in
``<state>/warmup/<source>.json`` -- the day of first use, today's date and today's count --
under a file lock, so that every worker process of the host counts into one figure.  Mail
over a source's cap goes to the pool's other sources; when none has room it waits in
``pending/`` until the next UTC day, held, never counted as a failure.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailflow.config.egress import Source
from mailflow.config.state import state_dir

DIRECTORY = "warmup"


@dataclass(frozen=True)
class Allowance:
    day: int  #: the source's day of use, 1 for the first (0: never used yet)
    left: int | None  #: messages it may still send today (None: no cap)


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def seconds_to_tomorrow(now: datetime.datetime | None = None) -> float:
    now = now or datetime.datetime.now(datetime.UTC)
    tomorrow = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(),
                                         tzinfo=datetime.UTC)
    return max(1.0, (tomorrow - now).total_seconds())


def _path(source: Source) -> Path:
    return state_dir() / DIRECTORY / f"{source.name}.json"


@contextmanager
def _locked(source: Source) -> Iterator[dict[str, object]]:
    """The source's record, read and written back under an exclusive lock."""
    path = _path(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 4096)
        try:
            record = json.loads(raw) if raw else {}
        except ValueError:
            record = {}
        before = dict(record)
        yield record
        if record != before:
            data = json.dumps(record).encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
    finally:
        os.close(fd)


def _allowance(source: Source, record: dict[str, object], on: datetime.date) -> Allowance:
    first = record.get("first")
    if not isinstance(first, str):
        return Allowance(0, source.warmup[0] if source.warmup else None)
    day = (on - datetime.date.fromisoformat(first)).days + 1
    if day > len(source.warmup):
        return Allowance(day, None)
    sent = int(record.get("count", 0)) if record.get("date") == on.isoformat() else 0  # type: ignore[call-overload]
    return Allowance(day, max(0, source.warmup[day - 1] - sent))


def allowance(source: Source, on: datetime.date | None = None) -> Allowance:
    """The source's day of use and what it may still send today."""
    if not source.warmup:
        return Allowance(0, None)
    with _locked(source) as record:
        return _allowance(source, record, on or today())


def has_room(source: Source) -> bool:
    left = allowance(source).left
    return left is None or left > 0


def take(source: Source, on: datetime.date | None = None) -> bool:
    """Count one message for the source if today's cap allows it (True), else False."""
    if not source.warmup:
        return True
    on = on or today()
    with _locked(source) as record:
        left = _allowance(source, record, on).left
        if left is not None and left <= 0:
            return False
        if not isinstance(record.get("first"), str):
            record["first"] = on.isoformat()
        if record.get("date") != on.isoformat():
            record["date"], record["count"] = on.isoformat(), 0
        record["count"] = int(record.get("count", 0)) + 1  # type: ignore[call-overload]
        return True


def give_back(source: Source, on: datetime.date) -> None:
    """Uncount a message taken on ``on`` that the receiver did not accept (nothing once
    that day is over: its count no longer matters)."""
    if not source.warmup:
        return
    with _locked(source) as record:
        count = record.get("count", 0)
        if record.get("date") == on.isoformat() and isinstance(count, int) and count > 0:
            record["count"] = count - 1
