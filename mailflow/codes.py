"""Hook return codes, with Haraka's names and meanings.

A hook receiver answers with one of these (or a ``(code, value)`` pair).  The
integer values are arbitrary; only identity matters.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """What a hook receiver or the queueing API answers."""

    CONT = 900  #: no opinion, let the next receiver (or mailflow) decide
    OK = 906  #: accept / done
    DENY = 902  #: permanent refusal (5xx)
    DENYSOFT = 903  #: temporary refusal (4xx)
    DELAY = 908  #: try again after a number of seconds, not counted as a failure


CONT = Code.CONT
OK = Code.OK
DENY = Code.DENY
DENYSOFT = Code.DENYSOFT
DELAY = Code.DELAY

__all__ = ["Code", "CONT", "OK", "DENY", "DENYSOFT", "DELAY"]
