"""The inbound listener (``inbound.ini listen``): reports sent back to the return path.

An MX for the VERP domain (``outbound.ini verp_domain``) is pointed here; each message it
takes must be a complaint (ARF) or a delivery status notification, and is acted on before
the answer (mailflow/queue/ingest.py): 250 when done, 554 for mail that is no report (so
its sender hears of it, and nothing is bounced later), 451 when what it needs cannot be
written now (the sender tries again).  It accepts mail only for the VERP domain when one is
set, and never relays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.config.settings import format_hostport
from mailflow.queue.ingest import take
from mailflow.reports.returned import NotAReport, parse

log = logging.getLogger(__name__)

#: reports are small; a bigger message is refused at its SIZE or during DATA
MAX_BYTES = 10 * 1024 * 1024


class ReportHandler:
    """aiosmtpd's handler: recipients of the VERP domain, then the report."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        verp_domain = self.cfg.outbound.verp_domain.lower()
        if verp_domain and domain != verp_domain:
            return f"550 5.7.1 <{address}>: this host takes reports for {verp_domain} only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            report = parse(data, list(envelope.rcpt_tos))
        except NotAReport as exc:
            log.info("inbound: refused mail from %s: not a report (%s)", envelope.mail_from, exc)
            return f"554 5.6.0 Not a report: {exc}"
        try:
            done = await asyncio.get_running_loop().run_in_executor(None, take, self.cfg, report)
        except OSError as exc:
            log.warning("inbound: report not taken now: %s", exc)
            return "451 4.3.0 Cannot record the report now; try again later"
        log.info("inbound: %s", done)
        return "250 2.0.0 OK: report taken"


async def start(cfg: Config, announce: Any = print) -> asyncio.Server | None:
    """Listen when ``inbound.ini`` has a ``listen``; announce ``listening on HOST:PORT (reports)``."""
    if cfg.inbound.listen is None:
        return None
    host, port = cfg.inbound.listen
    handler = ReportHandler(cfg)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: SMTP(handler, hostname=cfg.me, data_size_limit=MAX_BYTES, ident="mailflow"),
            host=host, port=port, reuse_address=True)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(cfg.directory / "inbound.ini", None,
                          f"cannot listen on {format_hostport(host, port)}: {why}") from None
    for sock in server.sockets:
        addr = sock.getsockname()
        announce(f"listening on {format_hostport(addr[0], addr[1])} (reports)")
    return server
