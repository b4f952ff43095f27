"""Feeding a batch while it sends: a busy destination's new mail joins its running batch.

Hold and fill (mailflow/queue/manager.py) keeps a busy destination's new mail in
``pending/`` while a batch of it is in flight, and claims it as one batch when that
one ends: a claim, an MX lookup, a connection acquisition and a transmit -- four steps,
three tasks -- for mail that could have gone on over the connection already open.
Postfix's delivery agents ask qmgr for the destination's next message instead.  Here
a transmit whose route is its whole claim *opens* the claim for feeding (a marker,
``active/.feed/<claim>``); the queue manager renames the held mail into that claim
instead of holding it, and the transmit, when its entries are done, takes what was
added (each entry through the hooks a lookup calls, mailflow/pipeline/lookup.py) and
goes on over its session, until its time budget is spent or nothing more comes.

Opening, feeding and closing take an exclusive flock on the marker, and a feed checks
the marker is still linked, so that nothing is renamed into a claim after its
transmit's last look: an entry renamed in is either seen by that look or never there.
A transmit that dies leaves its marker: the claim's lease expires as before (its fed
entries with it) and the queue manager removes markers whose claim is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from mailflow.queue.entry import EntryName
from mailflow.queue.spool import Spool

#: The markers' directory under ``active/`` (dot-named: not a claim).
FEED = ".feed"


def marker(spool: Spool, claim: str) -> Path:
    return spool.active / FEED / spool.claim_dir(claim).name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int | None]:
    """The marker's fd under an exclusive flock, or None when there is no marker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd if os.fstat(fd).st_nlink > 0 else None  # closed before we had the lock
    finally:
        os.close(fd)


def open_feed(spool: Spool, claim: str) -> bool:
    """Mark ``claim`` as taking more entries; False when it cannot be marked."""
    path = marker(spool, claim)
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError:
        return False
    return True


def close_feed(spool: Spool, claim: str) -> None:
    """No more entries come into ``claim`` once this returns."""
    path = marker(spool, claim)
    with _locked(path) as fd:
        if fd is not None:
            path.unlink(missing_ok=True)


def is_open(spool: Spool, claim: str) -> bool:
    return marker(spool, claim).exists()


def feed(spool: Spool, claim: str, names: list[EntryName]) -> list[EntryName]:
    """Rename ``names`` from ``pending/`` into ``claim`` while it is open; the ones moved."""
    moved: list[EntryName] = []
    with _locked(marker(spool, claim)) as fd:
        if fd is None:
            return moved
        directory = spool.claim_dir(claim)
        for name in names:
            try:
                os.rename(spool.path(name), directory / str(name))
            except FileNotFoundError:  # taken meanwhile, or the claim is gone
                continue
            moved.append(name)
    return moved


def sweep(spool: Spool) -> int:
    """Remove the markers whose claim is gone (its transmit died); how many."""
    gone = 0
    try:
        entries = list(os.scandir(spool.active / FEED))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not (spool.active / entry.name).is_dir():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                gone += 1
    return gone
