"""REQUIRETLS (RFC 8689): a message that may travel only over verified TLS.

A client gives ``MAIL FROM:<…> REQUIRETLS`` over a TLS session (the listener offers it only
there); the message is then delivered only over a session whose certificate was verified --
by tls.ini's CA (``verified``), an MTA-STS policy or DANE -- to a next hop that itself offers
REQUIRETLS (and is asked to keep the requirement), else it bounces with ``5.7.30``.

The other way round, a message with the header ``TLS-Required: No`` (RFC 8689 5) asks that
MTA-STS and DANE failures not stop it: it travels on tls.ini's own policy alone, as a TLS
report does (its route is ``tls_exempt``).  REQUIRETLS wins over the header.
"""

from __future__ import annotations

import re

#: the queue entry note that says so
REQUIRETLS_NOTE = "requiretls"
#: the queue entry note of a message whose sender said ``TLS-Required: No``
TLS_OPTIONAL_NOTE = "tls_optional"
_NOT_REQUIRED = re.compile(rb"(?im)^tls-required:[ \t]*no[ \t]*\r?$")
#: session TLS levels whose certificate was verified (mailflow/relay/tlsneed.py)
VERIFIED = ("verified", "mta-sts", "dane")


def refusal(level: str, offered: bool) -> str | None:
    """Why a session may not carry a REQUIRETLS message (a reply text), or None."""
    if level not in VERIFIED:
        return (f"5.7.30 REQUIRETLS: the session to the next hop is {level}, not verified TLS "
                "(tls.ini's CA, MTA-STS or DANE)")
    if not offered:
        return "5.7.30 REQUIRETLS: the next hop does not offer REQUIRETLS"
    return None


def tls_optional(head: bytes) -> bool:
    """Whether a message's header section (``head``: its first bytes) says ``TLS-Required: No``."""
    end = head.find(b"\r\n\r\n")
    section = head if end < 0 else head[:end]
    return b"tls-required" in section.lower() and _NOT_REQUIRED.search(section) is not None
