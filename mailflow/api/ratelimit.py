"""Messages per minute per API key (``mailflow apikey add --rate N``).

A sliding window of the last minute's requests, per key, in the submission process: a
request is admitted whole (all its messages) or answered 429 with the seconds until its
messages fit, never queued in part.
"""

from __future__ import annotations

import threading
import time
from collections import deque

WINDOW = 60.0


class RateLimiter:
    def __init__(self) -> None:
        self._taken: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, count: int, per_minute: int, now: float | None = None) -> float | None:
        """Count ``count`` messages for ``key`` and return None, or the seconds to wait before
        they fit (nothing counted).  ``per_minute`` 0: no limit."""
        if per_minute <= 0:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            taken = self._taken.setdefault(key, deque())
            while taken and taken[0][0] <= now - WINDOW:
                taken.popleft()
            used = sum(n for _, n in taken)
            if used + count <= per_minute:
                taken.append((now, count))
                return None
            if count > per_minute:
                return WINDOW  # never fits: the client must split it; a minute is the honest answer
            # the oldest requests leave the window one by one: wait until enough have
            freed = used + count - per_minute
            for when, n in taken:
                freed -= n
                if freed <= 0:
                    return max(0.0, when + WINDOW - now)
            return WINDOW
