"""File descriptors: a process that may hold many connections lifts its soft limit.

Shells and containers often start processes with a soft RLIMIT_NOFILE of 1024 and a
much higher hard limit; smtpd (``max_connections``) and a worker node
(``concurrency_max`` outbound connections) lift the soft limit to the hard one at
start, and say so when even that is short of what their settings allow.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_descriptor_limit(wanted: int, setting: str) -> int:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit; warn if short of ``wanted``
    (what ``setting`` allows, plus the process's other files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        log.warning("only %d file descriptors allowed (RLIMIT_NOFILE) for %s: raise LimitNOFILE",
                    soft, setting)
    return soft
