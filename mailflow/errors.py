"""Delivery failures, typed by what happens next (python-slimta's model).

Every failure is temporary (the entry is deferred) or permanent (bounced),
and carries the reply that explains it: the remote server's, or mailflow's
own enhanced status and text where there was none (DNS, connection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply, or mailflow's stand-in for one (code 0 means none was received)."""

    code: int
    text: str
    command: str = ""

    @property
    def enhanced(self) -> str:
        m = _ENHANCED.match(self.text)
        if m:
            return m.group(0)
        cls = str(self.code)[0] if self.code else "4"
        return f"{cls}.0.0"

    @property
    def is_temporary(self) -> bool:
        return self.code // 100 == 4 or (self.code == 0 and self.enhanced.startswith("4"))

    @property
    def is_permanent(self) -> bool:
        return self.code // 100 == 5 or (self.code == 0 and self.enhanced.startswith("5"))

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


class DeliveryError(Exception):
    """A failure that concerns every recipient of the attempt."""

    temporary = True

    def __init__(self, reply: Reply | str, *, host: str | None = None, ip: str | None = None,
                 port: int = 0):
        self.reply = reply if isinstance(reply, Reply) else Reply(0, reply)
        self.host, self.ip, self.port = host, ip, port  #: the last address tried, if any
        super().__init__(str(self.reply))


class TemporaryError(DeliveryError):
    temporary = True


class PermanentError(DeliveryError):
    temporary = False


class Throttled(TemporaryError):
    """A traffic shaping rule says not now: the entries wait ``wait`` seconds, handed back
    without counting a failure (mailflow/relay/shaping.py)."""

    def __init__(self, wait: float, why: str, held_by: str = ""):
        self.wait = wait
        self.held_by = held_by  #: the rules, as ``queue list`` names them: ``shaping:domain:x``
        super().__init__(local_reply("4.7.0", why))


def local_reply(status: str, text: str) -> Reply:
    """mailflow's own reply, as the log and bounces show it: ``4.4.3 text``."""
    return Reply(0, f"{status} {text}")


class NothingToDo(Exception):
    """A pipeline step found nothing to do: its claim is gone (expired, handled by another
    execution), or its payload is not this queue's.  The task ends IGNORED, not SUCCESS."""


class Deferred(Exception):
    """Why a step's entries come back later: its countdown retry's reason, which Flower
    shows beside RETRY (the remote reply, and what else the step did)."""
