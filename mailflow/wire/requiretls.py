"""REQUIRETLS (RFC 8689): a message that may travel only over verified TLS.

A client gives ``MAIL FROM:<…> REQUIRETLS`` over a TLS session (the listener offers it only
there); the message is then delivered only over a session whose certificate was verified --
by tls.ini's CA (``verified``), an MTA-STS policy or DANE -- to a next hop that itself offers
REQUIRETLS (and is asked to keep the requirement), else it bounces with ``5.7.30``.
"""

from __future__ import annotations

#: the queue entry note that says so
REQUIRETLS_NOTE = "requiretls"
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
