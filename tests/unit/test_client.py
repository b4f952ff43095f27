"""The SMTP/LMTP client session against a real aiosmtpd MX on loopback (relay/client.py)."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme

from harness.mxserver import MXServer
from mailflow.config.settings import Outbound, Tls
from mailflow.relay.client import EndOfDataTimeout, NextAddress, open_session
from mailflow.relay.mx import MX, Target
from mailflow.relay.tlsneed import tls_need

SETTINGS = Outbound(timeout_end_of_data=1, enable_tls=True)
NO_POLICY = Tls()
#: the message itself: the session dot-stuffs it for the wire
MESSAGE = b"Subject: t\r\n\r\n.dotted\r\n"


@pytest.fixture
def server():
    with MXServer("127.0.0.2", 0) as mx:
        yield mx


def target(server: MXServer, exchange: str = "127.0.0.2", **mx: object) -> Target:
    return Target(mx=MX(exchange=exchange, from_dns=False, **mx), ip="127.0.0.2", port=server.port)  # type: ignore[arg-type]


def session(server: MXServer, tls: Tls = NO_POLICY, exchange: str = "127.0.0.2", **mx: object):
    t = target(server, exchange, **mx)
    return open_session(t, helo="client.test", bind=None, settings=SETTINGS, tls=tls,
                        need=tls_need(t, "client.test", tls, SETTINGS))


def test_one_transaction_gives_every_recipient_its_reply(server):
    server.script.rcpt.update({"later@x.test": "451 4.2.1 later", "gone@x.test": "550 5.1.1 gone"})
    s = session(server)
    results = s.send("a@sender.test", ["ok@x.test", "later@x.test", "gone@x.test"], MESSAGE, SETTINGS)
    assert [(r.address, r.status) for r in results] == [
        ("ok@x.test", "delivered"), ("later@x.test", "deferred"), ("gone@x.test", "failed")]
    [d] = server.wait_for(1)
    assert d.rcpt_to == ["ok@x.test"] and d.data == b"Subject: t\r\n\r\n.dotted\r\n"
    assert any(o.startswith("SIZE=") for o in d.mail_options)
    s.close()


def test_no_data_when_no_recipient_is_accepted_and_the_session_goes_on(server):
    server.script.rcpt["gone@x.test"] = "550 5.1.1 gone"
    s = session(server)
    [r] = s.send("a@sender.test", ["gone@x.test"], MESSAGE, SETTINGS)
    assert r.reply.code == 550 and server.deliveries == []
    [r] = s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)  # RSET left it usable
    assert r.status == "delivered"
    s.close()


def test_no_reply_after_the_final_dot_is_its_own_error(server):
    server.delay["DOT"] = 3
    s = session(server)
    with pytest.raises(EndOfDataTimeout):
        s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)
    s.close(quit=False)


@pytest.mark.parametrize("forced,used", [(None, "CRAM-MD5"), ("LOGIN", "LOGIN"), ("PLAIN", "PLAIN")])
def test_auth_with_smtplib_one_mechanism(server, forced, used):
    server.users["u"] = "p"
    s = session(server, auth_user="u", auth_pass="p", auth_type=forced)
    assert s.authenticated
    s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)
    server.wait_for(1)
    s.close()
    assert (server.sessions[-1].auth_user, server.sessions[-1].mechanism) == ("u", used)


def test_a_refused_banner_is_next_address(server):
    server.script.script["banner"] = "421 4.3.2 busy"
    with pytest.raises(NextAddress) as exc:
        session(server)
    assert exc.value.reply.code == 421


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_to(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("exchange,names,verified", [
    ("127.0.0.2", ("127.0.0.2",), True),  # an IP literal: checked against the IP SANs
    ("mx.client.test", ("mx.client.test",), True),  # a name: SNI and the name check
    ("127.0.0.2", ("mx.client.test",), False),
    ("other.client.test", ("mx.client.test",), False),
])
def test_verified_starttls_checks_the_mx_name_or_ip(server, ca, tmp_path, exchange, names, verified):
    server.tls_context = tls_to(ca, *names)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = Tls(ca=str(tmp_path / "ca.pem"), rejectUnauthorized=True)
    if verified:
        s = session(server, tls, exchange)
        assert s.secured and s.verified_for == exchange
        s.close()
    else:
        with pytest.raises(NextAddress) as exc:
            session(server, tls, exchange)
        assert exc.value.reply.enhanced == "4.7.5"


def test_forced_tls_refused_by_the_server_is_not_sent_in_plaintext(server, ca, tmp_path):
    server.tls_context = tls_to(ca, "127.0.0.2")
    server.script.script["STARTTLS"] = "454 4.7.0 not now"
    tls = Tls(force_tls_hosts=("127.0.0.2",), ca="")
    with pytest.raises(NextAddress) as exc:
        session(server, tls)
    assert exc.value.reply.enhanced == "4.7.4"


def test_opportunistic_starttls_refused_goes_on_in_plaintext(server, ca):
    server.tls_context = tls_to(ca, "127.0.0.2")
    server.script.script["STARTTLS"] = "454 4.7.0 not now"
    s = session(server)
    assert s.offered_tls and not s.secured
    [r] = s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)
    assert r.status == "delivered"
    s.close()


# ── issue 23 item 4: the sending host trusts neither the stuffing nor the envelope ──────

SMUGGLED = (b"Subject: t\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@x.test>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n")


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_message_that_hides_a_terminator_arrives_whole(pipelining):
    """At 7ff0849 a parcel's message went out as it came: a bare ``.`` line in it ended
    DATA, and what followed was a second transaction."""
    with MXServer("127.0.0.2", 0, pipelining=pipelining) as server:
        s = session(server)
        [r] = s.send("a@sender.test", ["ok@x.test"], SMUGGLED, SETTINGS)
        assert r.status == "delivered"
        [d] = server.wait_for(1)
        assert d.data == SMUGGLED and d.rcpt_to == ["ok@x.test"]
        s.close()
        assert len(server.deliveries) == 1


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("bad", ["a@x.test>\r\nRCPT TO:<victim@x.test", "a@x.test\nDATA", "a\0@x.test",
                                 "l" * 65 + "@x.test", "a@" + "d" * 256])
def test_an_envelope_that_would_be_two_commands_or_too_long_is_refused_unsent(bad, pipelining):
    with MXServer("127.0.0.2", 0, pipelining=pipelining) as server:
        s = session(server)
        [r] = s.send(bad, ["ok@x.test"], MESSAGE, SETTINGS)
        assert (r.reply.code, r.status) == (553, "failed") and "5.1.7" in r.reply.text
        results = s.send("a@sender.test", [bad, "ok@x.test"], MESSAGE, SETTINGS)
        assert [x.reply.code for x in results] == [553, 451]
        assert "5.1.3" in results[0].reply.text
        [r] = s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)  # the session is sound
        assert r.status == "delivered"
        [d] = server.wait_for(1)
        assert d.mail_from == "a@sender.test" and d.rcpt_to == ["ok@x.test"]
        s.close()


# ── PIPELINING: the envelope and DATA in one write (RFC 2920) ─────────────────────────────


class RawMX:
    """A hand-scripted SMTP server on 127.0.0.2 for one session: it reads until it has seen
    what each step waits for, then answers that step.  Unlike aiosmtpd, which answers each
    command before it reads the next, it can tell what a client sent before any reply."""

    def __init__(self, steps: list[tuple[bytes, bytes]]):
        self.steps = steps  # (what the client must have sent by now, the answer)
        self.received = b""
        self.failure: str | None = None
        self.listener = socket.create_server(("127.0.0.2", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(20)
        with conn:
            conn.sendall(b"220 raw.test ESMTP\r\n")
            for waits_for, answer in self.steps:
                while not self.received.endswith(waits_for):
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        self.failure = f"waited for {waits_for!r}; got {self.received!r}"
                        return
                    if not chunk:
                        return
                    self.received += chunk
                if not answer:  # hang up
                    return
                conn.sendall(answer)

    def join(self) -> None:
        self.thread.join(30)
        self.listener.close()
        assert self.failure is None, self.failure


EHLO = (b"ehlo client.test\r\n", b"250-raw.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")


def raw_session(mx: RawMX):
    t = Target(mx=MX(exchange="127.0.0.2", from_dns=False), ip="127.0.0.2", port=mx.port)
    return open_session(t, helo="client.test", bind=None, settings=SETTINGS, tls=NO_POLICY,
                        need=tls_need(t, "client.test", NO_POLICY, SETTINGS))


def test_mail_rcpt_and_data_go_in_one_write_before_any_reply():
    """The server answers nothing until DATA has come: a client that waits for the RCPT
    replies before DATA (as this one did until 2026-12-07) never gets there."""
    mx = RawMX([EHLO,
                (b"DATA\r\n", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 gone\r\n354 go on\r\n"),
                (b"\r\n.\r\n", b"250 2.0.0 queued\r\n"),
                (b"quit\r\n", b"221 bye\r\n")])
    s = raw_session(mx)
    results = s.send("a@sender.test", ["ok@x.test", "gone@x.test"], MESSAGE, SETTINGS)
    assert [(r.address, r.status) for r in results] == [("ok@x.test", "delivered"),
                                                        ("gone@x.test", "failed")]
    s.close()
    mx.join()
    assert mx.received == (EHLO[0] + b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<ok@x.test>\r\n"
                           b"RCPT TO:<gone@x.test>\r\nDATA\r\nSubject: t\r\n\r\n..dotted\r\n.\r\n"
                           b"quit\r\n")


@pytest.mark.parametrize("data_answer", [b"554 5.5.1 no valid recipients\r\n", b"354 go on\r\n"])
def test_a_pipelined_data_after_every_recipient_refused_sends_no_message(data_answer):
    """DATA's reply is read whatever it is (RFC 2920 3.1): a refusal is followed by RSET; a
    354 all the same by an empty message, never the content.  The session stays usable."""
    after = (b"RSET\r\n", b"250 2.0.0 reset\r\n") if data_answer.startswith(b"5") else \
        (b"\r\n.\r\n", b"554 5.5.1 no recipients\r\n")
    mx = RawMX([EHLO,
                (b"DATA\r\n", b"250 2.1.0 ok\r\n550 5.1.1 gone\r\n" + data_answer), after,
                (b"DATA\r\n", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n"),
                (b"\r\n.\r\n", b"250 2.0.0 queued\r\n"),
                (b"quit\r\n", b"221 bye\r\n")])
    s = raw_session(mx)
    [r] = s.send("a@sender.test", ["gone@x.test"], MESSAGE, SETTINGS)
    assert (r.reply.code, r.status) == (550, "failed")
    [r] = s.send("a@sender.test", ["ok@x.test"], MESSAGE, SETTINGS)
    assert r.status == "delivered"
    s.close()
    mx.join()
    assert mx.received.count(b"Subject: t") == 1


def test_a_server_that_hangs_up_on_the_pipelined_data_leaves_the_refusals_standing():
    mx = RawMX([EHLO, (b"DATA\r\n", b"250 2.1.0 ok\r\n550 5.1.1 gone\r\n"), (b"", b"")])
    s = raw_session(mx)
    [r] = s.send("a@sender.test", ["gone@x.test"], MESSAGE, SETTINGS)
    assert (r.reply.code, r.status) == (550, "failed")
    assert not s.alive()
    s.close()
    mx.join()
