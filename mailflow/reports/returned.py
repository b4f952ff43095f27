"""Reports that come back to the return path: feedback-loop complaints and late bounces.

A complaint is an ARF report (RFC 5965): ``multipart/report; report-type=feedback-report``
with a human part, a ``message/feedback-report`` part of fields (``Feedback-Type``,
``Original-Mail-From``, ``Original-Rcpt-To`` …) and the original message or its headers.
A late bounce is a DSN (RFC 3464): ``multipart/report; report-type=delivery-status`` whose
``message/delivery-status`` part holds a block per recipient (``Final-Recipient``,
``Action``, ``Status``, ``Diagnostic-Code``).  The email package parses both; this module
says what in them points back at the original message: the addresses the report went to
or quotes (a VERP address among them), and the original's Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message

COMPLAINT = "complaint"
BOUNCE = "bounce"
_ADDRESS = re.compile(r"<?([^<>\s;]+@[^<>\s;]+)>?")


@dataclass(frozen=True)
class Recipient:
    """One recipient block of a DSN."""

    address: str  #: Final-Recipient (Original-Recipient when that is absent)
    action: str  #: failed, delayed, delivered, relayed, expanded
    status: str  #: 5.1.1
    diagnostic: str  #: the remote server's reply, as Diagnostic-Code quotes it ('' when none)


@dataclass(frozen=True)
class Returned:
    kind: str  #: COMPLAINT or BOUNCE
    #: addresses that may be the original's return path, the likeliest first: where the
    #: report was sent (its To, Delivered-To, X-Original-To), then what it quotes
    return_paths: list[str] = field(default_factory=list)
    message_id: str = ""  #: the original's, when the report quotes it
    feedback_type: str = ""  #: abuse, fraud, virus, other … (complaints)
    complainants: list[str] = field(default_factory=list)  #: Original-Rcpt-To, else the original's To
    recipients: list[Recipient] = field(default_factory=list)  #: (bounces)
    reporter: str = ""  #: Reporting-MTA or User-Agent


class NotAReport(ValueError):
    """Mail that is neither an ARF report nor a DSN."""


def parse(data: bytes, envelope_rcpts: list[str] | None = None) -> Returned:
    """The report in ``data``; ``envelope_rcpts``: where it was delivered to, when known."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        raise NotAReport(f"a {msg.get_content_type()} message, not a multipart/report")
    report_type = str(msg.get_param("report-type") or "").lower()
    original = _original(msg)
    paths = [*(envelope_rcpts or []), *_addresses(msg, "X-Original-To", "Delivered-To", "To")]
    message_id = str(original.get("Message-ID") or "").strip() if original is not None else ""
    if original is not None:
        paths += _addresses(original, "Return-Path")
    if report_type == "feedback-report":
        fields = _first_block(msg, "message/feedback-report")
        if fields is None:
            raise NotAReport("a feedback report without its message/feedback-report part")
        paths += _addresses(fields, "Original-Mail-From")
        complainants = _addresses(fields, "Original-Rcpt-To") or (
            _addresses(original, "To") if original is not None else [])
        return Returned(COMPLAINT, _unique(paths), message_id,
                        str(fields.get("Feedback-Type") or "").strip().lower(), complainants,
                        reporter=str(fields.get("Reporting-MTA") or fields.get("User-Agent") or "").strip())
    if report_type == "delivery-status":
        blocks = _blocks(msg, "message/delivery-status")
        if not blocks:
            raise NotAReport("a delivery status notification without its message/delivery-status part")
        recipients = [_recipient(b) for b in blocks[1:]
                      if b.get("Final-Recipient") or b.get("Original-Recipient")]
        return Returned(BOUNCE, _unique(paths), message_id, recipients=recipients,
                        reporter=str(blocks[0].get("Reporting-MTA") or "").strip())
    raise NotAReport(f"a report of type {report_type or 'none'!r}, neither feedback-report nor "
                     "delivery-status")


def _recipient(block: Message) -> Recipient:
    final = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
    diagnostic = str(block.get("Diagnostic-Code") or "")
    return Recipient(address=final.partition(";")[2].strip().strip("<>") or final.strip(),
                     action=str(block.get("Action") or "").strip().lower(),
                     status=str(block.get("Status") or "").strip(),
                     diagnostic=" ".join(diagnostic.partition(";")[2].split()) if ";" in diagnostic
                     else " ".join(diagnostic.split()))


def _blocks(msg: Message, content_type: str) -> list[Message]:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            payload = part.get_payload()
            if isinstance(payload, list):
                return [p for p in payload if isinstance(p, Message)]
            if isinstance(payload, str):  # a parser that left it as text: fields, blank-line blocks
                return [email.message_from_string(b.strip() + "\n", policy=email.policy.compat32)
                        for b in re.split(r"\r?\n\s*\r?\n", payload) if b.strip()]
    return []


def _first_block(msg: Message, content_type: str) -> Message | None:
    found = _blocks(msg, content_type)
    return found[0] if found else None


def _original(msg: Message) -> Message | None:
    """The original message (message/rfc822) or its headers (text/rfc822-headers)."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                return email.message_from_bytes(text, policy=email.policy.compat32)
    return None


def _addresses(msg: Message, *names: str) -> list[str]:
    found = []
    for name in names:
        for value in msg.get_all(name) or []:
            for match in _ADDRESS.finditer(str(value).partition(";")[2] if "rfc822;" in
                                           str(value).lower() else str(value)):
                found.append(match.group(1))
    return found


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))
