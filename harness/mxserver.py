"""A destination MX for tests: aiosmtpd on any 127.0.0.x address and port.

Replies are scripted per command (``banner EHLO HELO STARTTLS AUTH MAIL RCPT DATA DOT``),
per recipient, and optionally as a list consumed one use at a time (the last
use of a list falls back to the normal reply), e.g.
``script={"DOT": ["451 4.3.0 later", "451 4.3.0 later"]}`` refuses two
messages and accepts the third.  ``delay`` slows a command by some seconds;
``hold(command)`` keeps the next such reply back until the test releases it.

Every session is recorded: peer address, EHLO name, TLS or not, AUTH user,
each transaction's envelope and exact message bytes, and whether it ended in
QUIT.  ``high_water`` is the most simultaneous connections seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import ssl
import threading
import time
from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, auth_mechanism

from harness.dnsserver import free_port

if TYPE_CHECKING:
    import trustme


@dataclass
class Delivery:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    at: float = field(default_factory=time.time)
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)  #: every RCPT's, in order


@dataclass
class SessionRecord:
    peer: tuple[str, int]
    local: tuple[str, int]
    ehlo: str | None = None
    tls: bool = False
    auth_user: str | None = None
    mechanism: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    quit: bool = False
    closed: bool = False
    started: float = field(default_factory=time.time)


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    """Server context for test MX hosts, certified by ``ca`` for mx*.test names and loopback."""
    cert = ca.issue_cert("mx.test", "mx1.test", "mx2.test", "localhost", "127.0.0.1",
                         "127.0.0.2", "127.0.0.3")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


class _Script:
    """Scripted replies; thread-safe because tests edit them while the server runs."""

    def __init__(self, script: dict[str, Any] | None, rcpt: dict[str, Any] | None):
        self.lock = threading.Lock()
        self.script = dict(script or {})
        self.rcpt = {k.lower(): v for k, v in (rcpt or {}).items()}

    @staticmethod
    def _take(table: dict[str, Any], key: str) -> str | None:
        value = table.get(key)
        if isinstance(value, list):
            if not value:
                return None
            reply = value.pop(0)
            return reply
        return value

    def reply(self, command: str) -> str | None:
        with self.lock:
            return self._take(self.script, command)

    def rcpt_reply(self, address: str) -> str | None:
        with self.lock:
            reply = self._take(self.rcpt, address.lower())
            if reply is None:
                reply = self._take(self.script, "RCPT")
            return reply


class _Recording:
    """Shared by the SMTP and LMTP fixture protocols."""

    mx: MXServer
    record: SessionRecord

    def connection_made(self, transport: Any) -> None:
        if getattr(self, "record", None) is not None:  # aiosmtpd calls it again after STARTTLS
            super().connection_made(transport)  # type: ignore[misc]
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.record = SessionRecord(peer=(peer[0], peer[1]), local=(local[0], local[1]))
        self.mx._opened(self.record, transport)
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, error: Any) -> None:
        if not self.record.closed:
            self.record.closed = True
            self.mx._closed(self.record)
        super().connection_lost(error)  # type: ignore[misc]

    async def _handle_client(self) -> None:
        banner = self.mx.script.reply("banner")
        await self.mx._delay("banner")
        if banner is not None and banner[:1] in "45":
            await self.push(banner)  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]
            return
        await super()._handle_client()  # type: ignore[misc]

    async def smtp_STARTTLS(self, arg: str) -> None:
        reply = self.mx.script.reply("STARTTLS")
        if reply is not None:
            await self.push(reply)  # type: ignore[attr-defined]
            return
        await super().smtp_STARTTLS(arg)  # type: ignore[misc]

    async def smtp_AUTH(self, arg: str) -> None:
        reply = self.mx.script.reply("AUTH")
        if reply is not None:
            await self.push(reply)  # type: ignore[attr-defined]
            return
        await super().smtp_AUTH(arg)  # type: ignore[misc]

    async def smtp_QUIT(self, arg: str) -> None:
        self.record.quit = True
        await super().smtp_QUIT(arg)  # type: ignore[misc]

    async def smtp_DATA(self, arg: str) -> None:
        reply = self.mx.script.reply("DATA")
        await self.mx._delay("DATA")
        if reply is not None and self.envelope.rcpt_tos:  # type: ignore[attr-defined]
            await self.push(reply)  # type: ignore[attr-defined]
            return
        await super().smtp_DATA(arg)  # type: ignore[misc]

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: Any, args: list[str]) -> AuthResult:  # noqa: N802
        challenge = f"<{os.getpid()}.{time.time_ns()}@mx.test>".encode()
        response = await self.challenge_auth(challenge)  # type: ignore[attr-defined]
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        user, _, digest = response.decode().rpartition(" ")
        password = self.mx.users.get(user)
        ok = password is not None and hmac.compare_digest(
            hmac.new(password.encode(), challenge, "md5").hexdigest(), digest)
        if ok:
            self.record.auth_user, self.record.mechanism = user, "CRAM-MD5"
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


class FixtureSMTP(_Recording, SMTP):
    def _getparams(self, params: Any) -> Any:
        """With ``dsn=True``, RFC 3461's parameters are taken (and recorded with the options)."""
        found = super()._getparams(params)
        if found is not None and self.mx.dsn:
            for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                found.pop(key, None)
        if found is not None and self.mx.requiretls:
            found.pop("REQUIRETLS", None)
        return found


