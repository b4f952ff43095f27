"""Deferrals that come back as Celery countdown retries, with the queue directory still the record.

A deferral renames its entry into ``pending/`` with its due time, as it always
did.  The step that deferred then arms a countdown for it: the entries of one
execution deferred with the same wait share one retry, so waiting retries grow
with batches, not messages.  Arming writes ``armed/<id>`` (the entries' names and
until when the countdown owns them) *before* the retry is published; the queue
manager leaves those entries alone until their due time plus ``countdown_grace``,
then claims them itself -- a countdown the broker lost (the embedded broker, a
Redis flushed, a worker killed holding it) costs at most the grace.  When the
countdown fires it claims exactly those names: an entry flushed, deleted, claimed
or delivered meanwhile has another name or none, so a late or second firing
claims nothing and ends IGNORED (docs/architecture.md, "Failures, bounces, flush").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailflow.config import environ
from mailflow.config.settings import Outbound
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import Spool, now_ms
from mailflow.wire.payloads import Batch

log = logging.getLogger(__name__)

ARMED = "armed"
#: RabbitMQ closes the channel of a consumer that holds a message past consumer_timeout
#: (30 min by default); a countdown is such a message.
RABBITMQ_COUNTDOWN_MAX = 900
#: Redis redelivers an unacknowledged message after visibility_timeout (1 h by default).
REDIS_VISIBILITY_DEFAULT = 3600
EMBEDDED_COUNTDOWN_MAX = 1800


@dataclass(frozen=True)
class Deferral:
    name: EntryName  #: its name in pending/ after the deferral
    delay: float
    reason: str


_local = threading.local()


@contextlib.contextmanager
def collecting() -> Iterator[list[Deferral]]:
    """Collect the deferrals made while the block runs (by this thread)."""
    outer = getattr(_local, "deferrals", None)
    found: list[Deferral] = []
    _local.deferrals = found
    try:
        yield found
    finally:
        _local.deferrals = outer
        if outer is not None:
            outer.extend(found)


def add(deferrals: list[Deferral]) -> None:
    """Take the deferrals another thread of this task collected (a lane of a batch)."""
    found = getattr(_local, "deferrals", None)
    if found is not None:
        found.extend(deferrals)


def note(name: EntryName, delay: float, reason: str) -> None:
    """An entry was deferred (renamed into pending/ as ``name``), for ``delay`` seconds."""
    found = getattr(_local, "deferrals", None)
    if found is not None:
        found.append(Deferral(name, delay, reason))


def countdown_max(settings: Outbound) -> float:
    """``countdown_max`` of outbound.ini, ``auto`` decided from the broker in use."""
    if settings.countdown_max is not None:
        return float(settings.countdown_max)
    url = environ.broker_url()
    if url.startswith(("amqp", "pyamqp", "rabbitmq")):
        return RABBITMQ_COUNTDOWN_MAX
    if url.startswith(("redis", "rediss")):
        visibility = environ.transport_options().get("visibility_timeout", REDIS_VISIBILITY_DEFAULT)
        return float(visibility) / 2
    return EMBEDDED_COUNTDOWN_MAX


def groups(deferrals: list[Deferral], limit: float) -> list[list[Deferral]]:
    """Deferrals that share one retry: the same wait (to the second), at most ``limit``."""
    by_wait: dict[int, list[Deferral]] = {}
    for deferral in deferrals:
        if 0 < deferral.delay <= limit:
            by_wait.setdefault(round(deferral.delay), []).append(deferral)
    return [by_wait[wait] for wait in sorted(by_wait)]


def _dir(spool: Spool) -> Path:
    return Path(spool.root) / ARMED


def arm(spool: Spool, group: list[Deferral], grace: float) -> str:
    """Write that a countdown owns these entries until their due time plus ``grace``."""
    ident = uuid.uuid4().hex
    until = max(d.name.next_attempt_ms for d in group) + int(grace * 1000)
    directory = _dir(spool)
    directory.mkdir(exist_ok=True)
    tmp = directory / f".{ident}.tmp"
    tmp.write_text(json.dumps({"until": until, "names": [str(d.name) for d in group]}))
    os.replace(tmp, directory / ident)
    return ident


def disarm(spool: Spool, ident: str) -> None:
    if ident.isalnum():
        (_dir(spool) / ident).unlink(missing_ok=True)


class Armed:
    """The names whose countdown is armed, read again only when ``armed/`` changed."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self._mtime: int | None = None
        self._until: dict[str, int] = {}
        self._files: dict[str, int] = {}

    def until(self, now: int) -> dict[str, int]:
        """Entry name -> until when its countdown owns it; expired files are removed."""
        directory = _dir(self.spool)
        if any(until < now for until in self._files.values()):
            for ident in [i for i, until in self._files.items() if until < now]:
                disarm(self.spool, ident)
        try:
            mtime = os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._until, self._files = None, {}, {}
            return self._until
        if mtime != self._mtime:
            self._mtime = mtime
            self._until, self._files = _read(directory)
        return self._until


def _read(directory: Path) -> tuple[dict[str, int], dict[str, int]]:
    until: dict[str, int] = {}
    files: dict[str, int] = {}
    for entry in os.scandir(directory):
        if entry.name.startswith("."):
            continue
        try:
            data = json.loads(Path(entry.path).read_text())
            files[entry.name] = int(data["until"])
            for name in data["names"]:
                until[str(name)] = max(until.get(str(name), 0), int(data["until"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable countdown file %s", entry.path)
    return until, files


def armed_names(spool: Spool) -> set[str]:
    """Names of pending entries with a countdown armed (for ``mailflow queue list``)."""
    now = now_ms()
    return {n for n, until in Armed(spool).until(now).items() if until >= now}


def fire(spool: Spool, owner: str, domain: str, names: list[str], ident: str) -> Batch | None:
    """The countdown fired: claim exactly these names (those still waiting under them)."""
    parsed = [p for p in (EntryName.parse(n) for n in names) if p is not None and p.domain == domain]
    claim, got = spool.claim(parsed)
    disarm(spool, ident)
    if not got:
        return None
    return Batch(owner, claim, tuple(got), domain)
