"""Bounce layout (RFC 3464) and header-injection safety, parsed back with the email package."""

from __future__ import annotations

import base64
import email
import email.policy
from pathlib import Path

from mailflow.address import parse_address
from mailflow.config.loader import DEFAULT_BOUNCE_TEMPLATE
from mailflow.queue.dsn import build, fill
from mailflow.queue.entry import EntryName
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import FAILED, NewEntry, Spool
from mailflow.queue.todo import ToDo

ORIGINAL = (b"From: alice@sender.test\r\nTo: bob@dest.test\r\nSubject: hello\r\n"
            b"Message-Id: <orig-1@sender.test>\r\n\r\nthe body\r\n")


def failed_entry(tmp_path: Path, statuses: dict, reason: str = "550 5.1.1 no such user") -> HMail:
    spool = Spool(tmp_path).ensure()
    todo = ToDo(uuid="U.1.f0", queue_time=1_700_000_000_000, domain="dest.test",
                mail_from=parse_address("alice@sender.test"),
                rcpt_to=[parse_address(a) for a in statuses], record={"rcpt_status": statuses,
                                                                      "reason": reason})
    [path] = spool.write([NewEntry(EntryName(1, 0, 1, "U.1.f0", "dest.test"), todo)], b"x")
    target = spool.dir(FAILED) / path.name
    path.rename(target)
    return HMail.load(target)


def status(text: str, code: int = 550, remote: str = "mx.dest.test") -> dict:
    return {"code": code, "status": text.split()[0], "text": text, "remote_mta": remote,
            "at": 1_700_000_100_000}


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_layout_is_rfc3464(tmp_path):
    hmail = failed_entry(tmp_path, {"bob@dest.test": status("5.1.1 no such user"),
                                    "carol@dest.test": status("5.2.2 mailbox full", code=552)})
    msg = parse(build(hmail, ORIGINAL, me="relay.test", template=DEFAULT_BOUNCE_TEMPLATE,
                      max_body=256 * 1024))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["MIME-Version"] == "1.0" and msg["Auto-Submitted"] == "auto-replied"
    assert msg["References"] == "<orig-1@sender.test>"
    assert msg["To"] == "alice@sender.test"
    text, report, original = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert "bob@dest.test, carol@dest.test" in text.get_content()
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; relay.test" and blocks[0]["Arrival-Date"]
    per = {b["Final-Recipient"]: b for b in blocks[1:]}
    assert per["rfc822; bob@dest.test"]["Status"] == "5.1.1"
    assert per["rfc822; bob@dest.test"]["Action"] == "failed"
    assert per["rfc822; bob@dest.test"]["Remote-MTA"] == "dns; mx.dest.test"
    assert per["rfc822; carol@dest.test"]["Diagnostic-Code"] == "smtp; 552 5.2.2 mailbox full"
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0]["Subject"] == "hello"


def test_large_originals_are_returned_as_headers_only(tmp_path):
    hmail = failed_entry(tmp_path, {"bob@dest.test": status("5.1.1 x")})
    big = ORIGINAL + b"y" * 300_000 + b"\r\n"
    msg = parse(build(hmail, big, me="r.test", template=DEFAULT_BOUNCE_TEMPLATE, max_body=256 * 1024))
    part = msg.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert b"yyyy" not in msg.as_bytes()


def test_no_header_injection_through_reply_or_subject(tmp_path):
    evil = "=?utf-8?b?" + base64.b64encode(b"hi\r\nX-Injected-Subject: 1").decode() + "?="
    original = ORIGINAL.replace(b"Subject: hello", b"Subject: " + evil.encode())
    hmail = failed_entry(tmp_path, {"bob@dest.test": status("5.1.1 bad\r\nX-Injected-Reply: 1")},
                         reason="550 5.1.1 bad\r\nX-Injected-Reason: 1")
    template = "Subject: Undelivered: {subject}\nX-Why: {reason}\nTo: {from}\n\n{extended_reason}\n"
    data = build(hmail, original, me="r.test", template=template, max_body=256 * 1024)
    msg = parse(data)
    for name in ("X-Injected-Subject", "X-Injected-Reply", "X-Injected-Reason"):
        assert msg[name] is None
        for part in msg.walk():
            assert part[name] is None
        assert not any(line.startswith(name.encode()) for line in data.split(b"\r\n"))
    assert msg["Subject"] == "Undelivered: hi X-Injected-Subject: 1"


def test_unknown_placeholders_become_question_marks():
    assert fill("{me} {nonsense}", {"me": "host"}) == "host ?"
