"""One queue file: its name (which carries the schedule) and its bytes.

The name is ``<next_attempt_ms>_<num_failures>_<arrival_ms>_<id>_<domain>``,
with the times zero-padded so that a sorted listing is in due order.  As in
Haraka, the directory listing *is* the schedule: counting, finding due
entries and gathering one domain's entries never open a file.  A change of
schedule is an atomic rename.

The bytes are Haraka's layout: a 4-byte big-endian length L, L bytes of JSON
(the todo), then the message exactly as it goes on the wire after DATA: CRLF
line endings, dot-stuffed, without the final ``.``.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import IO, Any

from mailflow.queue.todo import ToDo
from mailflow.wire.names import (  # noqa: F401  (the queue's names, where they always were)
    BOUNCE_CLAIM,
    CLAIM_ID,
    ERROR_PREFIX,
    TMP_PREFIX,
    BadName,
    EntryName,
    check_claim,
    check_domain,
    check_name,
)

_LEN = struct.Struct(">I")
#: The todo JSON is small; anything this large is a corrupt length field.
MAX_TODO_BYTES = 64 * 1024 * 1024


class CorruptEntry(Exception):
    """A queue file whose header cannot be read."""


def encode_header(todo: ToDo) -> bytes:
    data = json.dumps(todo.to_json(), separators=(",", ":"), default=str).encode("utf-8")
    return _LEN.pack(len(data)) + data


def read_header(fh: Any) -> tuple[ToDo, int]:
    """Read the todo from an open file; return it and the offset of the message."""
    head = fh.read(_LEN.size)
    length = _todo_length(head)
    raw = fh.read(length)
    return _todo(raw, length), _LEN.size + length


def _todo_length(head: bytes) -> int:
    if len(head) < _LEN.size:
        raise CorruptEntry("shorter than its length field")
    (length,) = _LEN.unpack_from(head)
    if length > MAX_TODO_BYTES:
        raise CorruptEntry(f"todo length {length} is not plausible")
    return int(length)


def _todo(raw: bytes, length: int) -> ToDo:
    if len(raw) != length:
        raise CorruptEntry("truncated todo")
    try:
        return ToDo.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptEntry(f"unreadable todo: {exc}") from exc


#: What ``load`` reads at once: nearly every todo, in one read.
HEAD_READ = 16 * 1024


def load(path: Path) -> tuple[ToDo, int]:
    """The todo of a queue file and the offset of its message.  One open and, for nearly
    every entry, one read: the worker loads every entry of every batch, and Python's
    buffered ``open`` costs six system calls before the first byte (each one a chance for
    a hundred delivery threads to contend for the GIL)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.read(fd, HEAD_READ)
        length = _todo_length(head)
        raw = head[_LEN.size:_LEN.size + length]
        if len(raw) < length:
            raw += os.pread(fd, length - len(raw), _LEN.size + len(raw))
    finally:
        os.close(fd)
    return _todo(raw, length), _LEN.size + length


def read_message(path: Path) -> bytes:
    """The message bytes (dot-stuffed, CRLF) of a queue file."""
    with open(path, "rb") as fh:
        _, offset = read_header(fh)
        fh.seek(offset)
        return fh.read()


#: Large messages are copied into queue files this much at a time.
COPY_CHUNK = 1024 * 1024


def write_tmp(directory: Path, tmp_name: str, header: bytes, message: bytes | IO[bytes]) -> Path:
    """Write a complete file under a temp name and fsync it; the caller renames it.

    ``message`` is the stored form: bytes, or a file holding it (a large message,
    copied a chunk at a time so that it never has to be in memory whole).
    """
    path = directory / tmp_name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        if not isinstance(message, bytes):
            _write_all(fd, memoryview(header))
            message.seek(0)
            while chunk := message.read(COPY_CHUNK):
                _write_all(fd, memoryview(chunk))
        elif len(message) < 65536:
            _write_all(fd, memoryview(header + message))
        else:
            _write_all(fd, memoryview(header))
            _write_all(fd, memoryview(message))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    return path


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (the last step before anyone hears OK)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
