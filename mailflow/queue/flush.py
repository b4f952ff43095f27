"""Flushing: every waiting entry (or one domain's, or one entry) becomes due now.

Only the name changes (a rename, keeping the failure count); the queue
manager then claims each entry once, like any due entry.  No countdown holds
a deferral anywhere, so nothing can fire a second attempt later.
"""

from __future__ import annotations

import logging
import os

from mailflow.queue import manager as qmgr
from mailflow.queue.spool import PENDING, Spool, now_ms

log = logging.getLogger(__name__)


def flush(spool: Spool, domain: str | None = None, ident: str | None = None) -> int:
    """Make matching waiting entries due now; return how many."""
    now = now_ms()
    count = 0
    for name in list(spool.names(PENDING)):
        if name.next_attempt_ms <= now:
            continue
        if domain is not None and name.domain != domain.lower():
            continue
        if ident is not None and not name.matches(ident):
            continue
        try:
            os.rename(spool.path(name), spool.path(name.rescheduled(now)))
        except FileNotFoundError:  # claimed or changed meanwhile
            continue
        count += 1
    log.info("flushed %d entries%s", count, f" for {domain}" if domain else "")
    qmgr.nudge_all()
    return count
