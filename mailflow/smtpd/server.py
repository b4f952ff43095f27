"""The listener: aiosmtpd's protocol with mailflow's connect hook, CRAM-MD5 and replies.

aiosmtpd answers a few refusals without an enhanced status code; ``push``
maps those fixed texts to the RFC 3463 forms operators grep for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import ssl
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, auth_mechanism, syntax

from mailflow import hooks
from mailflow.codes import DENY, DENYSOFT
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.config.settings import format_hostport
from mailflow.config.state import state_dir
from mailflow.message import Body
from mailflow.smtpd.acl import is_loopback
from mailflow.smtpd.auth import FlatFileAuthenticator, cram_challenge, cram_user, cram_verify
from mailflow.smtpd.data import read_data
from mailflow.smtpd.guessing import LOCKED_OUT, Guesses
from mailflow.smtpd.handler import SubmissionHandler, connection_for, logs_safe
from mailflow.smtpd.limits import AcceptErrorThrottle, Connections, auth_delay
from mailflow.smtpd.statuscodes import AIOSMTPD_REPLIES, SMTPStatus
from mailflow.smtpd.tables import UNLISTED, ListedOnce, Tables, Unlisted
from mailflow.util import tls
from mailflow.util.descriptors import raise_descriptor_limit
from mailflow.wire import dsnparams

log = logging.getLogger(__name__)

#: ``<local@domain>`` as nearly every client writes it: a dot-atom local part and a domain
#: of letters, digits and hyphens, which the full parser would read the same way.
_PLAIN_PATH = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


#: MAIL and RCPT parameters the listener knows: aiosmtpd's (SIZE, BODY, SMTPUTF8), RFC 3461's, RFC 8689's
KNOWN_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "REQUIRETLS", *dsnparams.MAIL_KEYS,
                              *dsnparams.RCPT_KEYS})


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of a MAIL or RCPT argument in the plain form, without the email
    package's header parser (27 µs a call, twice a message); None for anything else --
    comments, quoted local parts, address literals, source routes -- which the parser reads."""
    found = _PLAIN_PATH.match(arg)
    if found is None:
        return None
    rest = arg[found.end():]
    params = rest.lstrip(" \t")
    if params.startswith("(") or (rest and rest == params):
        return None
    return found.group(1), params


