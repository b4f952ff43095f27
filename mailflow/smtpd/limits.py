"""What one client may take of a submission process: connections, and AUTH guesses.

Postfix's anvil(8) counts connections per client and smtpd sleeps after
errors; mailflow does the same inside each submission process: a client over
``max_connections_per_client`` (or the process over ``max_connections``) is
told ``421 4.7.0`` and disconnected before it holds a descriptor for long, and
a failed AUTH is answered only after a delay that grows with each failure.
Counts are per process (each of smtp.ini ``nodes`` keeps its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from mailflow.smtpd.statuscodes import SMTPStatus

log = logging.getLogger(__name__)

#: How often, at most, the "out of file descriptors" accept error is logged.
ACCEPT_ERROR_LOG_EVERY = 60.0


#: The share of ``max_connections`` kept for ``relay_acl_allow`` clients: a crowd of
#: strangers (guessers, a flood) must not lock the host's own applications out.
TRUSTED_SHARE = 0.1
#: A client refused again and again is logged at most this often (s).
REFUSAL_LOG_EVERY = 60.0


class Connections:
    """Open connections of this process, in all and per client address."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self.reserved = max(1, int(total * TRUSTED_SHARE)) if total > 1 else 0
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def admit(self, client: str, trusted: bool = False) -> str | None:
        """Count a new connection, or say why it is refused (then nothing is counted).
        An untrusted client may not take the last ``reserved`` places."""
        if self.open >= self.total or (not trusted and self.open >= self.total - self.reserved):
            return SMTPStatus.TOO_MANY_CONNECTIONS
        if self.by_client[client] >= self.per_client:
            return SMTPStatus.TOO_MANY_FROM_CLIENT
        self.open += 1
        self.by_client[client] += 1
        return None

    def worth_logging(self, client: str) -> bool:
        """Whether a refusal of ``client`` is logged now: once a minute per client at most."""
        now = time.monotonic()
        if now - self._logged.get(client, -REFUSAL_LOG_EVERY) < REFUSAL_LOG_EVERY:
            return False
        if len(self._logged) > 10_000:  # a flood from many addresses: forget the old ones
            self._logged = {c: t for c, t in self._logged.items() if now - t < REFUSAL_LOG_EVERY}
        self._logged[client] = now
        return True

    def leave(self, client: str) -> None:
        self.open -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


def auth_delay(failures: int, step: float) -> float:
    """The wait before answering the ``failures``-th failed AUTH of a connection."""
    return step * failures


class AcceptErrorThrottle:
    """The event loop's exception handler, with "accept() out of resources" logged once a minute.

    When the process runs out of descriptors, asyncio logs a traceback for every
    failed accept, once a second per listener, forever: megabytes of the same
    line while the real problem scrolls away.  One line a minute says it as well.
    """

    def __init__(self, every: float = ACCEPT_ERROR_LOG_EVERY):
        self.every = every
        self.last = -every
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.every:
            self.suppressed += 1
            return
        exc = context.get("exception")
        more = f" ({self.suppressed} more in the last {self.every:.0f} s)" if self.suppressed else ""
        log.error("cannot accept connections: %s%s; raise LimitNOFILE or lower max_connections",
                  getattr(exc, "strerror", None) or exc, more)
        self.last, self.suppressed = now, 0
