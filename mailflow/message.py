"""Message bytes as the queue keeps them: CRLF line endings, dot-stuffed.

Normalising every bare CR and bare LF to CRLF is also what makes SMTP
smuggling harmless here: once a lone ``\\n.\\n`` has become ``\\r\\n.\\r\\n`` it is
stuffed to ``\\r\\n..\\r\\n`` like any other line starting with a dot, so no
downstream server can read it as end of data.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import IO

_EOL = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
# Searched with the re module rather than bytes.find or count: for a needle starting with a
# character as common as CR or LF, its literal-prefix scan is twice as fast (16 against
# 38-47 µs over 64 KiB).
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"\n(?<=[^\r]\n)")  # found by its LF first, then looked behind
_LF_DOT = re.compile(rb"\n\.")
_CRLF_DOT = re.compile(rb"\r\n\.")
_FOLD = re.compile(r"[\r\n\t]+")


def crlf_only(data: bytes) -> bool:
    """Every line ending in ``data`` is a CRLF: no bare CR, no bare LF (two scans)."""
    return not data.startswith(b"\n") and _BARE_CR.search(data) is None and _BARE_LF.search(data) is None


def normalise_eol(data: bytes) -> bytes:
    """Every line ending (CRLF, bare LF, bare CR) becomes CRLF; a final CRLF is ensured."""
    if not crlf_only(data):  # mail from SMTP is CRLF already: no copy for it
        data = _EOL.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency: a line starting with '.' gets one more."""
    if not data.startswith(b".") and _LF_DOT.search(data) is None:  # most messages: nothing to stuff
        return data
    return _LEADING_DOT.sub(b"..", data)


def dot_unstuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: drop the first character of every line (after CRLF) that starts with a dot."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n") if _CRLF_DOT.search(data) else data


def header_block(data: bytes) -> bytes:
    """The header section (without the blank line), or b'' when there is none."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def header_names(data: bytes) -> set[str]:
    """Lower-cased names of the headers present (continuation lines skipped)."""
    names = set()
    for line in header_block(data).split(b"\r\n"):
        if not line or line[:1] in b" \t":
            continue
        name, sep, _ = line.partition(b":")
        if sep:
            names.add(name.strip().decode("ascii", "replace").lower())
    return names


def header_value(data: bytes, wanted: str) -> str | None:
    """The unfolded value of the first ``wanted`` header, or None."""
    wanted = wanted.lower()
    current: list[bytes] | None = None
    for line in header_block(data).split(b"\r\n"):
        if current is not None:
            if line[:1] in (b" ", b"\t"):
                current.append(line)
                continue
            break
        name, sep, value = line.partition(b":")
        if sep and name.strip().decode("ascii", "replace").lower() == wanted:
            current = [value]
    if current is None:
        return None
    return b" ".join(part.strip() for part in current).decode("utf-8", "replace")


def take_headers(data: bytes, names: Collection[str]) -> tuple[bytes, dict[str, str]]:
    """``data`` (CRLF) without its header fields called ``names`` (lower case), and the
    unfolded value of the first of each found: instructions to mailflow (X-Tenant,
    X-Campaign) that must not travel on."""
    block = header_block(data)
    kept: list[bytes] = []
    found: dict[str, str] = {}
    dropping: str | None = None
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if dropping is None:
                kept.append(line)
            elif dropping in found:
                found[dropping] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, sep, value = line.partition(b":")
        key = name.strip().decode("ascii", "replace").lower()
        if sep and key in names:
            dropping = key if key not in found else ""
            if dropping:
                found[key] = value.strip().decode("utf-8", "replace")
            continue
        dropping = None
        kept.append(line)
    if not found and dropping is None and len(kept) == len(block.split(b"\r\n")[:-1]):
        return data, {}
    return b"".join(line + b"\r\n" for line in kept) + data[len(block):], {
        k: single_line(v) for k, v in found.items()}


def single_line(text: str) -> str:
    """Fold CR, LF and TAB runs to one space: no value may start a new header."""
    return _FOLD.sub(" ", text).strip()


def missing_headers(data: bytes, *, msgid: str, me: str) -> bytes:
    """The ``Message-Id`` (when missing or ``<>``) and ``Date`` lines ``data`` lacks.

    Only the header section is read, so the start of a large message will do.
    """
    names = header_names(data)
    extra = b""
    existing_id = header_value(data, "message-id") if "message-id" in names else None
    if existing_id is None or existing_id.strip() in ("", "<>"):
        extra += f"Message-Id: <{msgid}@{me}>\r\n".encode()
    if "date" not in names:
        extra += f"Date: {formatdate(localtime=True)}\r\n".encode()
    return extra


def add_missing_headers(data: bytes, *, msgid: str, me: str) -> bytes:
    """Add ``Message-Id`` (when missing or ``<>``) and ``Date`` (when missing) at the top."""
    extra = missing_headers(data, msgid=msgid, me=me)
    if not extra:
        return data
    if data.startswith(b"\r\n") or not data:
        return extra + (data if data else b"\r\n")
    return extra + data


def stored_lines(piece: bytes) -> bytes:
    """A run of whole lines (starting at a line start) in the queue's form: CRLF, dot-stuffed."""
    return dot_stuff(normalise_eol(piece))


