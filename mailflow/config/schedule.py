"""The retry schedule: ``temp_fail_intervals`` (Haraka's syntax).

``1m, 5m*2, 1h*3`` -> ``[60, 300, 300, 3600, 3600, 3600]``; ``none`` -> ``[]``
(bounce at the first temporary failure).  Unlike Haraka, a syntax error is
not silently replaced by the defaults: it stops the process, naming the value.
"""

from __future__ import annotations

import re

DEFAULT_INTERVALS: tuple[int, ...] = tuple(2 ** (i + 5) for i in range(1, 13))
#: A shorter wait is almost surely a typo (Haraka enforces the same floor).
MIN_INTERVAL = 5

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ITEM = re.compile(r"^(\d+)\s*([smhd]?)\s*(?:\*\s*(\d+))?$")


def parse_intervals(text: str) -> list[int]:
    """Parse a ``temp_fail_intervals`` value; raise ValueError naming what is wrong."""
    value = text.strip().lower()
    if value == "none":
        return []
    if not value:
        raise ValueError("temp_fail_intervals is empty (use 'none' to bounce at once)")
    out: list[int] = []
    for item in value.split(","):
        item = item.strip()
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"temp_fail_intervals: cannot read {item!r} (expected e.g. 5m or 1h*3)")
        seconds = int(m.group(1)) * _UNITS[m.group(2) or "s"]
        if seconds < MIN_INTERVAL:
            raise ValueError(
                f"temp_fail_intervals: {item!r} is under the {MIN_INTERVAL} s minimum"
            )
        repeat = int(m.group(3) or 1)
        if repeat < 1:
            raise ValueError(f"temp_fail_intervals: {item!r} repeats zero times")
        out.extend([seconds] * repeat)
    return out


def format_intervals(intervals: list[int] | tuple[int, ...]) -> str:
    return ", ".join(f"{s}s" for s in intervals) if intervals else "none"


def parse_duration(text: str) -> int:
    """One duration: ``90``, ``90s``, ``15m``, ``1h``, ``2d`` (0 allowed) -> seconds."""
    m = re.match(r"^(\d+)\s*([smhd]?)$", text.strip().lower())
    if not m:
        raise ValueError(f"cannot read {text.strip()!r} as a duration (expected e.g. 900, 15m or 1h)")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]
