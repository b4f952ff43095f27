"""Process titles with live counters, as Haraka's process_title plugin shows them.

``mailflow worker out=<in progress>/<queued>/<waiting> delivered=<n> bounced=<n> dps=<rate>``
(``ps`` shows it), refreshed every few seconds from the queue directory, so
every process on the host shows the same, host-wide numbers.
"""

from __future__ import annotations

import time

import setproctitle

from mailflow.config.loader import Config
from mailflow.queue.spool import Spool
from mailflow.queue.tools import stats
from mailflow.runtime.services import Ticker

INTERVAL = 5.0
#: The counts list the whole queue directory; with a large backlog (100,000 entries: ~0.4 s)
#: the title is refreshed less often, so that it never costs more than 1/COST_SHARE of a core.
COST_SHARE = 50


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
        started = time.monotonic()
        try:
            numbers = stats(self.spool)
        except OSError:
            numbers = None
        self.pause = pause_after(time.monotonic() - started)
        if numbers is None:
            return
        now = time.monotonic()
        rates = {} if self.last is None else {
            k: (numbers[k] - self.last[k]) / max(now - self.last_at, 1e-6) for k in ("delivered", "bounced")}
        setproctitle.setproctitle(title(self.role, numbers, rates))
        self.last, self.last_at = numbers, now


def start(role: str, cfg: Config) -> Ticker:
    """Keep this process's title current; ``stop()`` the answer to end it."""
    current = Title(role, cfg)
    return Ticker("proctitle", current.refresh, lambda: current.pause).start()