def line_cut(data: bytes) -> int:
    """Where the whole lines of ``data`` end: after its last line ending that cannot be half
    of a CRLF (a final CR may be followed by an LF not read yet); 0 when there is none."""
    return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1


def received_header(text: str) -> bytes:
    return f"Received: {single_line(text)}; {formatdate(localtime=True)}\r\n".encode()


#: How much of a message's start is read for its header section.
HEAD_READ = 256 * 1024

#: A message body larger than this is kept in a temporary file, not in memory.
SPILL_AT = 1024 * 1024


class Body:
    """The DATA of one transaction as received, unstuffed: in memory, or on disk past ``spill_at``.

    The file has no name (O_TMPFILE where the system has it): nothing is left to
    clean up after a crash.
    """

    def __init__(self, directory: str | None = None, spill_at: int = SPILL_AT):
        # lives as long as the transaction: closed by whoever queues it
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=spill_at, dir=directory)
        self.spill_at = spill_at
        self.size = 0

    @property
    def in_memory(self) -> bool:
        return self.size <= self.spill_at

    def write(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self.size += len(data)

    def read(self) -> bytes:
        """The whole body (for small ones, and for a hook that asks for the bytes)."""
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


def take_body_headers(body: Body, names: Collection[str], directory: str | None = None
                      ) -> tuple[Body, dict[str, str]]:
    """:func:`take_headers` for a body as DATA read it: the same body when none is there,
    else a new one (the old is closed); a body on disk is copied only when one is found."""
    body.file.seek(0)
    raw = body.file.read(HEAD_READ)
    if not _may_hold(raw, names):
        return body, {}
    cut = len(raw) if body.size <= len(raw) else line_cut(raw)  # whole lines only
    head = normalise_eol(raw[:cut])
    block = header_block(head)
    if not block or (len(block) == len(head) and body.size > cut):
        return body, {}  # no header section, or one longer than anything real: left alone
    lowered = block.lower()  # most messages carry none: no line split for them
    if not any(name.encode() in lowered for name in names):
        return body, {}
    stripped, found = take_headers(head, names)
    if not found:
        return body, {}
    taken = Body(directory=directory, spill_at=body.spill_at)
    taken.write(stripped)
    body.file.seek(cut)
    while chunk := body.file.read(BLOCK):
        taken.write(chunk)
    body.close()
    return taken, found


def _may_hold(raw: bytes, names: Collection[str]) -> bool:
    """Whether the header section at the start of ``raw`` may hold one of ``names``; False
    only when it is certain: nothing before the first empty line names one.

    Normalising the line endings first (the body of a 64 KiB message is most of ``raw``)
    could only end the section sooner -- a bare LF may make an empty line, a CRLF pair
    stays one -- so a name absent from the text up to raw's first CRLF CRLF is absent."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return True
    lowered = raw[:end + 2].lower()
    return any(name.encode() in lowered for name in names)


#: The size of the blocks a message is read and sent in.
BLOCK = 64 * 1024


def wire_blocks(chunks: Iterable[bytes], *, stuffed: bool) -> Iterator[bytes]:
    """A message's wire form (CRLF line endings, dot-stuffed, ending in CRLF; no final
    dot) from chunks of it cut anywhere, a block at a time: a large message is never held
    whole.  ``stuffed``: the chunks are the stored form, whose stuffing is undone first --
    the stuffing is made here, from what the message is, and never trusted as it comes (a
    lone ``.`` line would end DATA early and the rest be read as commands)."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        # a line ends after each LF, and after a CR that is not the very last byte (it may
        # be the first half of a CRLF cut by the chunking)
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        complete, carry = data[:cut], data[cut:]
        if complete:
            yield _wire(complete, stuffed)
    if carry:
        yield _wire(carry, stuffed)


def _wire(lines: bytes, stuffed: bool) -> bytes:
    if stuffed and lines.endswith(b"\r\n") and crlf_only(lines):  # no line ending to rewrite
        if not _dot_led(lines):
            return lines  # what undoing and redoing the stuffing would give back: the same bytes
        return dot_stuff(dot_unstuff(lines))
    lines = normalise_eol(lines)
    return dot_stuff(dot_unstuff(lines) if stuffed else lines)


def _dot_led(lines: bytes) -> bool:
    """A line of ``lines`` (CRLF) starts with a dot."""
    return lines.startswith(b".") or _CRLF_DOT.search(lines) is not None


@dataclass(frozen=True)
class FileMessage:
    """A message kept in a file from ``offset`` on, in its stored form (CRLF, dot-stuffed):
    read in blocks as it is sent (:func:`wire_blocks`), never whole."""

    path: Path
    offset: int

    @property
    def size(self) -> int:
        return os.stat(self.path).st_size - self.offset

    def small(self, most: int = BLOCK * 4) -> bytes | None:
        """The stored message in one piece when it is at most ``most`` bytes (one read);
        None for a larger one, which is read in blocks as it is sent."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # three system calls, not seven
        try:
            data = os.pread(fd, most + 1, self.offset)
        finally:
            os.close(fd)
        return data if len(data) <= most else None

    def blocks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while block := f.read(BLOCK):
                yield block

    def eight_bit(self) -> bool:
        return not all(block.isascii() for block in self.blocks())
