"""The submission transaction: relay checks, limits, hooks, and queueing.

aiosmtpd drives the protocol; this handler decides each reply.  Hook
receivers and the queue write (fsync) run in a thread so that neither a slow
plugin nor the disk stalls the other sessions on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailflow import hooks, logs
from mailflow.address import Address, AddressError, parse_address
from mailflow.codes import DENY, DENYSOFT, OK
from mailflow.config.loader import Config
from mailflow.config.settings import tenant_name
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE
from mailflow.message import Body, take_body_headers
from mailflow.queue import submission
from mailflow.smtpd.acl import ip_allowed
from mailflow.smtpd.statuscodes import SMTPStatus
from mailflow.smtpd.tables import ListedOnce, signed
from mailflow.suppress import store as suppression
from mailflow.wire import dsnparams
from mailflow.wire.requiretls import REQUIRETLS_NOTE

log = logging.getLogger(__name__)


@dataclass
class Connection:
    """What the ``connect`` and ``queue_outbound`` hooks see of the client."""

    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    relaying: bool = False
    notes: dict[str, Any] = field(default_factory=dict)
    tls: bool = False
    auth_user: str | None = None


@dataclass
class Transaction:
    """What ``queue_outbound`` sees: the envelope, the notes and the message bytes.

    ``message`` is read from the transaction's body only when a receiver asks for it:
    a large body stays on disk otherwise.
    """

    mail_from: Any
    rcpt_to: list[Any]
    body: Body
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> bytes:
        return self.body.read()


def logs_safe(text: str) -> str:
    """A client-chosen name as a log line may hold it: no control characters, bounded."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:200])


def host_name_problem(name: str) -> str | None:
    """Why an EHLO/HELO argument is refused: it goes into the Received header as it is.

    RFC 5321 4.1.1.1: a domain or an address literal -- printable ASCII, no spaces.
    """
    if not name.isascii() or not name.isprintable() or " " in name or len(name) > 255:
        return SMTPStatus.BAD_HOST_NAME
    return None


def address_problem(address: str, smtputf8: bool, status: str) -> str | None:
    """Why a MAIL/RCPT address is refused before DATA, rather than a 500 after it.

    Bytes that are not UTF-8 (aiosmtpd hands them over as surrogates) are never an
    address; a non-ASCII address needs the SMTPUTF8 parameter (RFC 6531 3.4).
    """
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return SMTPStatus.NOT_UTF8.format(status)
    if not address.isascii() and not smtputf8:
        return SMTPStatus.NEEDS_SMTPUTF8
    return None


def connection_of(session: Session) -> Connection:
    conn: Connection = session.mf_connection  # type: ignore[attr-defined]
    return conn


def protocol_name(session: Session, conn: Connection) -> str:
    """RFC 3848 ``with`` keyword: ESMTP plus S for TLS and A for AUTH."""
    base = "ESMTP" if session.extended_smtp else "SMTP"
    return base + ("S" if conn.tls else "") + ("A" if session.authenticated else "")


