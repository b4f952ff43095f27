"""The queue directory: the durable record of every accepted mail.

Layout (a per-host directory, PRODUCT §7):

``pending/``
    entries not being worked on.  The name says when each is next due
    (``queued`` when due, ``waiting`` when deferred into the future).
``active/``
    entries claimed by a delivery task.  A claim is a ``rename`` from
    ``pending/``: exactly one claimer can win it, so no entry is ever
    attempted twice at the same time.
``failed/``
    recipients that were refused permanently, with their status, waiting
    for their bounce to be generated.

Temp files are ``__tmp__.<pid>.<name>`` in the directory they are renamed
into; one whose writer is no longer alive is debris from a crash and is
removed at start.  Unreadable entries are renamed ``error.<name>`` in place
and never looked at again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import qfile
from .qfile import EntryName
from .todo import ToDo

log = logging.getLogger(__name__)

PENDING = "pending"
ACTIVE = "active"
FAILED = "failed"
STATES = (PENDING, ACTIVE, FAILED)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class NewEntry:
    name: EntryName
    todo: ToDo


class Spool:
    """Operations on one queue directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.pending = self.root / PENDING
        self.active = self.root / ACTIVE
        self.failed = self.root / FAILED

    def dir(self, state: str) -> Path:
        return self.root / state

    def ensure(self) -> Spool:
        for d in (self.root, self.pending, self.active, self.failed):
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
        return self

    # -- writing --------------------------------------------------------------

    def write(self, entries: list[NewEntry], message: bytes) -> list[Path]:
        """Write every entry of one message durably, or none of them.

        Each file is written under a temp name and fsync'd, then all are
        renamed into ``pending/`` and the directory is fsync'd once.  On any
        error every file already written is removed and the error re-raised:
        the caller answers 451 and nothing is half-queued.
        """
        pid = os.getpid()
        tmps: list[Path] = []
        done: list[Path] = []
        try:
            for entry in entries:
                header = qfile.encode_header(entry.todo)
                tmps.append(qfile.write_tmp(
                    self.pending, f"{qfile.TMP_PREFIX}{pid}.{entry.name}", header, message))
            for tmp, entry in zip(tmps, entries, strict=True):
                final = self.pending / str(entry.name)
                os.rename(tmp, final)
                done.append(final)
            qfile.fsync_dir(self.pending)
        except BaseException:
            for path in tmps + done:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        return done

    # -- listing --------------------------------------------------------------

    def names(self, state: str = PENDING) -> Iterator[EntryName]:
        """Entry names in ``state`` (unordered); temp, error and stray files are skipped."""
        directory = self.dir(state)
        try:
            with os.scandir(directory) as it:
                for item in it:
                    parsed = EntryName.parse(item.name)
                    if parsed is not None:
                        yield parsed
        except FileNotFoundError:
            return

    def path(self, name: EntryName | str, state: str = PENDING) -> Path:
        return self.dir(state) / str(name)

    # -- moving entries ---------------------------------------------------------------

    def claim(self, name: EntryName | str) -> Path | None:
        """Move an entry from pending/ to active/; None when someone else got it first.

        The mtime of the claimed file is set to now: it is the start of the lease.
        """
        target = self.active / str(name)
        try:
            os.rename(self.pending / str(name), target)
        except FileNotFoundError:
            return None
        os.utime(target)
        return target

    def release(self, path: Path, name: EntryName) -> Path:
        """Put an active entry back in pending/ under ``name`` (a new schedule)."""
        target = self.pending / str(name)
        os.rename(path, target)
        return target

    def rewrite(self, source: Path, name: EntryName, todo: ToDo, state: str = PENDING) -> Path:
        """Write ``todo`` with ``source``'s message as a new durable entry in ``state``."""
        message = qfile.read_message(source)
        directory = self.dir(state)
        tmp = qfile.write_tmp(directory, f"{qfile.TMP_PREFIX}{os.getpid()}.{name}",
                              qfile.encode_header(todo), message)
        final = directory / str(name)
        os.rename(tmp, final)
        qfile.fsync_dir(directory)
        return final

    # -- start-up recovery ------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """Remove crashed writers' temp files; move unreadable entries aside.

        Returns (temp files removed, entries moved aside).  Reads each entry's
        header once: a file that cannot be parsed now would fail every attempt.
        """
        removed = aside = 0
        for directory in (self.pending, self.active, self.failed):
            if not directory.exists():
                continue
            for item in os.scandir(directory):
                if item.name.startswith(qfile.TMP_PREFIX):
                    if not _writer_alive(item.name):
                        _unlink(Path(item.path))
                        removed += 1
                        log.info("removed leftover temp file %s", item.path)
                    continue
                if item.name.startswith(qfile.ERROR_PREFIX):
                    continue
                if EntryName.parse(item.name) is None:
                    log.warning("ignoring stray file %s in the queue", item.path)
                    continue
                try:
                    qfile.load(Path(item.path))
                except (qfile.CorruptEntry, OSError) as exc:
                    self.move_aside(Path(item.path), str(exc))
                    aside += 1
        return removed, aside

    def move_aside(self, path: Path, why: str) -> Path:
        target = path.with_name(qfile.ERROR_PREFIX + path.name)
        os.rename(path, target)
        log.error("moved unreadable queue entry aside: %s (%s)", target, why)
        return target


def _writer_alive(tmp_name: str) -> bool:
    pid_text = tmp_name[len(qfile.TMP_PREFIX):].split(".", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # recover() runs before this process writes anything, so a temp file
        # with our pid is from an earlier process that had it (pid 1 in a container).
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
