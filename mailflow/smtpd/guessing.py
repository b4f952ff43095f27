"""AUTH guessing, counted across connections: per client address and per user name.

Closing a connection after a few failures (``auth_max_failures``) stops one connection
guessing; forty connections in parallel made two hundred guesses in nine seconds.  So
failures are also counted over a sliding window (smtp.ini ``auth_max_failures_window``,
10 per 600 s by default) for the client's address and for the user name tried, across
every connection and submission process of the host -- in a locked file in the state
directory -- and across every host when Redis is at hand (``shaping_redis`` or a Redis
broker).  Past the limit, AUTH for that address or that user is answered ``454 4.7.0``
without the password being checked, until enough failures have left the window
(fail2ban's and Postfix's anvil rate limits work the same way); each lockout is logged
once, when it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from mailflow.util import atomic, lua

log = logging.getLogger(__name__)

LOCKED_OUT = "454 4.7.0 Too many failed authentication attempts, try again later"
#: How long a Redis that failed is left alone before it is asked again (the file counts meanwhile).
REDIS_RETRY = 30.0
PREFIX = "mailflow:authfail:"


def keys(client: str, user: str | None) -> list[str]:
    """What a failure counts against: the client's address, and the user name it tried."""
    out = [f"client:{client}"]
    if user:
        out.append(f"user:{user.lower()}")
    return out


_ATTEMPT = lua.script("mailflow.smtpd", "auth_attempt.lua")


class Guesses:
    """The attempts of the window, shared by this host's processes (or every host's).

    An attempt is counted *before* its password is checked, and forgiven when it turns
    out right: so at most ``limit`` passwords are ever checked per window for a client
    address or a user name, however many connections try at once.
    """

    def __init__(self, limit: int, window: float, path: Path, redis_url: str | None = None):
        self.limit, self.window, self.path = limit, window, path
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) \
            if redis_url else None
        self._script = self.redis.register_script(_ATTEMPT) if self.redis is not None else None
        self._redis_down_until = 0.0

    def locked_out(self, client: str, user: str | None = None) -> str | None:
        """Which of the client and the user is locked out now (its key), or None."""
        names = keys(client, user)
        counts = self._use_redis(lambda: self._redis_counts(names), lambda: self._file_counts(names))
        return next((k for k, n in counts.items() if n >= self.limit), None)

    def attempt(self, client: str, user: str | None) -> tuple[str, str | None]:
        """Count an attempt about to be checked: (its token, None), or ("", the key locked out)."""
        token, names = uuid.uuid4().hex, keys(client, user)
        locked, counts = self._use_redis(lambda: self._redis_attempt(names, token),
                                         lambda: self._file_attempt(names, token))
        if locked is not None:
            return "", locked
        for key, n in counts.items():
            if n == self.limit:  # this one fills the window: its lockout starts now
                log.warning("auth locked out %s: %d failed AUTH within %.0f s; answered 454 4.7.0 "
                            "without a check until the window passes", key.replace(":", "=", 1),
                            self.limit, self.window)
        return token, None

    def forgive(self, token: str, client: str, user: str | None) -> None:
        """The attempt was right: it is no failure."""
        names = keys(client, user)
        self._use_redis(lambda: self._redis_forgive(names, token), lambda: self._file_forgive(names, token))

    # -- Redis, and this host's file when Redis does not answer ----------------------------

    def _use_redis(self, remote: Any, local: Any) -> Any:
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return remote()
            except redis.RedisError as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY
                log.warning("AUTH failures are counted on this host only for %.0f s: Redis "
                            "does not answer (%s)", REDIS_RETRY, exc)
        return local()

    def _redis_counts(self, names: list[str]) -> dict[str, int]:
        assert self.redis is not None
        pipe = self.redis.pipeline()
        for name in names:
            pipe.zcount(PREFIX + name, time.time() - self.window, "+inf")
        return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}

    def _redis_attempt(self, names: list[str], token: str) -> tuple[str | None, dict[str, int]]:
        assert self._script is not None
        reply = self._script(keys=[PREFIX + n for n in names],
                             args=[time.time(), self.window, self.limit, token])
        if int(reply[0]):
            return names[int(reply[0]) - 1], {}
        return None, {name: int(n) for name, n in zip(names, reply[1:], strict=True)}

    def _redis_forgive(self, names: list[str], token: str) -> None:
        assert self.redis is not None
        pipe = self.redis.pipeline()
        for name in names:
            pipe.zrem(PREFIX + name, token)
        pipe.execute()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[list[Any]]]]:
        """The table (key -> [[time, token], ...]) under the host's lock, pruned; written back
        whole (mailflow/util/atomic.py), so a crash never leaves half of it."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                table = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            except (FileNotFoundError, ValueError):
                table = {}
            if not isinstance(table, dict):
                table = {}
            since = time.time() - self.window
            for name in list(table):
                kept = [e for e in table[name] if isinstance(e, list) and len(e) == 2
                        and isinstance(e[0], (int, float)) and e[0] > since]
                if kept:
                    table[name] = kept
                else:
                    del table[name]
            yield table
            atomic.replace_text(self.path, json.dumps(table))
        finally:
            os.close(fd)

    def _file_counts(self, names: list[str]) -> dict[str, int]:
        with self._locked() as table:
            return {name: len(table.get(name, [])) for name in names}

    def _file_attempt(self, names: list[str], token: str) -> tuple[str | None, dict[str, int]]:
        with self._locked() as table:
            for name in names:
                if len(table.get(name, [])) >= self.limit:
                    return name, {}
            now = time.time()
            for name in names:
                table.setdefault(name, []).append([now, token])
            return None, {name: len(table[name]) for name in names}

    def _file_forgive(self, names: list[str], token: str) -> None:
        with self._locked() as table:
            for name in names:
                if name in table:
                    table[name] = [e for e in table[name] if e[1] != token]
