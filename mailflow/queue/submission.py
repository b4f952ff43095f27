"""Queueing: the one path by which mail enters the queue.

``outbound.send_email`` (the Python API), ``mailflow smtpd``, ``mailflow send``,
``mailflow sendmail`` and bounces all end in :func:`queue_message`.  Nothing is
answered OK before every entry of the message is on disk and fsync'd.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mailflow import config as configmod
from mailflow import logs, sevenbit
from mailflow import message as msg
from mailflow.address import Address
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE, labels
from mailflow.dkim.keys import KeyProblem
from mailflow.message import Body
from mailflow.queue import counters, events, tracking
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import NewEntry, Spool, now_ms
from mailflow.queue.todo import ToDo
from mailflow.wire.names import tenant_tag
from mailflow.wire.requiretls import REQUIRETLS_NOTE, TLS_OPTIONAL_NOTE, tls_optional

log = logging.getLogger("mailflow.queue")

__all__ = ["queue_message", "Queued", "QueueError", "split_recipients", "after_queue"]


class QueueError(Exception):
    """The message could not be written; nothing of it is left in the queue."""


@dataclass
class Queued:
    uuid: str
    names: list[EntryName]
    size: int


#: Called with the names of newly queued entries once they are durable: the
#: delivery side connects here to start their delivery (see ``mailflow.dispatch``).
after_queue: list[Callable[[Spool, list[EntryName]], None]] = []


def split_recipients(rcpts: list[Address], always_split: bool) -> list[list[Address]]:
    """One group per recipient domain (in first-seen order), or one per recipient."""
    if always_split:
        return [[r] for r in rcpts]
    groups: dict[str, list[Address]] = {}
    for r in rcpts:
        groups.setdefault(r.host, []).append(r)
    return list(groups.values())


def new_uuid() -> str:
    return str(uuidlib.uuid4()).upper()


#: The DKIM-Signature lines for a message as it will be sent (b'' for none).
Sign = Callable[[bytes], bytes]


def prepare(message: bytes, *, uuid: str, me: str, received: bytes | None,
            dot_stuffed: bool, sign: Sign | None = None) -> bytes:
    """Normalise, add missing headers, prepend Received, sign, and dot-stuff."""
    data = msg.normalise_eol(message)
    if dot_stuffed:
        data = msg.dot_unstuff(data)
    data = msg.add_missing_headers(data, msgid=uuid, me=me)
    if received:
        data = received + data
    if sign is not None:
        if sevenbit.needs(data) and getattr(sign, "wanted", lambda _: True)(data[:65536]):
            # signed as every next hop will get it: 7-bit, which one without 8BITMIME needs
            data = sevenbit.convert(data)
        data = sign(data) + data
    return msg.dot_stuff(data)


class Signing:
    """Sign with the config's DKIM keys.  A key that cannot be used now means unsigned, said
    and counted (``dkim_unsigned``): never a refused or held message."""

    def __init__(self, cfg: configmod.Config, txn: str):
        self.cfg = cfg
        self.txn = txn

    def __call__(self, data: bytes) -> bytes:
        try:
            return self.cfg.dkim.signature(data)
        except KeyProblem as exc:
            log.warning("queued unsigned id=%s: DKIM key unusable: %s", self.txn, exc)
            counters.add(self.cfg.queue_path(), "dkim_unsigned")
            return b""

    def wanted(self, start: bytes) -> bool:
        """Whether a message beginning so would be signed (a broken key: yes, to be said)."""
        try:
            return bool(self.cfg.dkim.signing_keys(start))
        except KeyProblem:
            return True


def sign_file(stored: IO[bytes], sign: Signing, directory: Path) -> IO[bytes]:
    """A large prepared message, signed: dkimpy hashes a whole message in memory, so it is
    read once here (only when its From domain has a key) and copied under its signature."""
    stored.seek(0)
    if not sign.wanted(stored.read(CHUNK)):
        return stored
    stored.seek(0)
    whole = msg.dot_unstuff(stored.read())
    seven = sevenbit.convert(whole) if sevenbit.needs(whole) else whole  # signed as it will go
    signature = sign(seven)
    if not signature:
        return stored
    out = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - the caller closes it
    out.write(msg.dot_stuff(signature))
    if seven is whole:
        stored.seek(0)
        shutil.copyfileobj(stored, out)
    else:
        out.write(msg.dot_stuff(seven))
    stored.close()
    return out


#: A large message is turned into the queue's form this much at a time.
CHUNK = 1024 * 1024


def prepare_file(source: IO[bytes], *, uuid: str, me: str, received: bytes | None,
                 directory: Path) -> IO[bytes]:
    """``prepare`` for a large message kept in a file: the result is another (unnamed) file.

    The work is the same, a run of whole lines at a time: the headers it lacks are
    found in the first run, and normalising and stuffing only look within a line.
    Memory stays at a chunk or two whatever the message's size.
    """
    out = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - the caller closes it
    try:
        source.seek(0)
        carry, first = b"", True
        while chunk := source.read(CHUNK):
            data = carry + chunk
            cut = msg.line_cut(data) or (len(data) if len(data) > 4 * CHUNK else 0)
            piece, carry = data[:cut], data[cut:]
            if not piece:
                continue
            if first:
                out.write((received or b"") + msg.missing_headers(
                    msg.normalise_eol(piece), msgid=uuid, me=me))
                first = False
            out.write(msg.stored_lines(piece))
        if carry or first:
            if first:
                out.write((received or b"") + msg.missing_headers(carry, msgid=uuid, me=me))
            out.write(msg.stored_lines(carry) if carry else b"\r\n")
    except BaseException:
        out.close()
        raise
    return out


@dataclass
class Prepared:
    """One message made ready for the queue -- its bytes, signed, and an entry per
    recipient group -- but not written yet."""

    txn: str
    mail_from: Address
    rcpt_to: list[Address]
    entries: list[NewEntry]
    data: bytes | IO[bytes]
    size: int
    client: str
    auth: str | None
    message_id: str = ""  #: its Message-ID header (the index of what was queued keeps it)

    def close(self) -> None:
        if not isinstance(self.data, bytes):
            self.data.close()


def queue_message(mail_from: Address, rcpt_to: list[Address], message: bytes | Body, *,
                  notes: dict[str, Any] | None = None, dot_stuffed: bool = False,
                  received_from: str | None = None, protocol: str | None = None,
                  client: str = "local",
                  auth: str | None = None, cfg: configmod.Config | None = None,
                  txn_uuid: str | None = None) -> Queued:
    """Write one message to the queue; raise :class:`QueueError` when it could not be.

    ``received_from`` and ``protocol`` are the ``from`` and ``with`` clauses of
    the Received header for mail that came in by SMTP; the API path has none.
    ``message`` is bytes, or the :class:`Body` the submission server read DATA into
    (one past its memory threshold is prepared file to file).
    """
    cfg = cfg or configmod.current()
    spool = Spool(cfg.queue_path())
    ready = prepare_message(mail_from, rcpt_to, message, notes=notes, dot_stuffed=dot_stuffed,
                            received_from=received_from, protocol=protocol, client=client,
                            auth=auth, cfg=cfg, txn_uuid=txn_uuid)
    try:
        spool.ensure_once()
        spool.write(ready.entries, ready.data)
    except OSError as exc:
        log.error("queue write failed id=%s: %s", ready.txn, exc)
        raise QueueError(f"queue write failed: {exc.strerror or exc}") from exc
    finally:
        ready.close()
    return announce(cfg, spool, ready)


def prepare_message(mail_from: Address, rcpt_to: list[Address], message: bytes | Body, *,
                    notes: dict[str, Any] | None = None, dot_stuffed: bool = False,
                    received_from: str | None = None, protocol: str | None = None,
                    client: str = "local", auth: str | None = None,
                    cfg: configmod.Config, txn_uuid: str | None = None) -> Prepared:
    """The message as it will be queued (Received header, missing headers, DKIM signature,
    dot-stuffing) and its entries; :class:`QueueError` when a file of it cannot be made."""
    settings = cfg.outbound
    txn = txn_uuid or new_uuid()
    received = None
    if settings.received_header.lower() != "disabled":
        parts = [f"from {received_from}"] if received_from else []
        parts.append(f"by {cfg.me} ({settings.received_header})")
        if protocol:
            parts.append(f"with {protocol}")
        parts.append(f"id {txn}")
        received = msg.received_header(" ".join(parts))
    spool = Spool(cfg.queue_path())
    sign = Signing(cfg, txn)
    data: bytes | IO[bytes]
    try:
        if isinstance(message, Body) and not message.in_memory:
            spool.ensure_once()
            data = sign_file(prepare_file(message.file, uuid=txn, me=cfg.me, received=received,
                                          directory=spool.root), sign, spool.root)
            data.seek(0)
            head = data.read(tracking.HEAD_BYTES)
            size = data.seek(0, os.SEEK_END)
        else:
            raw = message.read() if isinstance(message, Body) else message
            data = prepare(raw, uuid=txn, me=cfg.me, received=received, dot_stuffed=dot_stuffed,
                           sign=sign)
            size = len(data)
            head = data[:tracking.HEAD_BYTES]
    except OSError as exc:
        log.error("queue write failed id=%s: %s", txn, exc)
        raise QueueError(f"queue write failed: {exc.strerror or exc}") from exc
    arrival = now_ms()
    entries = []
    if tls_optional(head) and not (notes or {}).get(REQUIRETLS_NOTE):  # RFC 8689 5
        notes = {**(notes or {}), TLS_OPTIONAL_NOTE: True}
    tenant = (notes or {}).get(TENANT_NOTE)
    stem = f"{txn}.t{tenant_tag(str(tenant))}" if tenant else txn  # the queue manager's turns
    # a VERP return path names one recipient: each gets an entry of its own
    split = settings.always_split or bool(settings.verp_domain)
    for n, group in enumerate(split_recipients(rcpt_to, split), start=1):
        todo = ToDo(uuid=f"{stem}.{n}", queue_time=arrival, domain=group[0].host,
                    mail_from=mail_from, rcpt_to=group, notes=dict(notes or {}))
        entries.append(NewEntry(EntryName(arrival, 0, arrival, todo.uuid, todo.domain), todo))
    return Prepared(txn, mail_from, rcpt_to, entries, data, size, client, auth,
                    tracking.message_id_of(head))


def announce(cfg: configmod.Config, spool: Spool, ready: Prepared) -> Queued:
    """What follows a message's arrival in ``pending/``: the ``queued`` log line, counters,
    events, and the callbacks that start its delivery."""
    logs.event("queued", id=ready.txn, **{"from": str(ready.mail_from)},
               rcpts=",".join(str(r) for r in ready.rcpt_to), size=ready.size, client=ready.client,
               auth=ready.auth or "-", **labels(ready.entries[0].todo.notes if ready.entries else {}))
    names = [e.name for e in ready.entries]
    notes = ready.entries[0].todo.notes if ready.entries else {}
    try:  # what a complaint or a late bounce will be matched against
        tracking.index_for(spool.root).add(tracking.Sent(
            id=ready.txn, message_id=ready.message_id, mail_from=ready.mail_from.address,
            entries={e.todo.uuid: [r.address for r in e.todo.rcpt_to] for e in ready.entries},
            tenant=notes.get(TENANT_NOTE), campaign=notes.get(CAMPAIGN_NOTE)))
    except OSError as exc:  # the mail is queued: a report about it may go unmatched, said
        log.warning("queued id=%s not in the tracking index: %s", ready.txn, exc)
    try:
        counters.add_outcome(spool.root, "queued_total",
                             ready.entries[0].todo.notes if ready.entries else None, len(ready.entries))
    except OSError as exc:  # the mail is queued: a counter is not worth refusing it for
        log.warning("queued counter not added: %s", exc)
    for entry in ready.entries:
        events.message_event(cfg, "queued", entry.todo, [r.address for r in entry.todo.rcpt_to],
                             status="2.0.0", response=f"queued as {ready.txn}")
    for callback in after_queue:
        try:
            callback(spool, names)
        except Exception:  # the mail is safe on disk; the sweep will pick it up
            log.exception("after-queue callback failed for id=%s", ready.txn)
    return Queued(uuid=ready.txn, names=names, size=ready.size)
