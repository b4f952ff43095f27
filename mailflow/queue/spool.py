"""The queue directory: the durable record of every accepted mail.

Layout (a per-host directory):

``pending/``
    entries not being worked on.  The name says when each is next due
    (``queued`` when due, ``waiting`` when deferred into the future).
``active/<claim>/``
    entries claimed by a delivery batch.  A claim is a ``rename`` from
    ``pending/`` into the batch's own claim directory: exactly one claimer
    can win an entry, so no entry is ever attempted twice at the same time.
    The claim directory's mtime is its lease: the process working on the
    batch touches it; the queue manager returns the entries of an expired
    claim to ``pending/``, and a late task then finds its claim gone.
``failed/``
    recipients that were refused permanently, with their status, waiting
    for their bounce to be generated.

Temp files are ``__tmp__.<pid>.<name>`` in the directory they are renamed
into; one whose writer is no longer alive is debris from a crash and is
removed at start.  Unreadable entries are renamed ``error.<name>`` in place
and never looked at again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mailflow.queue import entry as qfile
from mailflow.queue.dirsync import sync_dir
from mailflow.queue.entry import BOUNCE_CLAIM, EntryName, check_claim, check_name
from mailflow.queue.identity import identity as queue_identity
from mailflow.queue.todo import ToDo

log = logging.getLogger(__name__)

_ensured: set[Path] = set()

PENDING = "pending"
ACTIVE = "active"
FAILED = "failed"
#: The directories an entry can be in ('places'; an entry's *state* is what tools report).
PLACES = (PENDING, ACTIVE, FAILED)
#: Where a claim whose lease expired is put aside while its entries go back.
EXPIRED_PREFIX = ".expired-"


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

    def dir(self, place: str) -> Path:
        return self.root / place

    def ensure(self) -> Spool:
        for d in (self.root, self.pending, self.active, self.failed):
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
        queue_identity(self.root)
        return self

    @property
    def identity(self) -> str:
        """This queue directory's persistent identity (mailflow/queue/identity.py)."""
        return queue_identity(self.root)

    def exists(self) -> bool:
        return self.pending.is_dir()

    def ensure_once(self) -> Spool:
        """``ensure`` at most once per process and directory (the submission path calls it)."""
        if self.root not in _ensured:
            self.ensure()
            _ensured.add(self.root)
        return self

    # -- writing --------------------------------------------------------------

    def write(self, entries: list[NewEntry], message: bytes | IO[bytes],
              place: str = PENDING, sync: bool = True) -> list[Path]:
        """Write every entry of one message durably into ``place``, or none of them.

        Each file is written under a temp name and fsync'd, then all are
        renamed into place and the directory is fsync'd once (an fsync begun after
        the renames, which concurrent writers share: dirsync.py).  On any error
        every file already written is removed and the error re-raised: the
        caller answers 451 and nothing is half-queued.  This is the only way a
        queue file is written.  ``sync`` False: the caller fsyncs ``place`` itself, once for
        many messages (mailflow/queue/staging.py).
        """
        pid = os.getpid()
        tmps: list[Path] = []
        done: list[Path] = []
        try:
            directory = self.dir(place)
            for entry in entries:
                header = qfile.encode_header(entry.todo)
                tmps.append(qfile.write_tmp(
                    directory, f"{qfile.TMP_PREFIX}{pid}.{entry.name}", header, message))
            for tmp, entry in zip(tmps, entries, strict=True):
                final = directory / str(entry.name)
                os.rename(tmp, final)
                done.append(final)
            if sync:
                sync_dir(directory)  # shared with concurrent writers (dirsync.py)
        except BaseException:
            for path in tmps + done:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return done

    # -- listing --------------------------------------------------------------

    def names(self, place: str = PENDING,
              known: Mapping[str, EntryName] | None = None) -> Iterator[EntryName]:
        """Entry names in ``place`` (unordered); temp, error and stray files are skipped.
        ``known``: names parsed before, by file name (a listing repeated often parses only
        what is new)."""
        if place == ACTIVE:
            for claim in self.claims():
                yield from _names_in(self.active / claim)
            return
        yield from _names_in(self.dir(place), known)

    def claim_names(self, claim: str) -> Iterator[EntryName]:
        """The entry names left in one claim (none once it is gone)."""
        return _names_in(self.active / claim)

    def claims(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.active)
                    if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def path(self, name: EntryName | str, place: str = PENDING) -> Path:
        return self.dir(place) / check_name(str(name))

    # -- moving entries ---------------------------------------------------------------

    def claim(self, names: list[EntryName], source: str = PENDING) -> tuple[str, list[str]]:
        """Move entries from ``source`` into a new claim directory; skip those someone else got.

        Returns the claim id and the names claimed (the directory is removed when empty).
        Claims of failed/ entries (for bounces) are marked so that expiry returns them there.
        """
        return self._claim_from(self.dir(source), [str(n) for n in names], bounce=source == FAILED)

    def split(self, claim: str, names: list[str]) -> tuple[str, list[str]]:
        """Move some of a claim's entries into a new claim of their own (a bounce claim's
        stay one): each route a lookup made of one claim is held, leased and finished
        apart, so that its steps never wait for another route's to end.  The caller holds
        ``claim``; one that crashes midway leaves two claims, each given back when its
        lease expires, as any."""
        return self._claim_from(self.claim_dir(claim), [check_name(n) for n in names],
                                bounce=claim.startswith(BOUNCE_CLAIM))

    def _claim_from(self, source: Path, names: list[str], *, bounce: bool) -> tuple[str, list[str]]:
        claim = (BOUNCE_CLAIM if bounce else "") + uuid.uuid4().hex
        directory = self.active / claim
        directory.mkdir(parents=True)
        got = []
        for name in names:
            try:
                os.rename(source / name, directory / name)
            except FileNotFoundError:
                continue
            got.append(name)
        if not got:
            directory.rmdir()
        return claim, got

    def claim_dir(self, claim: str) -> Path:
        """The directory of a claim; BadName for anything but a claim id (never a path)."""
        return self.active / check_claim(claim)

    def claimed_path(self, claim: str, name: str) -> Path:
        return self.claim_dir(claim) / check_name(name)

    def claimed_paths(self, claim: str, names: Iterable[str]) -> Iterator[Path]:
        """``claimed_path`` of each name, the claim checked once (a batch's fifty entries)."""
        directory = self.claim_dir(claim)
        for name in names:
            yield directory / check_name(name)

    def renew(self, claim: str) -> bool:
        """Extend a claim's lease; False when it has expired and been given back."""
        try:
            os.utime(self.claim_dir(claim))
        except FileNotFoundError:
            return False
        return True

    def finish(self, claim: str) -> None:
        """Remove a claim directory once its entries have all moved on."""
        try:
            os.rmdir(self.claim_dir(claim))
        except OSError:
            pass

    def expire(self, lease_seconds: float, spare: Callable[[str], bool] | None = None) -> int:
        """Give the entries of claims not renewed within ``lease_seconds`` back; return how many.

        A claim is first renamed aside (``.expired-<claim>``) so that no late holder can
        renew it, then emptied by :meth:`sweep_expired` -- which also finishes any
        directory an earlier pass or process left half-emptied.  ``spare(claim)`` True
        keeps an old claim for now (one lent to another host while this one could not
        hear it: mailflow/queue/lending.py).
        """
        cutoff = time.time() - lease_seconds
        for claim in self.claims():
            directory = self.active / claim
            try:
                if os.stat(directory).st_mtime >= cutoff:
                    continue
                if spare is not None and spare(claim):
                    continue
                os.rename(directory, self.active / f"{EXPIRED_PREFIX}{claim}")
            except FileNotFoundError:
                continue
            log.warning("lease of claim %s expired: its entries are due again", claim)
        return self.sweep_expired()

    def expired_dirs(self) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(self.active)
                    if e.name.startswith(EXPIRED_PREFIX) and e.is_dir()]
        except FileNotFoundError:
            return []

    def sweep_expired(self) -> int:
        """Move everything out of ``.expired-*`` directories: entries to where they came from.

        Entries go back to pending/ (failed/ for a bounce claim), due at once; anything
        else (an ``error.`` file) to pending/, where operators and ``recover`` see it.  A
        failure is logged and tried again on the next pass: an entry is never left
        where no code looks.
        """
        returned = 0
        for directory in self.expired_dirs():
            claim = directory.name[len(EXPIRED_PREFIX):]
            back = self.failed if claim.startswith(BOUNCE_CLAIM) else self.pending
            try:
                items = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for item in items:
                is_entry = EntryName.parse(item.name) is not None
                try:
                    os.rename(item.path, (back if is_entry else self.pending) / item.name)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.error("could not move %s back from an expired claim (next pass tries "
                              "again): %s", item.path, exc.strerror or exc)
                    continue
                if is_entry:
                    returned += 1
                    log.warning("%s is due again (its claim %s expired)", item.name, claim)
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not remove %s (next pass tries again): %s", directory,
                          exc.strerror or exc)
        return returned

    def release(self, path: Path, name: EntryName) -> Path:
        """Put an active entry back in pending/ under ``name`` (a new schedule)."""
        target = self.pending / str(name)
        os.rename(path, target)
        return target

    def rewrite(self, source: Path, name: EntryName, todo: ToDo, place: str = PENDING) -> Path:
        """Write ``todo`` with ``source``'s message as a new durable entry in ``place``."""
        [final] = self.write([NewEntry(name, todo)], qfile.read_message(source), place)
        return final

    # -- start-up recovery ------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """Remove crashed writers' temp files; move unreadable entries aside.

        Returns (temp files removed, entries moved aside).  Reads each entry's
        header once: a file that cannot be parsed now would fail every attempt.
        """
        removed = aside = 0
        self.sweep_expired()
        claim_dirs = [self.active / c for c in self.claims()]
        for directory in (self.pending, self.failed, *claim_dirs):
            if not directory.exists():
                continue
            for item in os.scandir(directory):
                if item.name.startswith(qfile.TMP_PREFIX):
                    if not _writer_alive(item.name):
                        Path(item.path).unlink(missing_ok=True)
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


def _names_in(directory: Path, known: Mapping[str, EntryName] | None = None) -> Iterator[EntryName]:
    try:
        with os.scandir(directory) as it:
            for item in it:
                parsed = known.get(item.name) if known else None
                if parsed is None:
                    parsed = EntryName.parse(item.name)
                if parsed is not None:
                    yield parsed
    except FileNotFoundError:
        return


def _writer_alive(tmp_name: str) -> bool:
    pid_text = tmp_name[len(qfile.TMP_PREFIX):].split(".", 1)[0]
    if not pid_text.isdigit():
        return False
    return writer_alive(int(pid_text))


def writer_alive(pid: int) -> bool:
    """Whether the process that wrote something at recovery time still runs.  Never this
    one: recovery runs before this process writes anything, so our own pid on a leftover is
    an earlier process's that had it (pid 1 in a container)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
