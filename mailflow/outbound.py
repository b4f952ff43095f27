"""The Python API for queueing mail: Haraka's ``outbound.send_email``.

``from mailflow import outbound`` is how plugins and applications queue mail;
the work is done by :mod:`mailflow.queue.submission`, whose names are here too.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import IO, Any

from mailflow import config as configmod
from mailflow import logs
from mailflow.address import Address, AddressError, parse_address
from mailflow.codes import DENY, DENYSOFT, OK, Code
from mailflow.queue.submission import Queued, QueueError, after_queue, queue_message, split_recipients
from mailflow.suppress import store as suppression
from mailflow.wire import dsnparams

__all__ = ["send_email", "queue_message", "Queued", "QueueError", "split_recipients",
           "after_queue"]


def _contents_bytes(contents: str | bytes | Iterable[str] | IO[bytes]) -> bytes:
    if isinstance(contents, bytes):
        return contents
    if isinstance(contents, str):
        return contents.encode("utf-8")
    if isinstance(contents, io.IOBase) or hasattr(contents, "read"):
        data = contents.read()
        return data if isinstance(data, bytes) else str(data).encode("utf-8")
    lines = list(contents)  # a list of lines, with or without their endings
    return b"".join(
        (line if isinstance(line, bytes) else str(line).encode("utf-8")).rstrip(b"\r\n") + b"\r\n"
        for line in lines
    )


def send_email(from_: str | Address, to: str | Address | Iterable[str | Address],
               contents: str | bytes | Iterable[str] | IO[bytes],
               next: Callable[[Code, str], Any] | None = None, *,  # noqa: A002 - Haraka's name
               dot_stuffed: bool = False, notes: dict[str, Any] | None = None,
               dsn: dict[str, Any] | None = None) -> tuple[Code, str]:
    """Queue a message for delivery (Haraka's ``outbound.send_email``).

    Returns — and passes to ``next`` when given — ``(OK, "Message Queued (<uuid>)")``
    once the mail is durably on disk, ``(DENY, reason)`` for a malformed address or
    no recipient, ``(DENYSOFT, reason)`` when it could not be written.  ``dsn``: what the
    sender wants to be told (RFC 3461), as SMTP's parameters say it -- ``{"ret": "HDRS",
    "envid": "…", "notify": ["SUCCESS", "FAILURE"], "orcpt": {rcpt: "rfc822;…"}}``.
    """
    if dsn is not None:
        try:
            targets = [to] if isinstance(to, str | Address) else list(to)
            asked = dsnparams.from_api(dsn, [t.address if isinstance(t, Address) else
                                             parse_address(t).address for t in targets])
        except (dsnparams.ParamError, AddressError) as exc:
            result: tuple[Code, str] = (DENY, str(exc))
            if next is not None:
                next(*result)
            return result
        notes = {**(notes or {}), dsnparams.DSN_NOTE: asked.to_note()}
    result = _send_email(from_, to, contents, dot_stuffed=dot_stuffed, notes=notes)
    if next is not None:
        next(*result)
    return result


def _send_email(from_: str | Address, to: str | Address | Iterable[str | Address],
                contents: Any, *, dot_stuffed: bool,
                notes: dict[str, Any] | None) -> tuple[Code, str]:
    try:
        sender = from_ if isinstance(from_, Address) else parse_address(from_, allow_null=True)
        targets = [to] if isinstance(to, str | Address) else list(to)
        rcpts = [t if isinstance(t, Address) else parse_address(t) for t in targets]
    except AddressError as exc:
        return DENY, f"malformed address: {exc}"
    if not rcpts:
        return DENY, "no recipients"
    store = suppression.for_config(configmod.current())
    for rcpt in rcpts:
        entry = suppression.check(store, rcpt.address)
        if entry is not None:
            logs.event("refused", rcpt=rcpt.address, client="local", reason="suppressed",
                       since=int(entry.since))
            return DENY, f"5.7.1 <{rcpt.address}> is on the suppression list: not sent"
    try:
        queued = queue_message(sender, rcpts, _contents_bytes(contents), notes=notes,
                               dot_stuffed=dot_stuffed)
    except QueueError as exc:
        return DENYSOFT, str(exc)
    return OK, f"Message Queued ({queued.uuid})"
