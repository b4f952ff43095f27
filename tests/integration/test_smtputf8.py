"""SMTPUTF8 (RFC 6531, issue 29 item 2): a UTF-8 recipient at an internationalised domain is
taken from a client that asks for it, its domain looked up by its IDNA 2008 A-label, and
delivered with SMTPUTF8 to a next hop that offers it -- or bounced 5.6.7 by mailflow when the
next hop does not (no downgrade)."""

from __future__ import annotations

import smtplib
import uuid as uuidlib

import idna

from mailflow.address import a_label
from tests.support.pipeline import ZONES, Env, module_env, with_listener

#: 例子.test, and a domain IDNA 2003 and 2008 tell apart (faß: fass / xn--fa-hia)
IDN = "例子.test"
SHARP = "faß.test"


def _setup(env: Env) -> None:
    env.dns.set_zones({**ZONES, a_label(IDN): {"MX": [(10, "mx.dest.test")]},
                       a_label(SHARP): {"MX": [(10, "mx.dest.test")]}})
    with_listener(env)


env = module_env("smtputf8", setup=_setup)


def send_utf8(env: Env, rcpt: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as c:  # type: ignore[attr-defined]
        c.ehlo()
        assert c.has_extn("smtputf8")
        c.sendmail("a@sender.test", [rcpt], body, mail_options=["SMTPUTF8"])


def test_idna_2008_a_labels():
    assert a_label(SHARP) == "xn--fa-hia.test" != SHARP.encode("idna").decode()
    assert a_label(IDN) == idna.encode(IDN).decode() and a_label("plain.test") == "plain.test"


def test_a_utf8_recipient_goes_with_smtputf8_to_a_next_hop_that_offers_it(env: Env, mx):
    tag = uuidlib.uuid4().hex[:6]
    rcpt = f"用户{tag}@{IDN}"
    server = mx()
    send_utf8(env, rcpt, f"Subject: {tag}\r\n\r\nhi\r\n".encode())
    [seen] = env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == [rcpt]], 60)
    assert "SMTPUTF8" in seen.mail_options
    sharp = f"s{tag}@{SHARP}"  # found through its IDNA 2008 name (2003's would not resolve)
    send_utf8(env, sharp, b"Subject: sharp\r\n\r\nhi\r\n")
    env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == [sharp]], 60)


def test_without_smtputf8_at_the_next_hop_it_bounces_5_6_7(env: Env, mx):
    tag = uuidlib.uuid4().hex[:6]
    rcpt = f"用户{tag}@{IDN}"
    server = mx(smtputf8=False)
    send_utf8(env, rcpt, f"Subject: {tag}\r\n\r\nhi\r\n".encode())
    notice = env.wait(lambda: [d for d in server.deliveries if d.rcpt_to == ["a@sender.test"]
                               and tag.encode() in d.data], 60)
    assert b"Status: 5.6.7" in notice[0].data
    assert not [d for d in server.deliveries if d.rcpt_to == [rcpt]]