class FixtureLMTP(_Recording, LMTP):
    pass


class _Handler:
    def __init__(self, mx: MXServer):
        self.mx = mx

    @staticmethod
    def _record(server: Any) -> SessionRecord:
        record: SessionRecord = server.record
        return record

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        rec = self._record(server)
        rec.ehlo = hostname
        rec.tls = session.ssl is not None
        await self.mx._delay("EHLO")
        reply = self.mx.script.reply("EHLO")
        if reply is not None and reply[:1] in "45":
            return [reply]
        session.host_name = hostname
        out = list(responses)
        if self.mx.pipelining:
            out.insert(len(out) - 1, "250-PIPELINING")
        if self.mx.dsn:
            out.insert(len(out) - 1, "250-DSN")
        if self.mx.requiretls and session.ssl is not None:
            out.insert(len(out) - 1, "250-REQUIRETLS")
        if not self.mx.eightbitmime:
            out = [line for line in out if line.strip() != "250-8BITMIME"]
        return out

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        rec = self._record(server)
        rec.ehlo = hostname
        reply = self.mx.script.reply("HELO")
        if reply is not None:
            return reply
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        rec = self._record(server)
        rec.tls = session.ssl is not None
        await self.mx._delay("MAIL")
        reply = self.mx.script.reply("MAIL")
        if reply is not None and reply[:1] in "45":
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return reply or "250 2.1.0 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        await self.mx._delay("RCPT")
        reply = self.mx.script.rcpt_reply(address)
        if reply is not None and reply[:1] in "45":
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        rec = self._record(server)
        await self.mx._delay("DOT")
        data = envelope.original_content or b""
        if self.mx.lmtp:
            replies = []
            accepted = []
            for rcpt in envelope.rcpt_tos:
                reply = self.mx.script.reply(f"DOT:{rcpt.lower()}") or "250 2.0.0 delivered"
                replies.append(reply)
                if reply.startswith("2"):
                    accepted.append(rcpt)
            if accepted:
                self.mx._delivered(rec, Delivery(envelope.mail_from, accepted, data))
            return "\r\n".join(replies)
        final = self.mx.script.reply("DOT")
        if final is not None and final[:1] in "45":
            return final
        self.mx._delivered(rec, Delivery(envelope.mail_from, list(envelope.rcpt_tos), data,
                                         mail_options=list(envelope.mail_options),
                                         rcpt_options=list(envelope.rcpt_options)))
        return final or "250 2.0.0 Ok: queued"


