"""A long-lived part stops when told, within the moment, whatever its interval."""

from __future__ import annotations

import threading
import time

from mailflow.runtime import services
from mailflow.runtime.services import Ticker


def test_a_ticker_with_an_hour_between_ticks_stops_at_once():
    ticks = threading.Event()
    ticker = Ticker("test-hourly", ticks.set, 3600.0).start()
    assert ticks.wait(10)  # the first tick at once
    assert "mailflow-test-hourly" in services.left_running()
    started = time.monotonic()
    ticker.stop()
    assert time.monotonic() - started < 1.0  # not an hour's sleep
    assert "mailflow-test-hourly" not in services.left_running()
    assert "test-hourly" not in services.RUNNING


def test_a_tick_that_fails_is_logged_and_the_loop_goes_on(caplog):
    calls: list[int] = []
    done = threading.Event()

    def tick() -> bool | None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first one fails")
        done.set()
        return False  # the work is done: the loop ends by itself

    ticker = Ticker("test-flaky", tick, 0.01).start()
    assert done.wait(10)
    deadline = time.monotonic() + 10
    while ticker.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ticker.running() and len(calls) == 2
    assert "test-flaky failed" in caplog.text
    ticker.stop()


def test_a_ticker_started_twice_runs_one_thread():
    ticker = Ticker("test-once", lambda: None, 3600.0, first=False)
    ticker.start()
    ticker.start()
    assert services.left_running().count("mailflow-test-once") == 1
    ticker.stop()
