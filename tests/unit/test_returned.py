"""Reports that come back: VERP addresses both ways, ARF and DSN parsing on the RFCs' own
examples and on real generators' shapes, and the index of what was queued."""

from __future__ import annotations

import pytest

from mailflow.queue import verp
from mailflow.queue.tracking import Index, Sent, message_id_of
from mailflow.reports.returned import BOUNCE, COMPLAINT, NotAReport, parse

ENTRY = "0D3C8E2A-1B4C-4D5E-8F90-A1B2C3D4E5F6.tdeadbeef.1"


def test_a_verp_address_carries_the_entry_and_the_recipient():
    address = verp.sender("news@example.com", ENTRY, ["first.last=x@dest.example"], "bounces.example.com")
    assert address == f"b+{ENTRY}=first.last=x=dest.example@bounces.example.com"
    assert verp.parse(f"<{address.upper().replace('BOUNCES', 'Bounces')}>", "bounces.example.com") \
        is not None
    assert verp.parse(address, "bounces.example.com") == (ENTRY, "first.last=x@dest.example")


@pytest.mark.parametrize("mail_from, rcpts", [
    ("", ["u@dest.example"]),  # a bounce: its null sender stays null
    ("news@example.com", ["a@dest.example", "b@dest.example"]),  # one return path cannot say which
])
def test_no_verp_where_it_cannot_apply(mail_from, rcpts):
    assert verp.sender(mail_from, ENTRY, rcpts, "bounces.example.com") == mail_from
    assert verp.sender("news@example.com", ENTRY, ["u@dest.example"], "") == "news@example.com"


@pytest.mark.parametrize("address", [
    f"b+{ENTRY}=u=dest.example@other.example",  # another domain
    "b+../../etc=u=dest.example@bounces.example.com",  # not an entry id
    f"c+{ENTRY}=u=dest.example@bounces.example.com",
    f"b+{ENTRY}@bounces.example.com",
    f"b+{ENTRY}=nodomain@bounces.example.com",
])
def test_what_is_not_a_verp_address_of_ours_is_none(address):
    assert verp.parse(address, "bounces.example.com") is None


#: RFC 5965's example (section B.1), sent to a VERP address
ARF = f"""From: <abuse@example.net>
To: <b+{ENTRY}=user=example.com@bounces.example.com>
Subject: FW: Earn money
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <user@example.com>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
--part1_13d.2e68ed54_boundary--
""".replace("\n", "\r\n").encode()

#: RFC 3464's example (appendix, a failure), as Postfix writes one
DSN = b"""From: MAILER-DAEMON@mx.dest.example (Mail Delivery System)
To: <news@example.com>
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
    boundary="RAA14128.773615765/CS.UTK.EDU"

--RAA14128.773615765/CS.UTK.EDU
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--RAA14128.773615765/CS.UTK.EDU
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.dest.example
Arrival-Date: Fri, 4 Dec 2026 10:30:00 +0000

Final-Recipient: rfc822; louisl@larry.slip.umd.edu
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <louisl@larry.slip.umd.edu>... User unknown
Remote-MTA: dns; larry.slip.umd.edu

Final-Recipient: rfc822; pizza@larry.slip.umd.edu
Action: delayed
Status: 4.0.0

--RAA14128.773615765/CS.UTK.EDU
Content-Type: text/rfc822-headers

Return-Path: <news@example.com>
From: news@example.com
Message-ID: <orig-42@example.com>
Subject: hello

--RAA14128.773615765/CS.UTK.EDU--
"""


def test_an_arf_report_is_a_complaint_pointing_at_its_verp_address_first():
    report = parse(ARF)
    assert report.kind == COMPLAINT and report.feedback_type == "abuse"
    assert report.return_paths[0] == f"b+{ENTRY}=user=example.com@bounces.example.com"
    assert "somespammer@example.net" in report.return_paths  # Original-Mail-From, quoted
    assert report.complainants == ["user@example.com"]
    assert report.message_id == "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>"
    assert report.reporter == "dns; mail.example.com"


def test_a_dsn_is_a_bounce_with_a_block_per_recipient():
    report = parse(DSN, ["late@bounces.example.com"])
    assert report.kind == BOUNCE and report.message_id == "<orig-42@example.com>"
    assert report.return_paths[:2] == ["late@bounces.example.com", "news@example.com"]
    failed, delayed = report.recipients
    assert (failed.address, failed.action, failed.status) == ("louisl@larry.slip.umd.edu", "failed", "5.1.1")
    assert failed.diagnostic == "550 5.1.1 <louisl@larry.slip.umd.edu>... User unknown"
    assert (delayed.action, delayed.diagnostic) == ("delayed", "")


@pytest.mark.parametrize("data, fragment", [
    (b"From: a@b\r\nSubject: hi\r\n\r\nhello\r\n", "a text/plain message"),
    (b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n"
     b"--x\r\n\r\nread\r\n--x--\r\n", "'disposition-notification'"),
    (b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n"
     b"--x\r\nContent-Type: text/plain\r\n\r\nno fields\r\n--x--\r\n", "without its message/feedback-report"),
])
def test_what_is_not_a_report_says_why(data, fragment):
    with pytest.raises(NotAReport) as caught:
        parse(data)
    assert fragment in str(caught.value)


def test_the_index_finds_a_message_by_id_and_message_id_newest_first(tmp_path):
    index = Index(tmp_path)
    old = Sent(id="A1", message_id="<m1@x>", mail_from="s@x", entries={"A1.1": ["u@d"]}, tenant="acme")
    index.add(old, now=86400 * 100)
    index.add(Sent(id="A2", message_id="<m2@x>", mail_from="s@x", entries={"A2.1": ["v@d", "w@d"]},
                   campaign="spring"), now=86400 * 101)
    assert index.by_id("A1.1") == old
    assert index.by_message_id("m2@x").recipients() == ["v@d", "w@d"]  # type: ignore[union-attr]
    assert index.by_message_id("<nothing@x>") is None and index.by_id("A3") is None
    index.prune(now=86400 * 131)  # thirty days on: the first day goes
    assert index.by_id("A1") is None and index.by_id("A2") is not None


def test_the_message_id_is_read_from_the_header_section_only():
    assert message_id_of(b"From: a\r\nMessage-ID: <x@y>\r\n\r\nbody") == "<x@y>"
    assert message_id_of(b"From: a\r\n\r\nMessage-ID: <in-body@y>\r\n") == ""
