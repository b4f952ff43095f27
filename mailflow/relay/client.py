"""One SMTP or LMTP client session, on the standard library's smtplib.

``open_session`` connects and greets (EHLO, HELO when EHLO is refused, LHLO
for LMTP), upgrades with STARTTLS and authenticates; a refused or timed-out
connection, a 4xx/5xx banner or greeting raises :class:`NextAddress` so the
caller tries the next MX address.  ``Session.send`` runs one transaction and
classifies every recipient; there is no retry logic here.

Timeouts follow RFC 5321 §4.5.3.2, one per stage (``timeout_*`` in
outbound.ini).  A message is put in wire form (CRLF, dot-stuffed) as it is sent, and
every envelope address is checked again first (relay/envelope.py).
"""

from __future__ import annotations

import dataclasses
import logging
import select
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from mailflow import sevenbit
from mailflow.config.settings import Outbound, Tls
from mailflow.errors import Reply, TemporaryError, local_reply
from mailflow.message import FileMessage, dot_unstuff, wire_blocks
from mailflow.relay import dane, envelope, tlsrpt
from mailflow.relay.mx import Target
from mailflow.relay.tlsneed import RANK, TlsNeed, why_tls
from mailflow.relay.tlspolicy import client_context
from mailflow.wire.dsnparams import Dsn
from mailflow.wire.requiretls import refusal as tls_refusal

log = logging.getLogger(__name__)


