"""8-bit messages made 7-bit, for a next hop that does not offer 8BITMIME (RFC 6152 3).

A message with 8-bit content must not be sent raw to such a server: each MIME part whose
body has 8-bit bytes is re-encoded -- a ``text/*`` part as quoted-printable (it stays
readable), any other as base64 -- and its ``Content-Transfer-Encoding`` header says so.
Every other header and every other part is left exactly as it was (the email package's
compat32 policy keeps headers as they came, and nothing is refolded).

Where it happens decides whether a DKIM signature survives it: a message that mailflow
signs is converted *before* signing, at queue time (mailflow/queue/submission.py), so the
signature is made on what every next hop receives; an unsigned one is kept as it came and
converted at send time, only for a next hop that needs it (mailflow/relay/client.py).
"""

from __future__ import annotations

import email
import email.encoders
import email.policy
import io
import quopri
from email.generator import BytesGenerator
from email.message import Message

_POLICY = email.policy.compat32.clone(linesep="\r\n")


def needs(data: bytes) -> bool:
    """Whether the message has 8-bit bytes anywhere."""
    return not data.isascii()


def convert(data: bytes) -> bytes:
    """The message (CRLF lines, not dot-stuffed) with every 8-bit part re-encoded in 7 bits;
    the same bytes when there is nothing to do or its header section is not ASCII (RFC 6532
    headers cannot be made 7-bit: such a message needs SMTPUTF8)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    if data.isascii() or not head.isascii():
        return data
    msg = email.message_from_bytes(data, policy=_POLICY)
    changed = False
    for part in msg.walk():
        if part.is_multipart():
            continue
        changed |= _seven_bit(part)
    if not changed:
        return data
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(msg)
    return out.getvalue()


def _seven_bit(part: Message) -> bool:
    """Re-encode one leaf part if its body is 8-bit; whether it did."""
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte in ("quoted-printable", "base64"):
        return False
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes) or body.isascii():
        return False
    del part["Content-Transfer-Encoding"]
    if part.get_content_maintype() == "text":  # readable still: only what must be is =XX
        lines = body.replace(b"\r\n", b"\n")
        part.set_payload(quopri.encodestring(lines, quotetabs=False).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
    else:
        part.set_payload(body)
        email.encoders.encode_base64(part)
    return True