class SubmissionHandler(ListedOnce):
    """aiosmtpd handler for ``mailflow smtpd``."""

    #: aiosmtpd's hook and AUTH tables are built from these names (tables.py)
    TABLE_PREFIXES = ("handle_", "auth_")

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @signed  # aiosmtpd reads it on every connection (tables.py)
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        problem = host_name_problem(hostname)
        if problem is not None:
            return [problem]
        session.host_name = hostname
        out = [r for r in responses if r.strip() != "250-AUTH"]
        # aiosmtpd reads commands one line at a time, so pipelined commands are safe.
        out.insert(len(out) - 1, "250-PIPELINING")
        out.insert(len(out) - 1, "250-DSN")  # RFC 3461: RET, ENVID, NOTIFY and ORCPT
        if session.ssl is not None:  # RFC 8689 4.1: offered only over TLS
            out.insert(len(out) - 1, "250-REQUIRETLS")
        return out

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str) -> str:
        problem = host_name_problem(hostname)
        if problem is not None:
            return problem
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        problem = address_problem(address, envelope.smtp_utf8, "5.1.7")
        if problem is not None:
            return problem
        try:
            sender = parse_address(address, allow_null=True)
        except AddressError as exc:
            return SMTPStatus.MALFORMED_SENDER.format(exc)
        try:
            ret, envid = dsnparams.mail(dsn_found(server, dsnparams.MAIL_KEYS))
        except dsnparams.ParamError as exc:
            return str(exc)
        envelope.mf_dsn = dsnparams.Dsn(ret, envid)  # type: ignore[attr-defined]
        required = getattr(server, "mf_requiretls", False)
        if required and session.ssl is None:
            return "530 5.7.10 REQUIRETLS needs a TLS session: STARTTLS first"
        envelope.mf_requiretls = required  # type: ignore[attr-defined]
        envelope.mail_from = address
        envelope.mf_parsed = {address: sender}  # type: ignore[attr-defined]  # read again at DATA
        envelope.mail_options.extend(mail_options)
        return SMTPStatus.SENDER_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        conn = connection_of(session)
        if not (session.authenticated or conn.relaying):
            log.info("relay denied client=%s rcpt=%s", conn.remote_ip, logs_safe(address))
            return SMTPStatus.RELAY_DENIED
        problem = address_problem(address, envelope.smtp_utf8, "5.1.3")
        if problem is not None:
            return problem
        try:
            parsed = parse_address(address)
        except AddressError as exc:
            return SMTPStatus.MALFORMED_RECIPIENT.format(exc)
        try:
            dsn_rcpt = dsnparams.rcpt(dsn_found(server, dsnparams.RCPT_KEYS))
        except dsnparams.ParamError as exc:
            return str(exc)
        if getattr(server, "mf_requiretls", False):
            return "555 5.5.4 REQUIRETLS is not a parameter of this command"
        if len(envelope.rcpt_tos) >= self.cfg.smtp.max_recipients:
            return SMTPStatus.TOO_MANY_RECIPIENTS
        store = suppression.for_config(self.cfg)
        if store.known_empty():
            entry = None
        elif store.blocking:
            entry = await asyncio.get_running_loop().run_in_executor(None, suppression.check, store, address)
        else:
            entry = suppression.check(store, address)
        if entry is not None:
            logs.event("refused", rcpt=logs_safe(address), client=conn.remote_ip,
                       reason="suppressed", since=int(entry.since))
            return SMTPStatus.SUPPRESSED.format(logs_safe(address))
        envelope.rcpt_tos.append(address)
        getattr(envelope, "mf_parsed", {})[address] = parsed
        envelope.rcpt_options.extend(rcpt_options)
        if dsn_rcpt != dsnparams.Recipient():
            dsn = getattr(envelope, "mf_dsn", None) or dsnparams.Dsn()
            envelope.mf_dsn = dsnparams.Dsn(dsn.ret, dsn.envid,  # type: ignore[attr-defined]
                                            {**dsn.rcpts, address: dsn_rcpt})
        return SMTPStatus.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        conn = connection_of(session)
        conn.tls = session.ssl is not None
        conn.auth_user = session.auth_data if session.authenticated else None
        received: Body = envelope.mf_body  # type: ignore[attr-defined]
        body, taken = take_body_headers(received, TAKEN_HEADERS, str(self.cfg.queue_path()))
        try:
            return await self._queue(conn, session, envelope, body, taken)
        finally:
            if body is not received:
                body.close()

    async def _queue(self, conn: Connection, session: Session, envelope: Envelope, body: Body,
                     taken: dict[str, str]) -> str:
        mail_from = parsed_address(envelope, envelope.mail_from or "", allow_null=True)
        rcpts = [parsed_address(envelope, r) for r in envelope.rcpt_tos]
        notes: dict[str, Any] = dict(tenancy(self.cfg, conn, taken))
        dsn = getattr(envelope, "mf_dsn", None)
        if dsn is not None and dsn != dsnparams.Dsn():  # what the client asked to be told
            notes[dsnparams.DSN_NOTE] = dsn.to_note()
        if getattr(envelope, "mf_requiretls", False):
            notes[REQUIRETLS_NOTE] = True
        txn = Transaction(mail_from=mail_from, rcpt_to=rcpts, body=body, notes=notes)
        loop = asyncio.get_running_loop()
        answer = await hooks.decide_off_loop(hooks.queue_outbound, connection=conn, transaction=txn)
        if answer.code is OK:
            return f"250 {answer.value or '2.0.0 Message Queued'}"
        if answer.code is DENY:
            return f"550 {answer.value or '5.7.1 Message denied'}"
        if answer.code is DENYSOFT:
            return f"451 {answer.value or '4.3.0 Message deferred'}"
        helo = session.host_name or "unknown"
        try:
            queued = await loop.run_in_executor(None, lambda: submission.queue_message(
                txn.mail_from, txn.rcpt_to, body, notes={**conn.notes, **txn.notes},
                received_from=f"{helo} ([{conn.remote_ip}])",
                protocol=protocol_name(session, conn), client=conn.remote_ip,
                auth=conn.auth_user, cfg=self.cfg))
        except submission.QueueError as exc:
            return SMTPStatus.NOT_QUEUED.format(exc)
        return SMTPStatus.QUEUED.format(queued.uuid)


