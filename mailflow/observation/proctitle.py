"""Process titles with live counters, as Haraka's process_title plugin shows them.

``mailflow worker out=<in progress>/<queued>/<waiting> delivered=<n> bounced=<n> dps=<rate>``
(``ps`` shows it), refreshed every few seconds from the queue directory, so
every process on the host shows the same, host-wide numbers.  Counting lists the whole
queue: one process counts, and writes the numbers to ``<queue>/.title``; the others,
until that process's next count is due, read them there (smtpd, its nodes and the
workers each listing the queue was a few per cent of their CPU under load).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import setproctitle

from mailflow.config.loader import Config
from mailflow.queue.spool import Spool
from mailflow.queue.tools import stats
from mailflow.runtime.services import Ticker
from mailflow.util.atomic import replace_text

INTERVAL = 5.0
#: The counts list the whole queue directory; with a large backlog (100,000 entries: ~0.4 s)
#: the title is refreshed less often, so that it never costs more than 1/COST_SHARE of a core.
COST_SHARE = 50
#: Where the last count is shared, under the queue root.
SHARED = ".title"


def pause_after(cost: float) -> float:
    """Seconds to wait before the next refresh, given what the last one cost."""
    return max(INTERVAL, cost * COST_SHARE)


def title(role: str, numbers: dict[str, int], rates: dict[str, float]) -> str:
    return (f"mailflow {role} out={numbers['in_progress']}/{numbers['queued']}/{numbers['waiting']} "
            f"delivered={numbers['delivered']} bounced={numbers['bounced']} "
            f"dps={rates.get('delivered', 0.0):.1f} bps={rates.get('bounced', 0.0):.1f}")


class Title:
    """This process's title, refreshed by a ticker of its own."""

    def __init__(self, role: str, cfg: Config):
        self.role = role
        self.spool = Spool(cfg.queue_path())
        self.last: dict[str, int] | None = None
        self.last_at = time.monotonic()
        self.pause = INTERVAL

    def refresh(self) -> None:
        numbers = self._shared()
        if numbers is None:
            numbers = self._count()
        if numbers is None:
            return
        now = time.monotonic()
        rates = {} if self.last is None else {
            k: (numbers[k] - self.last[k]) / max(now - self.last_at, 1e-6) for k in ("delivered", "bounced")}
        setproctitle.setproctitle(title(self.role, numbers, rates))
        self.last, self.last_at = numbers, now

    def _count(self) -> dict[str, int] | None:
        """Count the queue, and share what was counted until the next count is due."""
        started = time.monotonic()
        try:
            numbers = stats(self.spool)
        except OSError:
            return None
        self.pause = pause_after(time.monotonic() - started)
        if self.spool.exists():  # never made here: a worker host has no queue of its own
            try:
                replace_text(self._path(), json.dumps({"numbers": numbers,
                                                       "until": time.time() + self.pause}))
            except OSError:
                pass  # a read-only or full disk: each process counts for itself
        return numbers

    def _shared(self) -> dict[str, int] | None:
        """Another process's count, while its next one is not yet due."""
        try:
            shared = json.loads(self._path().read_text())
            if time.time() < float(shared["until"]):
                numbers = {str(k): int(v) for k, v in shared["numbers"].items()}
                self.pause = INTERVAL
                return numbers
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def _path(self) -> Path:
        return Path(self.spool.root) / SHARED


def start(role: str, cfg: Config) -> Ticker:
    """Keep this process's title current; ``stop()`` the answer to end it."""
    current = Title(role, cfg)
    return Ticker("proctitle", current.refresh, lambda: current.pause).start()
