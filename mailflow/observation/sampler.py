"""This process's own figures for the host's metrics endpoint (mailflow/observation/metrics.py).

The delivery-time histogram is counted where outcomes are recorded, in whichever
process that is; every few seconds the process writes its figures to its own file
under ``<state>/metrics/``, which the endpoint adds up.  Nothing here is per message
but a few additions under a lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailflow.config.state import state_dir
from mailflow.runtime.services import Ticker
from mailflow.util.atomic import replace_text

log = logging.getLogger(__name__)

#: Upper bounds (s) of the delivery-time buckets: queue to delivered, retries included.
BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
#: Upper bounds (s) of one attempt's buckets: MAIL FROM to the reply after the data.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WRITE_EVERY = 5.0


def tls_counter(level: str) -> str:
    """The counter file (queue/.counters/) of deliveries at one TLS level."""
    return f"tls_{level}"


class Sampler:
    """This process's own figures, written to its file in the metrics directory."""

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.sum = 0.0
        self.counts: dict[str, int] = {}  #: named counts (``throttled:<rule>``)
        #: attempts by destination (a shaping rule, or ``other``): [buckets..., count, sum]
        self.attempts: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._dirty = True
        self._ticker = Ticker("metrics-sampler", self._write_quietly, WRITE_EVERY)
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        #: figures read when the file is written (the pool's open and idle connections)
        self.gauges: dict[str, Callable[[], int]] = {}

    def observe(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            self.count += 1
            self.sum += seconds
            self._dirty = True
        self.start()

    def attempt(self, destination: str, seconds: float) -> None:
        with self._lock:
            row = self.attempts.setdefault(destination, [0.0] * (len(ATTEMPT_BUCKETS) + 2))
            for i, bound in enumerate(ATTEMPT_BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += 1
            row[-1] += seconds
            self._dirty = True
        self.start()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
            self._dirty = True
        self.start()

    def start(self) -> None:
        if not self._ticker.running():
            self._ticker.start()

    def stop(self) -> None:
        """The last figures written, and the thread ended."""
        self._ticker.stop()
        self._write_quietly()

    def _write_quietly(self) -> None:
        try:
            self.write()
        except OSError as exc:
            log.debug("metrics sample not written: %s", exc)

    def write(self) -> None:
        with self._lock:
            data = {"pid": os.getpid(), "buckets": list(self.buckets), "count": self.count,
                    "sum": self.sum, "at": time.time(), "counts": dict(self.counts),
                    "attempts": {k: list(v) for k, v in self.attempts.items()},
                    **{name: gauge() for name, gauge in self.gauges.items()}}
        replace_text(state_dir() / "metrics" / self._name, json.dumps(data))


SAMPLER = Sampler()


def observe_delivery(seconds: float) -> None:
    SAMPLER.observe(seconds)




def samples(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every process's last written figures on this host (the live and the ended)."""
    directory = directory or state_dir() / "metrics"
    out = []
    try:
        paths = [p for p in directory.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    for path in paths:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def host_counts(prefix: str = "") -> dict[str, int]:
    """The named counts of every process of the host, added up (those starting with ``prefix``)."""
    total: dict[str, int] = {}
    for sample in samples():
        for name, n in (sample.get("counts") or {}).items():
            if name.startswith(prefix):
                total[name] = total.get(name, 0) + int(n)
    return total