class MailflowSMTP(ListedOnce, SMTP):
    """aiosmtpd's SMTP with the ``connect`` hook, CRAM-MD5 and a block-wise DATA reader."""

    #: aiosmtpd's command and AUTH tables are built from these names (tables.py)
    TABLE_PREFIXES = ("smtp_", "auth_")

    #: aiosmtpd sizes the stream's buffer by this; DATA reads whole blocks from it (see
    #: data.py, which keeps the 1001-byte line limit itself).  Command lines are still
    #: held to command_size_limit.
    line_length_limit = 64 * 1024

    def __init__(self, handler: SubmissionHandler, *, cfg: Config, connections: Connections,
                 guesses: Guesses, tables: Tables | None = None, **kwargs: Any):
        """``tables``: aiosmtpd's tables as a protocol built with the same arguments has them
        (tables.py), given rather than built again; without, aiosmtpd builds its own."""
        self.mf_cfg = cfg
        self.mf_connections = connections
        self.mf_guesses = guesses
        self.mf_client: str | None = None  # counted in connections while set
        self.mf_auth_failures = 0
        self.mf_in_auth = False
        self.mf_idle_deadline = 0.0  # when an idle connection is closed (_reset_timeout)
        if tables is None:
            super().__init__(handler, **kwargs)
            return
        setattr(self, UNLISTED, True)
        super().__init__(Unlisted(), **kwargs)
        delattr(self, UNLISTED)
        self.event_handler = handler
        tables.give(self)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timeout without a new timer for every command: the deadline moves,
        the timer stays, and when it fires early it waits out the rest (a timer made and
        another cancelled per command, six or more a message, filled the loop's heap)."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self.mf_idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        if self.loop.time() < self.mf_idle_deadline:  # a command came meanwhile
            self._timeout_handle = self.loop.call_at(self.mf_idle_deadline, self._idle_timer_fired)
            return
        self._timeout_cb()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of a MAIL or RCPT argument, and its parameters less the DSN ones."""
        address, params = self._parse_path(arg)
        return (address, params) if address is None or params is None else \
            (address, self._take_params(params))

    def _parse_path(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing for MAIL and RCPT, without the typing Protocol class it
        defines on every call (class creation: about 5 % of smtpd's CPU per message), and the
        plain form read without the email package's parser."""
        if not arg:
            return "", ""
        found = plain_path(arg)
        if found is None:
            parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
            try:
                token, rest = parse(arg)
                found = token.addr_spec, rest
            except Exception:  # HeaderParseError, and the stdlib parser's own crashes on a
                return None, None  # client's bytes: IndexError ("<-@"), AttributeError, ...
        if self.local_part_limit and len(found[0].rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return found

    def _take_params(self, params: str) -> str:
        """The DSN parameters (RFC 3461) taken out of a MAIL or RCPT command's, as given --
        aiosmtpd would refuse them, and upper-case ORCPT's address -- for the handler to
        check (``mf_dsn``: what was found, or the reply refusing it); the others returned."""
        self.mf_dsn: tuple[dict[str, str], str | None] = ({}, None)
        self.mf_requiretls = False
        if not params.strip():
            return params
        words = params.split()
        if any(w.upper() == "REQUIRETLS" for w in words):  # RFC 8689: the handler decides
            self.mf_requiretls = True
            words = [w for w in words if w.upper() != "REQUIRETLS"]
            params = " ".join(words)
        unknown = [w for w in words if w.partition("=")[0].upper() not in KNOWN_PARAMETERS]
        if unknown:  # aiosmtpd's own refusal would not say which
            self.mf_dsn = ({}, f"555 5.5.4 {unknown[0].partition('=')[0][:40]} parameter not "
                           "recognized or not implemented")
            return ""
        try:
            found, rest = dsnparams.split(words, (*dsnparams.MAIL_KEYS, *dsnparams.RCPT_KEYS))
        except dsnparams.ParamError as exc:
            self.mf_dsn = ({}, str(exc))
            return ""
        self.mf_dsn = (found, None)
        return " ".join(rest) if found else params

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = AIOSMTPD_REPLIES.get(status, status)
            if self.mf_in_auth and status[:3] in ("535", "501"):
                await self._auth_failed()
        await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        if self.mf_client is not None:
            self.mf_connections.leave(self.mf_client)
            self.mf_client = None
        super().connection_lost(error)
        if self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._mf_forget)

    def _mf_forget(self, _task: object) -> None:
        """Drop what ties the connection to itself once it has ended, so that reference
        counting frees it: its tables hold methods bound to it, and its writer, the stream's
        callback and its ended task (whose CancelledError keeps the frames) point back at it.
        Left so, each connection was about 60 objects for the cyclic collector, which then
        ran every few messages (a collection of the young objects per ten messages)."""
        self._smtp_methods = {}
        self._auth_methods = {}
        self._handler_coroutine = None
        self._writer = None  # type: ignore[assignment]
        self._client_connected_cb = None

    async def _handle_client(self) -> None:
        assert self.session is not None
        conn = connection_for(self.session, self.transport, self.mf_cfg)
        refusal = self.mf_connections.admit(conn.remote_ip, trusted=conn.relaying)
        if refusal is not None:
            if self.mf_connections.worth_logging(conn.remote_ip):
                log.warning("connection refused client=%s: %s (logged once a minute per client)",
                            conn.remote_ip, refusal[10:])
            await self._refuse(refusal)
            return
        self.mf_client = conn.remote_ip
        self.session.mf_connection = conn  # type: ignore[attr-defined]
        answer = await hooks.decide_off_loop(hooks.connect, connection=conn)
        if answer.code is DENY:
            await self._refuse(f"554 {answer.value or '5.7.1 Connection refused'}")
            return
        if answer.code is DENYSOFT:  # a receiver's own DENYSOFT, or its error: this client only
            await self._refuse("421 4.3.0 Service not available, try again later" if answer.failed
                               else f"421 {answer.value or '4.3.0 Try again later'}")
            return
        await super()._handle_client()

    def _create_session(self) -> Session:
        """aiosmtpd starts a new session after STARTTLS (RFC 3207 4.2: the client's state is
        forgotten); what mailflow knows of the connection -- its address, whether it may
        relay -- is the same connection's, so it goes on with the new session."""
        session = super()._create_session()
        conn = getattr(self.session, "mf_connection", None) if self.session is not None else None
        if conn is not None:
            session.mf_connection = conn  # type: ignore[attr-defined]
        return session

    async def _refuse(self, reply: str) -> None:
        """Say why, then close: the client gets a reason, not a reset."""
        try:
            await super().push(reply)
        finally:
            if self.transport is not None:
                self.transport.close()

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's naming
        """aiosmtpd's AUTH, with failures delayed, logged, and limited per connection; a
        client address locked out for guessing (smtpd/guessing.py) is answered 454 at once."""
        if self.mf_client is not None and arg and not (self.session and self.session.authenticated):
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, self.mf_guesses.locked_out, self.mf_client):
                await self.push(LOCKED_OUT)
                return
        self.mf_in_auth = True
        try:
            await super().smtp_AUTH(arg)
        finally:
            self.mf_in_auth = False
        if self.mf_auth_failures >= self.mf_cfg.smtp.auth_max_failures:
            await self._refuse(SMTPStatus.TOO_MANY_AUTH_FAILURES)

    async def _auth_failed(self) -> None:
        """One more failed AUTH: a log line (client and user, never the password), then a wait."""
        assert self.session is not None
        self.mf_auth_failures += 1
        peer = self.session.peer if isinstance(self.session.peer, tuple) else ("?",)
        user = getattr(self.session, "mf_auth_tried", None) or "-"
        log.warning("auth failed client=%s user=%s failures=%d", peer[0], logs_safe(user),
                    self.mf_auth_failures)
        self.session.mf_auth_tried = None  # type: ignore[attr-defined]
        await asyncio.sleep(auth_delay(self.mf_auth_failures, self.mf_cfg.smtp.auth_fail_delay))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's naming
        """aiosmtpd's DATA (same checks and replies) with the body read by ``read_data``."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = Body(directory=str(self.mf_cfg.queue_path()))
        try:
            try:
                data = await read_data(self._reader, self.data_size_limit, body)
            except (asyncio.CancelledError, asyncio.IncompleteReadError):
                self._writer.close()  # the connection went away during DATA
                raise
            if data.too_much or data.too_long:
                self._set_post_data_state()
                await self.push("552 Error: Too much mail data" if data.too_much
                                else "500 Line too long (see RFC5321 4.5.3.1.6)")
                return
            if data.failed is not None:
                self._set_post_data_state()
                await self.push(spool_failure(data.failed, "keeping the message"))
                return
            self.envelope.mf_body = body  # type: ignore[attr-defined]
            try:
                status = await self._call_handler_hook("DATA")
            except Exception as exc:  # never aiosmtpd's generic "500 Error: (...)"
                status = spool_failure(exc, "queueing the message")
        finally:
            with contextlib.suppress(OSError):
                body.close()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        challenge = cram_challenge(self.hostname)
        response = await self.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(response, bytes)
        token, locked = self.mf_guesses.attempt(str(self.mf_client), cram_user(response))
        if locked is not None:
            return AuthResult(success=False, handled=False, message=LOCKED_OUT)
        user = cram_verify(self.mf_cfg.auth.users, challenge, response)
        if user is not None:
            self.mf_guesses.forgive(token, str(self.mf_client), cram_user(response))
        if user is None:
            self.session.mf_auth_tried = cram_user(response)  # type: ignore[union-attr]
        return AuthResult(success=user is not None, handled=False, auth_data=user)


def spool_failure(exc: BaseException, doing: str) -> str:
    """The reply for a message that could not be kept: ``452 4.3.1`` when the disk (or a
    quota) is full, ``451 4.3.0`` for anything else; logged, with the traceback for the
    unexpected."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.error("no space %s: %s", doing, exc)
        return "452 4.3.1 Insufficient system storage"
    log.error("error %s", doing, exc_info=(type(exc), exc, exc.__traceback__))
    return "451 4.3.0 Error queueing the message, try again later"


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The STARTTLS context from ``tls.ini`` [main]; None (no STARTTLS) when no cert is set up."""
    if not tls.has_certificate(cfg.tls_main):
        log.info("no TLS certificate at %s / %s: STARTTLS not offered", cfg.tls_main.cert,
                 cfg.tls_main.key)
        return None
    return tls.context(cfg.tls_main, server=True)


def auth_require_tls(cfg: Config, listen_host: str) -> bool:
    """``smtp.ini`` ``auth_require_tls``; unset means "yes, except on a loopback listener"."""
    if cfg.smtp.auth_require_tls is not None:
        return cfg.smtp.auth_require_tls
    return not is_loopback(listen_host)


def protocol_factory(cfg: Config, listen_host: str, context: ssl.SSLContext | None,
                     connections: Connections | None = None) -> Callable[[], MailflowSMTP]:
    handler = SubmissionHandler(cfg)
    shared = connections or Connections(cfg.smtp.max_connections, cfg.smtp.max_connections_per_client)
    limit, window = cfg.smtp.auth_max_failures_window
    guesses = Guesses(limit, window, state_dir() / "auth-failures.json", cfg.shared_redis())
    authenticator = FlatFileAuthenticator(cfg.auth, guesses)
    excluded = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5")
                if m not in cfg.auth.methods or not cfg.auth.users]
    require_tls = auth_require_tls(cfg, listen_host)

    def build(tables: Tables | None) -> MailflowSMTP:
        return MailflowSMTP(
            handler, cfg=cfg, connections=shared, guesses=guesses, tables=tables, hostname=cfg.me,
            ident="mailflow ESMTP", data_size_limit=cfg.smtp.max_message_size, decode_data=False,
            enable_SMTPUTF8=True, tls_context=context, require_starttls=False,
            auth_require_tls=require_tls, authenticator=authenticator,
            auth_exclude_mechanism=excluded, command_call_limit=None,
            loop=asyncio.get_running_loop())  # aiosmtpd would look it up the long way each time

    built: list[Tables] = []

    def factory() -> MailflowSMTP:
        if not built:  # the first connection's: a protocol of its own, built the stock way
            built.append(Tables.of(build(None)))
        return build(built[0])

    return factory


async def start(cfg: Config, announce: Callable[[str], None] = print, *,
                reuse_port: bool = False) -> list[asyncio.Server]:
    """Open every ``smtp.ini`` listener and announce ``listening on HOST:PORT`` for each."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorThrottle())
    raise_descriptor_limit(cfg.smtp.max_connections + 64, f"max_connections = {cfg.smtp.max_connections}")
    context = tls_context(cfg)
    connections = Connections(cfg.smtp.max_connections, cfg.smtp.max_connections_per_client)
    servers: list[asyncio.Server] = []
    for host, port in cfg.smtp.listen:
        try:
            server = await loop.create_server(protocol_factory(cfg, host, context, connections),
                                              host=host,
                                              port=port, reuse_address=True,
                                              reuse_port=reuse_port or None)
        except OSError as exc:
            for opened in servers:
                opened.close()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio rewords strerror
            raise ConfigError(cfg.directory / "smtp.ini", None, f"cannot listen on "
                              f"{format_hostport(host, port)}: {why}") from None
        servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            announce(f"listening on {format_hostport(addr[0], addr[1])}")
        _say_if_nobody_can_authenticate(cfg, host, port, context)
    return servers


def _say_if_nobody_can_authenticate(cfg: Config, host: str, port: int,
                                    context: ssl.SSLContext | None) -> None:
    """AUTH required over TLS on a listener without a certificate, or no user at all: only the
    relay_acl_allow addresses can send through it -- say so once, rather than let every
    client find out by a refusal."""
    where = format_hostport(host, port)
    if cfg.auth.users and context is None and auth_require_tls(cfg, host):
        log.warning("%s: AUTH is allowed only after STARTTLS (smtp.ini auth_require_tls) and there "
                    "is no TLS certificate (tls.ini cert %s): no client can authenticate, only "
                    "relay_acl_allow's addresses can send", where, cfg.tls_main.cert)
    elif not cfg.auth.users and not is_loopback(host):
        log.warning("%s: auth_flat_file.ini has no users: only relay_acl_allow's addresses can "
                    "send", where)
