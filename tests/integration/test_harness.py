"""The test harness itself: the DNS server and the MX server behave as the suite relies on."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time

import dns.exception
import dns.resolver
import pytest

from harness.dnsserver import NO_ANSWER, SERVFAIL, DNSServer, free_port
from harness.mxserver import MXServer

ZONES = {
    "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
    "mx1.example.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "implicit.test": {"A": ["127.0.0.3"]},
    "broken.test": SERVFAIL,
    "silent.test": NO_ANSWER,
}


def resolver(server: DNSServer) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [server.host]
    r.nameserver_ports = {server.host: server.port}
    r.lifetime = 1.5
    r.timeout = 1.5
    return r


def test_dns_answers_each_kind(dns_server):
    dns_server.set_zones(ZONES)
    r = resolver(dns_server)
    mx = sorted((a.preference, a.exchange.to_text()) for a in r.resolve("example.test", "MX"))
    assert mx == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert [a.to_text() for a in r.resolve("mx1.example.test", "A")] == ["127.0.0.2"]
    assert [a.to_text() for a in r.resolve("mx1.example.test", "AAAA")] == ["::1"]
    [null] = r.resolve("nullmx.test", "MX")
    assert (null.preference, null.exchange.to_text()) == (0, ".")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("implicit.test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nowhere.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):  # SERVFAIL from the only server
        r.resolve("broken.test", "MX")
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        r.resolve("silent.test", "MX")
    assert time.monotonic() - started >= 1.0
    assert ("example.test", "MX") in dns_server.queries


def test_dns_over_tcp(dns_server):
    dns_server.set_zones(ZONES)
    r = resolver(dns_server)
    answer = r.resolve("mx1.example.test", "A", tcp=True)
    assert [a.to_text() for a in answer] == ["127.0.0.2"]


def send(mx: MXServer, rcpts: list[str], source: str = "127.0.0.1", **kw) -> smtplib.SMTP:
    s = smtplib.SMTP(mx.host, mx.port, timeout=10, source_address=(source, 0), **kw)
    s.ehlo("client.test")
    return s


def test_mx_records_sessions_and_scripted_replies():
    port = free_port("127.0.0.2")
    with MXServer("127.0.0.2", port, rcpt={"bad@d.test": "550 5.1.1 no such user",
                                           "later@d.test": "451 4.2.0 try later"},
                  script={"DOT": ["452 4.3.1 full"]}) as mx:
        s = send(mx, [], source="127.0.0.5")
        s.mail("a@s.test")
        assert s.rcpt("good@d.test")[0] == 250
        assert s.rcpt("bad@d.test") == (550, b"5.1.1 no such user")
        assert s.rcpt("later@d.test")[0] == 451
        assert s.data(b"Subject: 1\r\n\r\nx\r\n")[0] == 452  # the scripted list, first use
        s.mail("a@s.test")
        s.rcpt("good@d.test")
        assert s.data(b"Subject: 2\r\n\r\n.dot\r\n")[0] == 250  # list used up: normal reply
        s.quit()
        [delivery] = mx.wait_for(1)
        assert delivery.rcpt_to == ["good@d.test"]
        assert delivery.data.endswith(b"\r\n.dot\r\n")
        [session] = mx.sessions
        assert session.peer[0] == "127.0.0.5"
        assert session.local == ("127.0.0.2", port)
        assert session.ehlo == "client.test" and session.quit and not session.tls


def test_mx_banner_and_ehlo_refusals():
    busy = MXServer("127.0.0.3", free_port("127.0.0.3"), script={"banner": "421 4.3.2 busy"})
    with busy as mx, pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP(mx.host, mx.port, timeout=5)
    with MXServer("127.0.0.3", free_port("127.0.0.3"), script={"EHLO": "550 5.7.1 no EHLO"}) as mx, \
            smtplib.SMTP(mx.host, mx.port, timeout=5) as s:
        assert s.ehlo("c.test")[0] == 550
        assert s.helo("c.test")[0] == 250


def test_mx_starttls_and_auth(tls_ca, mx_tls_context):
    with MXServer("127.0.0.2", free_port("127.0.0.2"), tls_context=mx_tls_context,
                  users={"u": "p"}) as mx:
        s = send(mx, [])
        assert s.has_extn("starttls")
        ctx = ssl.create_default_context()
        tls_ca.configure_trust(ctx)
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.user, s.password = "u", "p"
        assert s.auth("CRAM-MD5", s.auth_cram_md5, initial_response_ok=False)[0] == 235
        s.sendmail("a@s.test", ["b@d.test"], b"Subject: t\r\n\r\nx\r\n")
        s.quit()
        mx.wait_for(1)
        assert mx.sessions[0].tls and mx.sessions[0].auth_user == "u"
        assert mx.sessions[0].mechanism == "CRAM-MD5"


def test_mx_lmtp_gives_one_reply_per_recipient():
    with MXServer("127.0.0.2", free_port("127.0.0.2"), lmtp=True,
                  script={"DOT:b@d.test": "452 4.2.2 mailbox full"}) as mx:
        s = smtplib.LMTP(mx.host, mx.port, timeout=5)
        s.ehlo("c.test")  # LHLO
        s.mail("a@s.test")
        s.rcpt("a@d.test")
        s.rcpt("b@d.test")
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(b"Subject: l\r\n\r\nx\r\n.\r\n")
        assert s.getreply() == (250, b"2.0.0 delivered")
        assert s.getreply() == (452, b"4.2.2 mailbox full")
        [delivery] = mx.wait_for(1)
        assert delivery.rcpt_to == ["a@d.test"]
        s.close()


def test_mx_counts_concurrent_connections():
    with MXServer("127.0.0.2", free_port("127.0.0.2"), delay={"MAIL": 0.5}) as mx:
        def one() -> None:
            s = send(mx, [])
            s.mail("a@s.test")
            s.quit()
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert mx.high_water == 4
        assert len(mx.sessions) == 4
