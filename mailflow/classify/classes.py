"""The classes a reply can have: a fixed vocabulary, each with what it means.

Close to KumoMTA's bounce classes and PowerMTA's ``bounceCat``, so that an operator coming
from either finds the same words.  mailflow's own replies (a DNS failure, a refused
connection, a TLS handshake that failed) are classed too.
"""

from __future__ import annotations

CLASSES: dict[str, str] = {
    "InvalidRecipient": "the mailbox does not exist (5.1.1 and the like)",
    "BadDomain": "the recipient's domain does not exist or accepts no mail",
    "InactiveMailbox": "the mailbox exists but is disabled, suspended or gone",
    "QuotaIssues": "the mailbox is full, or the recipient over a quota",
    "MessageTooLarge": "the message is larger than the receiver takes",
    "SpamBlock": "refused as spam because of the sender (not the content)",
    "SpamContent": "refused as spam because of the content",
    "VirusDetected": "the message carries a virus or dangerous content",
    "PolicyRelated": "refused by the receiver's policy (not spam, not authentication)",
    "AuthenticationFailed": "SPF, DKIM or DMARC did not pass",
    "RateLimited": "the sender is sending too fast: slow down",
    "TooManyConnections": "too many connections from the sender at once",
    "ReputationBlock": "the sending address is on a blocklist or has a poor reputation",
    "TLSRequired": "the receiver (or the policy) requires TLS, or TLS failed",
    "ConnectionFailure": "no connection could be made or it broke",
    "DNSFailure": "a DNS lookup failed",
    "ProtocolError": "an SMTP command or its syntax was refused",
    "TransientFailure": "a temporary failure of no other class",
    "Uncategorized": "a reply no rule speaks of",
}
