"""A long-lived part of a process: a thread that does one thing every so often until it is
told to stop.

Every such part of mailflow -- the lease renewer, the connection pool's reaper, the metrics
sampler, the process title, the worker's webhook dispatcher and TLS-report sender -- is a
:class:`Ticker`: it waits on an event, not in ``time.sleep``, so ``stop()`` ends it within
the moment its current tick takes, and a worker's warm shutdown stops them in order (see
mailflow/runtime/steps.py) instead of leaving daemon threads to die with the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Every ticker this process started and has not stopped, by name.
RUNNING: dict[str, Ticker] = {}
_running_lock = threading.Lock()


class Ticker:
    """``tick()`` every ``every`` seconds (``first``: once at once) in a thread named
    ``mailflow-<name>``; a tick that returns False ends the loop (its work is done)."""

    def __init__(self, name: str, tick: Callable[[], bool | None], every: float | Callable[[], float], *,
                 first: bool = True):
        self.name = name
        self._tick = tick
        self._every = every
        self._first = first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Ticker:
        """Start the thread, unless it runs already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True, name=f"mailflow-{self.name}")
            self._thread.start()
        with _running_lock:
            RUNNING[self.name] = self
        return self

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop and wait for its thread (at most ``timeout`` s: a tick under way)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not stop within %.0f s", thread.name, timeout)
        with _running_lock:
            if RUNNING.get(self.name) is self:
                del RUNNING[self.name]

    def _interval(self) -> float:
        return self._every() if callable(self._every) else self._every

    def _run(self) -> None:
        if not self._first and self._stop.wait(self._interval()):
            return
        while not self._stop.is_set():
            try:
                if self._tick() is False:
                    return
            except Exception:
                log.exception("%s failed; again in %.0f s", self.name, self._interval())
            if self._stop.wait(self._interval()):
                return


def stop_all(timeout: float = 5.0) -> None:
    """Stop every ticker still running (a process's last act)."""
    with _running_lock:
        tickers = list(RUNNING.values())
    for ticker in tickers:
        ticker.stop(timeout)


def left_running() -> list[str]:
    """mailflow's threads still alive: what a warm shutdown should have ended."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("mailflow-") and t.is_alive())
