"""Process titles with live counters, as Haraka's process_title plugin shows them.

``mailflow worker out=<in progress>/<queued>/<waiting> delivered=<n> bounced=<n> dps=<rate>``
(``ps`` shows it), refreshed every few seconds from the queue directory, so
every process on the host shows the same, host-wide numbers.
"""

from __future__ import annotations

import threading
import time

import setproctitle

from mailflow.config.loader import Config
from mailflow.queue.spool import Spool
from mailflow.queue.tools import stats

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


def start(role: str, cfg: Config) -> threading.Thread:
    """Keep this process's title current in a daemon thread."""

    def loop() -> None:
        spool = Spool(cfg.queue_path())
        last: dict[str, int] | None = None
        last_at = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                numbers = stats(spool)
            except OSError:
                numbers = None
            cost = time.monotonic() - started
            if numbers is not None:
                now = time.monotonic()
                rates = {} if last is None else {
                    k: (numbers[k] - last[k]) / max(now - last_at, 1e-6) for k in ("delivered", "bounced")}
                setproctitle.setproctitle(title(role, numbers, rates))
                last, last_at = numbers, now
            time.sleep(pause_after(cost))

    thread = threading.Thread(target=loop, daemon=True, name="mailflow-proctitle")
    thread.start()
    return thread
