"""Waiting for an event with a deadline -- never for a length of time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(what: Callable[[], Any], timeout: float = 30.0, why: Callable[[], str] | str = "") -> Any:
    """``what()``'s first truthy answer; AssertionError (with ``why``) at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s {why() if callable(why) else why}")