def parsed_address(envelope: Envelope, text: str, *, allow_null: bool = False) -> Address:
    """An address of the envelope as MAIL or RCPT parsed it (kept on the envelope), else parsed now."""
    found: Address | None = getattr(envelope, "mf_parsed", {}).get(text)
    return found if found is not None else parse_address(text, allow_null=allow_null)


def dsn_found(server: SMTP, keys: tuple[str, ...]) -> dict[str, str]:
    """The DSN parameters the command gave (mailflow/smtpd/server.py took them out), those of
    the other command refused; ParamError for what is wrong."""
    found, error = getattr(server, "mf_dsn", ({}, None))
    if error is not None:
        raise dsnparams.ParamError(error)
    wrong = [k for k in found if k not in keys]
    if wrong:
        raise dsnparams.ParamError(f"555 5.5.4 {wrong[0]} is not a parameter of this command")
    return dict(found)


#: Headers that speak to mailflow, not to the recipient: read, then removed before sending.
TAKEN_HEADERS = ("x-tenant", "x-campaign")


def tenancy(cfg: Config, conn: Connection, taken: dict[str, str]) -> dict[str, str]:
    """A message's tenant -- its AUTH user's in tenants.ini, else the X-Tenant header of a
    client that may relay without AUTH (another client's is ignored) -- and its campaign
    (X-Campaign), as notes; a name that is not one is logged and ignored."""
    notes: dict[str, str] = {}
    tenant = cfg.tenants.of_user(conn.auth_user)
    if tenant is None and conn.auth_user is None and conn.relaying:
        tenant = taken.get("x-tenant")
    for note, value in ((TENANT_NOTE, tenant), (CAMPAIGN_NOTE, taken.get("x-campaign"))):
        if not value:
            continue
        try:
            notes[note] = tenant_name(value)
        except ValueError as exc:
            log.warning("%s of a message from %s ignored: %s", note, conn.remote_ip, exc)
    return notes


def connection_for(session: Session, transport: Any, cfg: Config) -> Connection:
    peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
    sock = transport.get_extra_info("sockname") if transport else None
    local = sock if isinstance(sock, tuple) else ("", 0)
    conn = Connection(remote_ip=str(peer[0]), remote_port=int(peer[1]),
                      local_ip=str(local[0]), local_port=int(local[1]))
    conn.relaying = ip_allowed(conn.remote_ip, cfg.relay_acl)
    return conn
