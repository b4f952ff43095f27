"""Messages per minute per API key (``mailflow apikey add --rate N``).

A sliding window of the last minute's requests, per key: a request is admitted whole (all
its messages) or answered 429 with the seconds until its messages fit, never queued in
part.  With a shared Redis (``shaping_redis`` or a Redis broker) the window is one for every
submission process and host (rate_take.lua); without one, or while it does not answer, it
is this process's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

import redis

from mailflow.util import lua

log = logging.getLogger(__name__)

WINDOW = 60.0
PREFIX = "mailflow:apirate:"
#: After Redis failed to answer, this process counts alone this long (s) before asking again.
REDIS_RETRY = 30.0
_TAKE = lua.script("mailflow.api", "rate_take.lua")


class RateLimiter:
    def __init__(self, redis_url: str | None = None) -> None:
        self._taken: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) \
            if redis_url else None
        self._script = self.redis.register_script(_TAKE) if self.redis is not None else None
        self._redis_down_until = 0.0

    def take(self, key: str, count: int, per_minute: int, now: float | None = None) -> float | None:
        """Count ``count`` messages for ``key`` and return None, or the seconds to wait before
        they fit (nothing counted).  ``per_minute`` 0: no limit."""
        if per_minute <= 0:
            return None
        if self._script is not None and now is None and time.monotonic() >= self._redis_down_until:
            try:
                wait_ms = int(self._script(keys=[PREFIX + key], args=[
                    int(time.time() * 1000), int(WINDOW * 1000), count, per_minute, uuid.uuid4().hex]))
                return None if wait_ms == 0 else wait_ms / 1000
            except redis.RedisError as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY
                log.warning("API rates are counted in this process only for %.0f s: Redis does not "
                            "answer (%s)", REDIS_RETRY, exc)
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