class NextAddress(Exception):
    """This address cannot take mail now; try the next one."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))


class _SoftFailure(Exception):
    """STARTTLS verification failed under a policy in testing mode: report, then go on unverified."""


class EndOfDataTimeout(Exception):
    """No reply after the final dot: the message may have been delivered; never retry elsewhere now."""


class _Timed:
    """smtplib with a connect timeout separate from the banner timeout."""

    connect_timeout: float = 30.0
    banner_timeout: float = 300.0
    source_address: Any

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), self.connect_timeout, self.source_address)
        sock.settimeout(self.banner_timeout)
        return sock


class _SMTP(_Timed, smtplib.SMTP):
    pass


class _LMTP(_Timed, smtplib.LMTP):
    pass


@dataclass(frozen=True)
class SessionKey:
    """What makes two connections interchangeable, TLS aside."""

    ip: str
    port: int
    bind: str | None
    helo: str
    auth_user: str | None
    lmtp: bool


@dataclass
class RcptResult:
    address: str
    reply: Reply

    @property
    def status(self) -> str:
        code = self.reply.code
        return "delivered" if 200 <= code < 300 else "deferred" if code // 100 == 4 else "failed"


@dataclass
class Session:
    smtp: smtplib.SMTP
    key: SessionKey
    target: Target
    secured: bool = False
    authenticated: bool = False
    last_used: float = field(default_factory=time.monotonic)
    messages: int = 0
    offered_tls: bool = False  #: the server advertised STARTTLS
    verified_for: str | None = None  #: the name (or IP) its certificate was verified for
    level: str = "none"  #: the TLS level it was opened at (LEVELS)
    need: TlsNeed | None = None  #: what it was opened for (a reopened session needs the same)
    lease: Any = None  #: its place under a shaping rule's max_connections (relay/shaping.py)
    source: str | None = None  #: the egress source (egress.ini) it was opened from, by name
    dsn_taken: bool = False  #: its last transaction passed the client's DSN parameters on
    #: whose mail it carries now: a domain, or a tenant's mail for it (relay/pool.py counts
    #: each turn's connections at an address by it)
    turn: str | None = None

    @property
    def host(self) -> str:
        return self.target.mx.exchange

    def meets(self, need: TlsNeed) -> bool:
        """Whether this session may carry a delivery with this TLS requirement: never one
        that needs more than the level it was opened at, or a name it was not verified for."""
        if not self.secured:
            return not need.must and not (need.want and self.offered_tls)
        if RANK[self.level] < RANK[need.level]:
            return False
        if need.dane is not None and need.dane.records:
            return self.level == "dane" and self.verified_for == need.name
        if need.verify:
            return self.level in ("verified", "mta-sts") and self.verified_for == need.name
        return True

    def alive(self) -> bool:
        """False when the remote end has closed or spoken unasked (a 421 before closing)."""
        sock = self.smtp.sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self, quit: bool = True) -> None:
        try:
            if quit and self.smtp.sock is not None:
                self.smtp.sock.settimeout(10)
                self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            try:
                self.smtp.close()
            except OSError:
                pass

    def _timeout(self, seconds: float) -> None:
        sock = self.smtp.sock
        if sock is not None and sock.gettimeout() != seconds:  # each setting is a system call
            sock.settimeout(seconds)

    def _reply(self, command: str) -> Reply:
        code, text = self.smtp.getreply()
        return Reply(code, text.decode("utf-8", "replace").replace("\n", " "), command)

    def send(self, mail_from: str, rcpts: list[str], message: bytes | FileMessage,
             settings: Outbound, dsn: Dsn | None = None, requiretls: bool = False) -> list[RcptResult]:
        """One transaction; every recipient gets its reply. Raises EndOfDataTimeout, or
        smtplib/OS errors when the connection broke before DATA was answered.

        ``message`` is the message itself (bytes, not dot-stuffed) or a queue file's, read
        in blocks as it goes: either way it is put in its wire form here, from what it is,
        whatever host or disk it came from -- a message carried pre-stuffed could end DATA
        early and have the rest read as commands."""
        refused = _refused_envelope(mail_from, rcpts)
        if refused is not None:
            return refused
        if isinstance(message, bytes):
            size, eight_bit = len(message), not message.isascii()
            blocks = wire_blocks([message], stuffed=False)
        elif (whole := message.small()) is not None:  # most mail: read once, in one piece
            size, eight_bit = len(whole), not whole.isascii()
            blocks = wire_blocks([whole], stuffed=True)
        else:
            size, eight_bit = message.size, message.eight_bit()
            blocks = wire_blocks(message.blocks(), stuffed=True)
        s = self.smtp
        if eight_bit and not s.has_extn("8bitmime"):  # RFC 6152 3: made 7-bit, never sent raw
            whole = message if isinstance(message, bytes) else dot_unstuff(
                message.small() or b"".join(message.blocks()))
            converted = sevenbit.convert(whole)
            if not converted.isascii():
                reply = local_reply("5.6.3", "the message has 8-bit headers and the remote server "
                                    "does not offer 8BITMIME")
                return [RcptResult(r, Reply(554, reply.text)) for r in rcpts]
            size, eight_bit, blocks = len(converted), False, wire_blocks([converted], stuffed=False)
        if requiretls:  # RFC 8689: verified TLS to a next hop that keeps the requirement, or none
            why = tls_refusal(self.level, s.has_extn("requiretls"))
            if why is not None:
                return [RcptResult(r, Reply(550, why)) for r in rcpts]
        self.messages += 1
        options = ["REQUIRETLS"] if requiretls else []
        if s.has_extn("size"):
            options.append(f"SIZE={size}")
        needs_utf8 = not all(a.isascii() for a in [mail_from, *rcpts])
        if needs_utf8:
            if not s.has_extn("smtputf8"):
                reply = local_reply("5.6.7", "the remote server does not offer SMTPUTF8")
                return [RcptResult(r, Reply(550, reply.text)) for r in rcpts]
            options.append("SMTPUTF8")
        if s.has_extn("8bitmime") and eight_bit:
            options.append("BODY=8BITMIME")
        passed_on = dsn is not None and s.has_extn("dsn")  # the next hop takes the duty over
        self.dsn_taken = passed_on
        if passed_on:
            assert dsn is not None
            options += dsn.mail_options()
        mail_cmd = f"MAIL FROM:<{mail_from}>" + "".join(" " + o for o in options)
        rcpt_cmds = [f"RCPT TO:<{r}>" + "".join(" " + o for o in dsn.rcpt_options(r))
                     if passed_on and dsn is not None else f"RCPT TO:<{r}>" for r in rcpts]
        pipelined = s.has_extn("pipelining")
        if pipelined:  # RFC 2920: the envelope and DATA in one write, the replies read in order
            self._timeout(settings.timeout_mail)
            s.send(b"".join(envelope.command_line(c) for c in [mail_cmd, *rcpt_cmds, "DATA"]))
            mail_reply = self._reply("MAIL")
            self._timeout(settings.timeout_rcpt)
            rcpt_replies = [self._reply("RCPT") for _ in rcpts]
        else:
            self._timeout(settings.timeout_mail)
            s.putcmd(mail_cmd)
            mail_reply = self._reply("MAIL")
            rcpt_replies = []
            if mail_reply.code == 250:
                self._timeout(settings.timeout_rcpt)
                for cmd in rcpt_cmds:
                    s.putcmd(cmd)
                    rcpt_replies.append(self._reply("RCPT"))
        if mail_reply.code == 250:
            results = [RcptResult(r, rep) for r, rep in zip(rcpts, rcpt_replies, strict=True)]
        else:
            results = [RcptResult(r, mail_reply) for r in rcpts]
        accepted = [res for res in results if 200 <= res.reply.code < 300]
        if not accepted:
            if pipelined:
                self._refused_data(settings)
            else:
                self._rset(settings)
            return results
        self._timeout(settings.timeout_data)
        if not pipelined:
            s.putcmd("DATA")
        data_reply = self._reply("DATA")
        if data_reply.code != 354:
            for res in accepted:
                res.reply = data_reply
            self._rset(settings)
            return results
        self._timeout(settings.timeout_data_block)
        last = b""
        for block in blocks:  # the final dot goes with the last block: a write of its own would
            if last:          # wait for the ACK of the one before (Nagle), 40 ms a message
                s.send(last)
            last = block
        s.send(last + b".\r\n")
        self._timeout(settings.timeout_end_of_data)
        try:
            if isinstance(s, smtplib.LMTP):
                for res in accepted:  # RFC 2033 4.2: one reply per accepted recipient, in order
                    res.reply = self._reply("DATA")
            else:
                final = self._reply("DATA")
                for res in accepted:
                    res.reply = final
        except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
            # smtplib reports a read timeout as a disconnection; either way the message
            # may have been delivered, so the caller defers and never tries elsewhere now.
            raise EndOfDataTimeout(str(exc)) from exc
        return results

    def _refused_data(self, settings: Outbound) -> None:
        """The pipelined DATA's reply when no recipient was accepted: the refusal it should be
        (then RSET), or a 354 all the same, answered by an empty message (RFC 2920 3.1) whose
        reply means nothing -- no recipient takes it.  A server that closes here has said
        what mattered already (the envelope's replies): the session is dead, not the results."""
        try:
            self._timeout(settings.timeout_data)
            if self._reply("DATA").code != 354:
                self._rset(settings)
                return
            self._timeout(settings.timeout_end_of_data)
            self.smtp.send(b".\r\n")
            if not isinstance(self.smtp, smtplib.LMTP):  # LMTP: a reply per accepted recipient
                self._reply("DATA")
        except (smtplib.SMTPException, OSError) as exc:
            log.info("%s: the connection ended after a refused envelope: %s", self.host, exc)
            self.smtp.close()

    def _rset(self, settings: Outbound) -> None:
        self._timeout(settings.timeout_command)
        self.smtp.putcmd("RSET")
        self._reply("RSET")


def _refused_envelope(mail_from: str, rcpts: list[str]) -> list[RcptResult] | None:
    """Every recipient's refusal when the sender may not be sent, each bad recipient's when
    one may not; None when the whole envelope may go (then nothing is refused here)."""
    why = envelope.problem(mail_from)
    if why is not None:
        reply = local_reply("5.1.7", f"the sender address may not be sent: {why}")
        return [RcptResult(r, Reply(553, reply.text)) for r in rcpts]
    bad = {r: envelope.problem(r) for r in rcpts}
    if not any(bad.values()):
        return None
    results = []
    for rcpt, problem in bad.items():
        text = local_reply("5.1.3", f"the recipient address may not be sent: {problem}").text
        results.append(RcptResult(rcpt, Reply(553, text) if problem else
                                  Reply(451, local_reply("4.3.0", "sent apart from a bad "
                                                         "recipient of its entry").text)))
    return results


def _auth_mechanisms(smtp: smtplib.SMTP) -> list[str]:
    return smtp.esmtp_features.get("auth", "").upper().split()


#: smtplib's own AUTH methods, by mechanism, in the order of preference.
_AUTH_METHODS = {"CRAM-MD5": "auth_cram_md5", "PLAIN": "auth_plain", "LOGIN": "auth_login"}


def _authenticate(smtp: smtplib.SMTP, user: str, password: str, forced_type: str | None) -> str | None:
    """AUTH once, with smtplib's own methods; None when the server offers no mechanism.

    The mechanism is get_mx's ``auth_type``, else the best offered.  Not
    ``smtplib.login``: after a refusal it tries every other mechanism too, which a
    smarthost rightly counts as password guessing.
    """
    offered = _auth_mechanisms(smtp)
    if forced_type:
        mech: str | None = forced_type.upper()
    else:
        mech = next((m for m in _AUTH_METHODS if m in offered), None)
    if mech is None:
        return None
    smtp.user, smtp.password = user, password
    smtp.auth(mech, getattr(smtp, _AUTH_METHODS[mech]), initial_response_ok=(mech == "PLAIN"))
    return mech


def open_session(target: Target, *, helo: str, bind: str | None, settings: Outbound, tls: Tls,
                 need: TlsNeed) -> Session:
    """Connect, greet, STARTTLS and AUTH as configured; raise NextAddress or TemporaryError.

    Under an MTA-STS policy in testing mode, a certificate that does not verify is
    reported and the address is tried again without verification (delivery as usual).
    """
    try:
        return _open(target, helo=helo, bind=bind, settings=settings, tls=tls, need=need)
    except _SoftFailure:
        lenient = dataclasses.replace(need, verify=False, soft=False, level="none", policy=None)
        return _open(target, helo=helo, bind=bind, settings=settings, tls=tls, need=lenient)


def _open(target: Target, *, helo: str, bind: str | None, settings: Outbound, tls: Tls,
          need: TlsNeed) -> Session:
    mx = target.mx
    cls = _LMTP if mx.using_lmtp else _SMTP
    smtp = cls(local_hostname=helo, source_address=(bind, 0) if bind else None)
    smtp.connect_timeout = settings.connect_timeout
    smtp.banner_timeout = settings.timeout_banner
    key = SessionKey(target.ip, target.port, bind, helo, mx.auth_user, mx.using_lmtp)
    where = f"{mx.exchange}[{target.ip}]:{target.port}"
    try:
        code, banner = smtp.connect(target.ip, target.port)
        if code != 220:
            smtp.close()
            raise NextAddress(Reply(code, banner.decode("utf-8", "replace"), "banner"))
        assert smtp.sock is not None
        smtp.sock.settimeout(settings.timeout_command)
        _greet(smtp, helo, mx.using_lmtp)
        session = Session(smtp=smtp, key=key, target=target, offered_tls=smtp.has_extn("starttls"),
                          need=need)
        if need.want and session.offered_tls:
            _starttls(session, tls, need, where)
        if need.policy is not None and not session.secured:
            _note(need, target, "starttls-not-supported", "STARTTLS not offered or refused")
        if need.must and not session.secured:
            smtp.close()
            # a published policy's failure is 4.7.5 (as a certificate that does not verify);
            # tls.ini's own force_tls_hosts keeps 4.7.4, "TLS required but not offered"
            status = "4.7.5" if need.policy is not None else "4.7.4"
            raise NextAddress(local_reply(status, f"{where} must use TLS ({why_tls(need)}) but "
                                          "did not start it"))
        if session.secured:
            _greet(smtp, helo, mx.using_lmtp)  # RFC 3207 4.2: forget what was said in plaintext
        if mx.auth_user:
            try:
                mech = _authenticate(smtp, mx.auth_user, mx.auth_pass or "", mx.auth_type)
            except smtplib.SMTPAuthenticationError as exc:
                smtp.close()
                raw: Any = exc.smtp_error
                why = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                raise TemporaryError(Reply(exc.smtp_code, why, "AUTH"), host=mx.exchange,
                                     ip=target.ip) from None
            if mech is None:
                log.warning("%s offers no AUTH; sending without authentication", where)
            session.authenticated = mech is not None
        return session
    except smtplib.SMTPServerDisconnected as exc:
        smtp.close()
        raise NextAddress(local_reply("4.4.2", f"{where} closed the connection: {exc}")) from None
    except TimeoutError:
        smtp.close()
        raise NextAddress(local_reply("4.4.1", f"connection to {where} timed out")) from None
    except OSError as exc:
        smtp.close()
        raise NextAddress(local_reply("4.4.1", f"connection to {where} failed: "
                                      f"{exc.strerror or exc}")) from None


def _greet(smtp: smtplib.SMTP, helo: str, lmtp: bool) -> None:
    """EHLO (LHLO for LMTP), HELO when EHLO is not understood; NextAddress when refused."""
    code, text = smtp.ehlo(helo)
    if code // 100 == 5 and not lmtp:  # EHLO not understood: RFC 5321 3.2
        code, text = smtp.helo(helo)
    if code != 250:
        smtp.close()
        raise NextAddress(Reply(code, text.decode("utf-8", "replace"), "EHLO"))


def _starttls(session: Session, tls: Tls, need: TlsNeed, where: str) -> None:
    """STARTTLS, verifying the certificate for ``need.name`` when asked; NextAddress with 4.7.x.

    smtplib hands its ``_host`` to ``wrap_socket`` as ``server_hostname``: the MX name
    gives SNI and the name check; an IP literal gives no SNI (RFC 6066 3) and is
    checked against the certificate's IP addresses.  The session was connected by
    IP, so without this there would be no name at all to check.
    """
    smtp = session.smtp
    smtp._host = need.name  # type: ignore[attr-defined]
    try:
        smtp.starttls(context=client_context(tls, need.verify and need.dane is None))
    except ssl.SSLCertVerificationError as exc:
        smtp.close()
        _note(need, session.target, tlsrpt.verify_result(exc.verify_code), exc.verify_message)
        if need.soft:
            log.info("certificate of %s not trusted for %s (MTA-STS testing: delivering without "
                     "verification): %s", where, need.name, exc.verify_message)
            raise _SoftFailure() from None
        raise NextAddress(local_reply("4.7.5", f"certificate of {where} not trusted for "
                                      f"{need.name}: {exc.verify_message}")) from None
    except (ssl.SSLError, ValueError) as exc:
        smtp.close()
        raise NextAddress(local_reply("4.7.5", f"TLS handshake with {where} failed: {exc}")) \
            from None
    except smtplib.SMTPResponseException as exc:  # refused (RFC 3207 454): plaintext, if it may
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        log.info("%s refused STARTTLS: %d %s", where, exc.smtp_code, text)
        return
    if need.dane is not None and need.dane.records:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        if not dane.matches(smtp.sock, need.dane):
            smtp.close()
            _note(need, session.target, "validation-failure", "no TLSA record matches")
            raise NextAddress(local_reply("4.7.5", f"certificate of {where} matches no TLSA record "
                                          f"of {need.dane.name} (DANE)"))
    session.secured = True
    session.level = need.achieves
    session.verified_for = need.name if session.level != "opportunistic" else None
    _note(need, session.target, tlsrpt.SUCCESS)


def _note(need: TlsNeed, target: Target, result: str, detail: str = "") -> None:
    if need.policy is not None:
        tlsrpt.note(need.policy, target.mx.exchange, target.ip, result, detail)
