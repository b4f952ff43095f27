"""Claims: the entries a delivery step works on, held alone while it works (docs/architecture.md).

A claim is a directory under ``active/`` that the queue manager renamed a batch
of entries into.  Each step re-reads the files; an entry no longer in the claim
has been handled and is skipped, and a claim whose lease expired is skipped
whole.  While a step works on a claim it *holds* it: an exclusive flock (a
broker that runs a task twice at once makes the second wait, then find its
entries handled), and a thread of this process renews the lease of every held
claim every few seconds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mailflow.errors import NothingToDo
from mailflow.observation import tally
from mailflow.queue import holds
from mailflow.queue.entry import CorruptEntry, EntryName
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import Spool
from mailflow.runtime.services import Ticker
from mailflow.wire.lease import LEASE_SECONDS, RENEW_EVERY  # noqa: F401  (LEASE_SECONDS: its old home)
from mailflow.wire.payloads import Batch

log = logging.getLogger(__name__)

#: Entries that could not be handed on (the broker was unreachable) are due again after this.
BROKER_RETRY_MS = 5000

_held: dict[tuple[str, str], int] = {}
_held_lock = threading.Lock()


def _renew_held() -> None:
    with _held_lock:
        claims = list(_held)
    for root, claim in claims:
        Spool(root).renew(claim)


#: Renews the lease of every claim this process holds, while it holds one or more.
RENEWER = Ticker("lease", _renew_held, RENEW_EVERY, first=False)


#: How long a second execution of the same batch waits for the first to let go.
EXCLUSIVE_WAIT = 120.0


def _lock_claim(spool: Spool, claim: str) -> int | None:
    """An exclusive flock on the claim directory, waiting for another holder; None if it is gone.

    A broker may run a task twice at once (Redis redelivers a task that outlives its
    visibility timeout); the second waits here and then finds its entries handled.
    """
    try:
        fd = os.open(spool.claim_dir(claim), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + EXCLUSIVE_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


@contextmanager
def holding(spool: Spool, batch: Batch) -> Iterator[bool]:
    """Hold the batch's claim, alone, while the block runs; yields False when the claim is gone."""
    claim = batch.claim
    fd = _lock_claim(spool, claim)
    if fd is None:
        yield False
        return
    if not spool.renew(claim):
        os.close(fd)
        yield False
        return
    key = (str(spool.root), claim)
    with _held_lock:
        _held[key] = _held.get(key, 0) + 1
    RENEWER.start()
    try:
        yield True
    finally:
        with _held_lock:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        os.close(fd)  # releases the flock


def here(spool: Spool, batch: Batch) -> None:
    """NothingToDo unless the batch's queue directory is this host's (a task routed wrongly,
    or a worker whose queue is another: it must not swallow another owner's work)."""
    if not spool.exists():
        raise NothingToDo(f"batch of queue {batch.owner}, and this host has no queue directory "
                          f"({spool.root})")
    if spool.identity != batch.owner:
        raise NothingToDo(f"batch of queue {batch.owner}, and this host's queue is {spool.identity}")


def gone(batch: Batch) -> NothingToDo:
    """What a step says when its claim is not here (any more)."""
    return NothingToDo(f"claim {batch.claim} is not in this queue (its lease expired and its "
                       "entries went back, another execution handled it, or the queue is on "
                       "another host)")


def load(spool: Spool, batch: Batch, names: tuple[str, ...] | list[str] | None = None) -> list[HMail]:
    """The batch's entries still in its claim (unreadable ones are moved aside)."""
    out = []
    for path in spool.claimed_paths(batch.claim, batch.names if names is None else names):
        try:
            out.append(HMail.load(path))
        except FileNotFoundError:
            continue
        except CorruptEntry as exc:
            spool.move_aside(path, str(exc))
    return out


def still_claimed(spool: Spool, batch: Batch) -> bool:
    """Whether any of the batch's entries is still in its claim: one listing of the claim,
    where reading every entry would cost an open, a read and a parse each -- a step that
    only needs to know its claim is not empty (acquiring a session) reads none."""
    names = set(batch.names)
    try:
        with os.scandir(spool.claim_dir(batch.claim)) as found:
            return any(entry.name in names for entry in found)
    except FileNotFoundError:
        return False


def give_back(spool: Spool, hmails: list[HMail], due_ms: int, why: str = "") -> int:
    """Put claimed entries back in pending/, due at ``due_ms``, not counted as a failure;
    ``why`` (a shaping rule's hold: ``shaping:domain:x``) is recorded for ``queue list``."""
    back: list[EntryName] = []
    for hmail in hmails:
        name = hmail.name.rescheduled(due_ms)
        try:
            spool.release(hmail.path, name)
        except FileNotFoundError:  # handled meanwhile
            continue
        back.append(name)
    if why:
        holds.record(spool.root, back, due_ms, why)
    tally.count("handed_back", len(back))
    return len(back)
