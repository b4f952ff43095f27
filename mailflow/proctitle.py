"""Process titles with live counters, as Haraka's process_title plugin shows them.

``mailflow worker out=<in progress>/<queued>/<waiting> delivered=<n> bounced=<n> dps=<rate>``
(``ps`` shows it), refreshed every few seconds from the queue directory, so
every process on the host shows the same, host-wide numbers.
"""

from __future__ import annotations

import threading
import time

import setproctitle

from .config import Config
from .queuetools import stats
from .spool import Spool

INTERVAL = 5.0


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
            try:
                numbers = stats(spool)
            except OSError:
                numbers = None
            if numbers is not None:
                now = time.monotonic()
                rates = {} if last is None else {
                    k: (numbers[k] - last[k]) / max(now - last_at, 1e-6) for k in ("delivered", "bounced")}
                setproctitle.setproctitle(title(role, numbers, rates))
                last, last_at = numbers, now
            time.sleep(INTERVAL)

    thread = threading.Thread(target=loop, daemon=True, name="mailflow-proctitle")
    thread.start()
    return thread
