"""What may go into a MAIL or RCPT command, checked on the host that sends it.

Submission already refuses a malformed address, but the sending host is not always the
one that took the mail in (a parcel comes through the broker), and a queue file comes
from a disk that is outside the trust boundary too.  So every envelope address is
checked again right before it is written to the wire, as smtplib's ``putcmd`` checks a
command -- also on the pipelined path, which writes the commands itself: no CR, LF or
NUL (each would end the command early and start another), and RFC 5321's limits
(4.5.3.1: a local part of 64 octets, a domain of 255, a path of 256 with its brackets).
A VERP return path (``b+<entry id>=<recipient, = for @>@…``, outbound.ini verp_domain) holds
a recipient in its local part, which therefore passes 64 octets, as Postfix's VERP senders
do: only its path limit holds.
"""

from __future__ import annotations

FORBIDDEN = ("\r", "\n", "\0")
LOCAL_MAX = 64
DOMAIN_MAX = 255
PATH_MAX = 256


def problem(address: str) -> str | None:
    """Why ``address`` may not be sent in a MAIL or RCPT command; None when it may."""
    if any(c in address for c in FORBIDDEN):
        return "it contains a CR, LF or NUL"
    if len(address.encode("utf-8")) + 2 > PATH_MAX:
        return f"its path is longer than {PATH_MAX} octets"
    if not address:
        return None  # the null sender
    local, at, domain = address.rpartition("@")
    if not at:
        return "it has no domain"
    if len(local.encode("utf-8")) > LOCAL_MAX and not (local[:2].lower() == "b+" and "=" in local):
        return f"its local part is longer than {LOCAL_MAX} octets"
    if len(domain.encode("utf-8")) > DOMAIN_MAX:
        return f"its domain is longer than {DOMAIN_MAX} octets"
    return None


def command_line(command: str) -> bytes:
    """One command as it goes on the wire; ValueError if it would be more than one."""
    if any(c in command for c in FORBIDDEN):
        raise ValueError(f"a command with a CR, LF or NUL in it: {command[:80]!r}")
    return (command + "\r\n").encode("utf-8")