class MXServer(Controller):
    """aiosmtpd's threaded Controller with a recording, scriptable protocol.

    Run with ``with MXServer("127.0.0.2", port) as mx:`` or ``start()``/``stop()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 script: dict[str, Any] | None = None, rcpt: dict[str, Any] | None = None,
                 tls_context: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
                 lmtp: bool = False, pipelining: bool = True, delay: dict[str, float] | None = None,
                 banner_name: str = "mx.test", dsn: bool = False, smtputf8: bool = True,
                 eightbitmime: bool = True, requiretls: bool = False):
        super().__init__(_Handler(self), hostname=host, port=port or free_port(host), ready_timeout=10)
        self.host = host
        self.script = _Script(script, rcpt)
        self.tls_context = tls_context  # STARTTLS offered when set (read at each connection)
        self.users = dict(users or {})
        self.lmtp = lmtp
        self.pipelining = pipelining
        self.delay = dict(delay or {})
        self.banner_name = banner_name
        self.dsn = dsn  #: advertise DSN (RFC 3461) and take its parameters
        self.smtputf8 = smtputf8  #: advertise SMTPUTF8 (RFC 6531) and take UTF-8 addresses
        self.eightbitmime = eightbitmime  #: advertise 8BITMIME (RFC 6152)
        self.requiretls = requiretls  #: advertise REQUIRETLS (RFC 8689) over TLS, and take it
        self.sessions: list[SessionRecord] = []
        self.current = 0
        self.high_water = 0
        self._lock = threading.Lock()
        self._transports: list[Any] = []
        self._holds: dict[str, tuple[threading.Event, threading.Event]] = {}

    # -- records ---------------------------------------------------------------------

    def _opened(self, rec: SessionRecord, transport: Any) -> None:
        with self._lock:
            self._transports.append(transport)
            self.sessions.append(rec)
            self.current += 1
            self.high_water = max(self.high_water, self.current)

    def _closed(self, rec: SessionRecord) -> None:
        with self._lock:
            self.current -= 1

    def _delivered(self, rec: SessionRecord, delivery: Delivery) -> None:
        with self._lock:
            rec.deliveries.append(delivery)

    async def _delay(self, command: str) -> None:
        seconds = self.delay.get(command)
        if seconds:
            await asyncio.sleep(seconds)
        gate = self._holds.pop(command, None)
        if gate is not None:
            reached, release = gate
            reached.set()
            while not release.is_set():
                await asyncio.sleep(0.02)

    def hold(self, command: str) -> tuple[threading.Event, threading.Event]:
        """Hold the next reply to ``command``: (reached, release) events for the test."""
        gate = (threading.Event(), threading.Event())
        self._holds[command] = gate
        return gate

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return [d for s in self.sessions for d in s.deliveries]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        """Wait until ``count`` messages were accepted; return them (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.deliveries
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{self.host}:{self.port} got {len(self.deliveries)} of {count} "
                             f"messages within {timeout} s")

    # -- serving ---------------------------------------------------------------------

    def _authenticator(self, server: Any, session: Any, envelope: Any, mechanism: str,
                       auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False)
        user = auth_data.login.decode()
        ok = self.users.get(user) == auth_data.password.decode()
        if ok:
            server.record.auth_user, server.record.mechanism = user, mechanism
        return AuthResult(success=ok, auth_data=user if ok else None)

    def factory(self) -> SMTP:
        cls = FixtureLMTP if self.lmtp else FixtureSMTP
        proto = cls(
            _Handler(self), hostname=self.banner_name, decode_data=False,
            tls_context=self.tls_context, require_starttls=False, auth_require_tls=False,
            authenticator=self._authenticator if self.users else None,
            auth_exclude_mechanism=[] if self.users else ["PLAIN", "LOGIN", "CRAM-MD5"],
            enable_SMTPUTF8=self.smtputf8, command_call_limit=None, data_size_limit=50 * 1024 * 1024)
        proto.mx = self
        return proto

    def start(self) -> MXServer:  # type: ignore[override]
        """Start serving; the Controller's own probe connection is not counted as a session."""
        super().start()
        deadline = time.monotonic() + 10
        while not all(s.closed for s in self.sessions) and time.monotonic() < deadline:
            time.sleep(0.01)  # the probe (not always the first: a client may come at once) closes
        with self._lock:  # counted from now on; a client's connection already open is not a
            # session of the test's, but is still cut at stop (else its transport is left unclosed)
            self._transports = [t for rec, t in zip(self.sessions, self._transports, strict=True)
                                if not rec.closed]
            self.sessions.clear()
            self.current = self.high_water = 0
        return self

    def _close_all(self, abort: bool) -> None:
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.abort() if abort else transport.close()

    def drop_connections(self) -> None:
        """Close every open client connection, keep listening (an idle timeout on the server side)."""
        self.loop.call_soon_threadsafe(self._close_all, False)

    def stop(self, no_assert: bool = False) -> None:
        """Stop listening and cut every client off, as a server that goes away does
        (the Controller alone leaves open connections to hang)."""
        if self._thread is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._close_all, True)
        super().stop(no_assert=True)

    def __enter__(self) -> MXServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def auth_plain(user: str, password: str) -> str:
    return b64encode(f"\0{user}\0{password}".encode()).decode()


def decode_b64(text: str) -> bytes:
    return b64decode(text)


def _shared_mx_port() -> int:
    """A port below the kernel's ephemeral range, one per xdist process of a run.

    ``free_port`` at import gave each process a port nobody held yet: two processes could
    draw the same one, and one test's MX then answered the other's mail (a scripted 451
    taken by a stranger's message). The run's id picks a block, the process its place in it;
    a port something else holds is passed over."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getppid()))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 20_000 + int(hashlib.sha256(run.encode()).hexdigest(), 16) % 100 * 100
    for port in range(start + int(worker or 0) * 7 % 100, 32_768, 100):
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.2", port))
            return port
        except OSError:
            continue
    return free_port("127.0.0.2")


#: The port the pipeline tests' MX servers share on 127.0.0.x (their outbound.ini mx_port).
MX_PORT = _shared_mx_port()
