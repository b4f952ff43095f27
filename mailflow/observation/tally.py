"""What one task did to the mail, counted while it runs: its result in Flower.

A pipeline task runs inside :func:`tallied`; the code that gives an entry its
outcome calls :func:`count` (delivered, deferred, failed, bounced…), and the task
returns the counts.  Celery puts a task's return value in its ``task-succeeded``
event, which is what Flower shows in its Result column -- no result backend is
involved.  Outside a task (smtpd, the queue tools) counting does nothing.
Only counts: never an address, a body or a credential.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def tallied() -> Iterator[Counter[str]]:
    """Count what the block does (nested blocks count into the outer one as well)."""
    outer: Counter[str] | None = getattr(_local, "counts", None)
    counts: Counter[str] = Counter()
    _local.counts = counts
    try:
        yield counts
    finally:
        _local.counts = outer
        if outer is not None:
            outer.update(counts)


def count(what: str, n: int = 1) -> None:
    counts: Counter[str] | None = getattr(_local, "counts", None)
    if counts is not None and n:
        counts[what] += n


def add(counts: Counter[str]) -> None:
    """Count what another thread of this task counted (a lane of a batch)."""
    current: Counter[str] | None = getattr(_local, "counts", None)
    if current is not None:
        current.update(counts)
