"""Small files that several processes of a host share: written whole, or worked on by one.

A reader must never see half a file, so each is written under a hidden temporary name
and renamed into place; its directory is made on the first write that finds it missing
(not checked before every write: these writes sit on per-message paths).  A job that
every worker offers to do but one process should run takes a lock it does not wait for.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole, or keeps what it held (readers skip dot-names)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def one_at_a_time(lock: Path) -> Iterator[bool]:
    """True while this process holds ``lock``; False at once when another does."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
