"""Reading the DATA of one SMTP transaction, in blocks rather than lines.

aiosmtpd reads DATA one line at a time (an await, a list append and a few
checks per line): 840 of them for a 64 KiB message, most of the submission
server's CPU.  This reader asks the stream for everything up to the next
``.<CR><LF>`` -- usually the terminator itself -- and keeps aiosmtpd's rules:
only ``<CR><LF>.<CR><LF>`` ends the data (bare LF or CR never do, so nothing
can be smuggled), a line is at most 1001 bytes with its CRLF, the size limit
counts the bytes as received, and what the client pipelined after the
terminator stays in the stream for the next command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

TERMINATOR = b"\r\n.\r\n"
#: aiosmtpd's limit on a DATA line, CRLF included (RFC 5321 says 1000; aiosmtpd allows one more).
LINE_LIMIT = 1001


@dataclass
class Data:
    """The outcome: ``content`` unstuffed (CRLF, as received), or why it was refused."""

    content: bytes = b""
    too_much: bool = False
    too_long: bool = False


def unstuff(body: bytes) -> bytes:
    """RFC 5321 4.5.2: drop the first character of every line that starts with a dot."""
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", b"\r\n")


def has_long_line(body: bytes, limit: int = LINE_LIMIT) -> bool:
    """A line (split at CRLF only, as aiosmtpd does) longer than ``limit`` with its CRLF."""
    return max(map(len, body.split(b"\r\n")), default=0) + 2 > limit


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> Data:
    """Read up to and including the terminator; the stream is at a line start (after the 354)."""
    parts: list[bytes] = []
    received = 0
    tail = b"\r\n"  # the last two bytes before the current block: the 354 reply ends a line
    too_much = False
    while True:
        try:
            block = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as exc:  # no ".\r\n" within the buffer limit yet
            block = await reader.read(exc.consumed)
            if not block:
                raise asyncio.IncompleteReadError(b"", None) from exc
        ended = (tail + block).endswith(TERMINATOR)
        if ended:
            block = block[:-3]  # the ".\r\n"; the CRLF before it ends the last line
        received += len(block)
        if size_limit and received > size_limit:
            too_much = True
            parts.clear()  # keep reading to the terminator, but hold nothing
        elif not too_much:
            parts.append(block)
        if ended:
            break
        tail = (tail + block)[-2:]
    if too_much:
        return Data(too_much=True)
    body = b"".join(parts)
    if has_long_line(body):
        return Data(too_long=True)
    return Data(content=unstuff(body))
