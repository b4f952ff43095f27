"""Bounce messages: RFC 3464 delivery status notifications.

The layout is ``multipart/report; report-type=delivery-status``: the text of
``outbound.bounce_message`` (its headers become the bounce's headers), a
``message/delivery-status`` part with one block per recipient, and the
original message (``text/rfc822-headers`` only, above ``max_bounce_body``).
Every value placed in a header or the template is made single-line first,
so nothing from a remote reply or the original's Subject can add a header.
"""

from __future__ import annotations

import email.header
import os
import re
import uuid
from email.utils import formatdate
from typing import Any

from mailflow.message import header_block, header_value, single_line
from mailflow.queue.hmail import HMail
from mailflow.wire.dsnparams import Dsn

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _decoded(text: str | None) -> str:
    """An RFC 2047 header value decoded, then made single-line."""
    if not text:
        return ""
    try:
        parts = email.header.decode_header(text)
        out = "".join(p.decode(c or "utf-8", "replace") if isinstance(p, bytes) else p
                      for p, c in parts)
    except (ValueError, LookupError):
        out = text
    return single_line(out)


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``{name}`` placeholders; unknown ones become ``?``; values are single-line."""
    return _PLACEHOLDER.sub(lambda m: single_line(values.get(m.group(1), "?")), template)


#: The text of a delay notice (a failure notice's is outbound.bounce_message)
DELAY_TEMPLATE = """Message-Id: <{msgid}>
Date: {date}
From: Mail Delivery System <MAILER-DAEMON@{me}>
To: {from}
Subject: Delayed Mail (still being retried)

This is the mail system at host {me}.

Your message could not be delivered yet to one or more recipients.
It has been waiting since it was queued; mailflow keeps trying, and you
will be told if it gives up. You do not have to send it again.

{recipients}: {reason}
"""


#: The text of a success notice (NOTIFY=SUCCESS, the next hop not offering DSN)
SUCCESS_TEMPLATE = """Message-Id: <{msgid}>
Date: {date}
From: Mail Delivery System <MAILER-DAEMON@{me}>
To: {from}
Subject: Successful Mail Delivery Report

This is the mail system at host {me}.

Your message was delivered to the destination below, as you asked to be told.
The next server does not offer delivery notifications: this is the last you will hear.

{recipients}: {reason}
"""


def _status_block(address: str, status: dict[str, Any], orcpt: str = "",
                  action: str = "failed") -> str:
    lines = [f"Original-Recipient: {single_line(orcpt)}"] if orcpt else []  # as the client gave it
    lines += [f"Final-Recipient: rfc822; {single_line(address)}", f"Action: {action}",
              f"Status: {status.get('status', {'failed': '5.0.0', 'delayed': '4.0.0'}.get(action, '2.0.0'))}"]
    remote = status.get("remote_mta")
    if remote and remote != "-":
        lines.append(f"Remote-MTA: dns; {single_line(remote)}")
    code, text = status.get("code") or 0, status.get("text", "")
    diagnostic = f"{code} {text}" if code else text
    lines.append(f"Diagnostic-Code: smtp; {single_line(diagnostic)}")
    if status.get("at"):
        lines.append(f"Last-Attempt-Date: {formatdate(status['at'] / 1000, localtime=True)}")
    return "\r\n".join(lines) + "\r\n"


def build(hmail: HMail, original: bytes, *, me: str, template: str, max_body: int,
          rcpts: list[str] | None = None, action: str = "failed",
          statuses: dict[str, dict[str, Any]] | None = None) -> bytes:
    """The whole bounce message (CRLF line endings, not dot-stuffed), for ``rcpts`` (default:
    every recipient of the entry) -- honouring the client's DSN parameters: RET=HDRS sends
    the original's headers only, ENVID and ORCPT are quoted back."""
    todo = hmail.todo
    statuses = statuses if statuses is not None else todo.record.get("rcpt_status", {})
    failed = rcpts if rcpts is not None else [r.address for r in todo.rcpt_to]
    asked = Dsn.from_notes(todo.notes) or Dsn()
    reason = todo.record.get("reason") or next(
        (s.get("text", "") for s in statuses.values()), "delivery failed")
    orig_msgid = header_value(original, "message-id") or ""
    msgid = f"{uuid.uuid4()}@{me}"
    values = {
        "pid": str(os.getpid()), "date": formatdate(localtime=True), "me": me,
        "from": todo.mail_from.address, "msgid": msgid, "to": ", ".join(failed),
        "reason": str(reason), "subject": _decoded(header_value(original, "subject")),
        "recipients": ", ".join(failed),
        "class": str(todo.record.get("last_class") or "Uncategorized"),  # mailflow classify
        "extended_reason": "; ".join(
            f"{a}: {statuses.get(a, {}).get('status', '5.0.0')} {statuses.get(a, {}).get('text', '')}"
            for a in failed),
    }
    text = fill(template.replace("\r\n", "\n"), values)
    head, _, body = text.partition("\n\n")
    boundary = f"mailflow-{uuid.uuid4().hex}"
    headers = [line for line in head.split("\n") if line.strip()]
    headers += ["MIME-Version: 1.0",
                f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
                "Auto-Submitted: auto-replied"]
    if orig_msgid:
        headers.append(f"References: {single_line(orig_msgid)}")
    arrival = formatdate(todo.queue_time / 1000, localtime=True)
    report = f"Original-Envelope-Id: {single_line(asked.envid)}\r\n" if asked.envid else ""
    report += f"Reporting-MTA: dns; {single_line(me)}\r\nArrival-Date: {arrival}\r\n"
    report += "".join("\r\n" + _status_block(a, statuses.get(a, {}), asked.rcpt(a).orcpt, action)
                      for a in failed)
    # a delay notice carries the headers only (RFC 3461 4.3: RET is about failures)
    if len(original) > max_body or asked.ret == "HDRS" or action != "failed":
        original_type, original_part = "text/rfc822-headers", header_block(original)
    else:
        original_type, original_part = "message/rfc822", original
    out = "\r\n".join(headers).encode() + b"\r\n\r\n"
    out += b"This is a MIME-encapsulated message.\r\n\r\n"
    out += (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + body.replace("\n", "\r\n").rstrip("\r\n") + "\r\n\r\n").encode("utf-8")
    out += f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n{report}\r\n".encode()
    out += f"--{boundary}\r\nContent-Type: {original_type}\r\n\r\n".encode()
    out += original_part.rstrip(b"\r\n") + b"\r\n\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out
