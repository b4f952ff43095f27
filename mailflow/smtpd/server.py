"""The listener: aiosmtpd's protocol with mailflow's connect hook, CRAM-MD5 and replies.

aiosmtpd answers a few refusals without an enhanced status code; ``push``
maps those fixed texts to the RFC 3463 forms operators grep for.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, auth_mechanism, syntax

from .. import hooks
from ..codes import DENY
from ..config import Config
from .acl import is_loopback
from .auth import FlatFileAuthenticator, cram_challenge, cram_verify
from .data import read_data
from .handler import SubmissionHandler, connection_for

log = logging.getLogger(__name__)

#: aiosmtpd's literal replies -> the same refusal with its RFC 3463 code.
REPLY_MAP = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big for system",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6)",
}


class MailflowSMTP(SMTP):
    """aiosmtpd's SMTP with the ``connect`` hook, CRAM-MD5 and a block-wise DATA reader."""

    #: aiosmtpd sizes the stream's buffer by this; DATA reads whole blocks from it (see
    #: data.py, which keeps the 1001-byte line limit itself).  Command lines are still
    #: held to command_size_limit.
    line_length_limit = 64 * 1024

    def __init__(self, handler: SubmissionHandler, *, cfg: Config, **kwargs: Any):
        self.mf_cfg = cfg
        super().__init__(handler, **kwargs)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = REPLY_MAP.get(status, status)
        await super().push(status)

    async def _handle_client(self) -> None:
        assert self.session is not None
        conn = connection_for(self.session, self.transport, self.mf_cfg)
        self.session.mf_connection = conn  # type: ignore[attr-defined]
        answer = await hooks.decide_off_loop(hooks.connect, connection=conn)
        if answer.code is DENY:
            await self.push(f"554 {answer.value or '5.7.1 Connection refused'}")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

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
        try:
            data = await read_data(self._reader, self.data_size_limit)
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            self._writer.close()  # the connection went away during DATA
            raise
        if data.too_much or data.too_long:
            self._set_post_data_state()
            await self.push("552 Error: Too much mail data" if data.too_much
                            else "500 Line too long (see RFC5321 4.5.3.1.6)")
            return
        self.envelope.content = self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        challenge = cram_challenge(self.hostname)
        response = await self.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(response, bytes)
        user = cram_verify(self.mf_cfg.auth.users, challenge, response)
        return AuthResult(success=user is not None, handled=False, auth_data=user)


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The STARTTLS context from ``tls.ini`` [main]; None (no STARTTLS) when no cert is set up."""
    tls = cfg.tls_main
    cert, key = Path(tls.cert), Path(tls.key)
    if not (cert.exists() and key.exists()):
        log.info("no TLS certificate at %s / %s: STARTTLS not offered", cert, key)
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    if tls.minVersion:
        ctx.minimum_version = ssl.TLSVersion[tls.minVersion.replace(".", "_")]
    return ctx


def auth_require_tls(cfg: Config, listen_host: str) -> bool:
    """``smtp.ini`` ``auth_require_tls``; unset means "yes, except on a loopback listener"."""
    if cfg.smtp.auth_require_tls is not None:
        return cfg.smtp.auth_require_tls
    return not is_loopback(listen_host)


def protocol_factory(cfg: Config, listen_host: str,
                     context: ssl.SSLContext | None) -> Callable[[], MailflowSMTP]:
    handler = SubmissionHandler(cfg)
    authenticator = FlatFileAuthenticator(cfg.auth)
    excluded = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5")
                if m not in cfg.auth.methods or not cfg.auth.users]
    require_tls = auth_require_tls(cfg, listen_host)

    def factory() -> MailflowSMTP:
        return MailflowSMTP(
            handler, cfg=cfg, hostname=cfg.me, ident="mailflow ESMTP",
            data_size_limit=cfg.smtp.max_message_size, decode_data=False,
            enable_SMTPUTF8=True, tls_context=context, require_starttls=False,
            auth_require_tls=require_tls, authenticator=authenticator,
            auth_exclude_mechanism=excluded, command_call_limit=None)

    return factory


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(cfg: Config, announce: Callable[[str], None] = print, *,
                reuse_port: bool = False) -> list[asyncio.Server]:
    """Open every ``smtp.ini`` listener and announce ``listening on HOST:PORT`` for each."""
    loop = asyncio.get_running_loop()
    context = tls_context(cfg)
    servers = []
    for host, port in cfg.smtp.listen:
        server = await loop.create_server(protocol_factory(cfg, host, context), host=host,
                                          port=port, reuse_address=True, reuse_port=reuse_port or None)
        servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            announce(f"listening on {format_listen(addr[0], addr[1])}")
    return servers
