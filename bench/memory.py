"""Memory (and CPU) of a relay's processes as the kernel accounts them: PSS and RSS from ``/proc``.

PSS (proportional set size) splits shared pages between the processes that
share them, so summing it over smtpd and the workers (and their children)
gives what mailflow really costs, where summing RSS would count shared
libraries once per process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _field_kib(pid: int, field: str, source: str) -> int:
    try:
        text = Path(f"/proc/{pid}/{source}").read_text()
    except OSError:  # the process is gone
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    return _field_kib(pid, "Pss", "smaps_rollup")


def rss_kib(pid: int) -> int:
    return _field_kib(pid, "VmRSS", "status")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a worker's pool children, ``mailflow run``'s worker)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def total_pss_kib(pids: list[int]) -> int:
    return sum(pss_kib(p) for root in pids for p in descendants(root))


class PeakSampler:
    """Samples the summed PSS of some process trees every ``interval`` s; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.25):
        self.pids, self.interval = pids, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, total_pss_kib(self.pids))
            self._stop.wait(self.interval)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the process trees under ``pids``: the live processes' own, plus what
    each has reaped of its exited children (Postfix's daemons exit after ``max_use``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for root in pids:
        for p in descendants(root):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick
