"""What was queued, kept a while to find the original of a report that comes back.

A complaint from a feedback loop or a bounce sent days after delivery names its original
by a VERP address (mailflow/queue/verp.py) or only by the Message-ID it quotes; either way
its tenant and campaign, and the recipients, are only here by then -- the queue entry is
long gone.  One JSON line per message goes to ``<queue>/tracking/<UTC day>.jsonl`` as it is
queued (one append, no fsync: the line helps match a report, it is not the message), and
days older than ``KEEP_DAYS`` are removed as a new day begins.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIRECTORY = "tracking"
#: Feedback loops report within days; late bounces within the retry period of the
#: receiving side (five days at most, commonly).
KEEP_DAYS = 30
#: How much of a message's start is looked at for its Message-ID.
HEAD_BYTES = 65536
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]{1,998}>)")


@dataclass(frozen=True)
class Sent:
    """One queued message as the index keeps it."""

    id: str  #: the queue id (``250 Message Queued (<id>)``)
    message_id: str
    mail_from: str
    entries: dict[str, list[str]] = field(default_factory=dict)  #: entry id -> its recipients
    tenant: str | None = None
    campaign: str | None = None

    def recipients(self) -> list[str]:
        return [r for rcpts in self.entries.values() for r in rcpts]


def message_id_of(head: bytes) -> str:
    """The Message-ID in a message's header section (``head``: its first bytes), or ''."""
    end = head.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(head if end < 0 else head[:end])
    return found.group(1).decode("ascii", "replace") if found else ""


class Index:
    """The day files under a queue root: appended to by every process, read by ``ingest``."""

    def __init__(self, root: Path):
        self.directory = root / DIRECTORY
        self._fd: tuple[str, int] | None = None
        self._lock = threading.Lock()

    def add(self, sent: Sent, now: float | None = None) -> None:
        line = json.dumps({"id": sent.id, "message_id": sent.message_id, "mail_from": sent.mail_from,
                           "entries": sent.entries, "tenant": sent.tenant, "campaign": sent.campaign},
                          separators=(",", ":")).encode() + b"\n"
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        with self._lock:
            fd = self._open(day, now)
            os.write(fd, line)  # O_APPEND: one write, whole, at the end, whoever else appends

    def _open(self, day: str, now: float | None) -> int:
        if self._fd is not None and self._fd[0] == day:
            return self._fd[1]
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._fd is not None:
            os.close(self._fd[1])
        fd = os.open(self.directory / f"{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fd = (day, fd)
        self.prune(now)
        return fd

    def prune(self, now: float | None = None) -> None:
        """Remove the days past KEEP_DAYS."""
        oldest = time.strftime("%Y-%m-%d", time.gmtime((now or time.time()) - KEEP_DAYS * 86400))
        for path in self._days():
            if path.stem < oldest:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _days(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.jsonl"), reverse=True)  # the newest first
        except OSError:
            return []

    def _lines(self, needle: bytes) -> Iterator[dict[str, Any]]:
        for path in self._days():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            at = data.rfind(needle)
            while at >= 0:
                start = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at)
                with contextlib.suppress(ValueError):
                    yield json.loads(data[start:end if end >= 0 else len(data)])
                at = data.rfind(needle, 0, start)

    def by_id(self, queue_id: str) -> Sent | None:
        """The message with this queue id (or one of its entries')."""
        txn = queue_id.split(".")[0]
        for row in self._lines(b'"id":' + json.dumps(txn).encode()):
            return _sent(row)
        return None

    def by_message_id(self, message_id: str) -> Sent | None:
        wanted = message_id.strip()
        if not wanted:
            return None
        if not wanted.startswith("<"):
            wanted = f"<{wanted}>"
        for row in self._lines(b'"message_id":' + json.dumps(wanted).encode()):
            return _sent(row)
        return None


def _sent(row: dict[str, Any]) -> Sent:
    return Sent(id=str(row["id"]), message_id=str(row.get("message_id") or ""),
                mail_from=str(row.get("mail_from") or ""),
                entries={str(k): [str(r) for r in v] for k, v in dict(row.get("entries") or {}).items()},
                tenant=row.get("tenant"), campaign=row.get("campaign"))


@functools.cache
def index_for(root: Path) -> Index:
    """This process's writer for a queue root (one open day file each; two made at once by a
    race would each append whole lines, harmlessly)."""
    return Index(root)
