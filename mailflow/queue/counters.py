"""Totals since the queue directory was created: delivered, bounced, dropped.

Each counter is a file in ``<queue>/.counters/`` that grows by one byte per
event, written with O_APPEND: every process on the host (smtpd, workers, the
CLI) adds to it without locks, nothing is lost when one dies, and reading it
is one ``stat``.  It lives with the queue it counts.

A process keeps the counter files it adds to open (the most recently used few):
a message adds to two or three on each side, and opening, writing and closing
each is three system calls -- in a threaded process, three hand-offs of the GIL
-- where one write does.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from mailflow.config.tenants import TENANT_NOTE

NAMES = ("delivered", "bounced", "dropped")
#: Each outcome once more per tenant, ``by-tenant/<tenant>/<name>`` (``-``: no tenant), for
#: the ``tenant`` label of the metrics.
BY_TENANT = "by-tenant"
NO_TENANT = "-"


def _path(queue_root: Path, name: str) -> str:
    """The counter's file: a string, as ``os.open`` takes it -- several counters are added
    for every message on both sides, and a Path costs more to build and turn into a string
    than the append itself."""
    return os.path.join(queue_root, ".counters", name)


#: How many counter files a process keeps open (per-destination reply counters are many).
KEEP_OPEN = 64


class _OpenFiles:
    """Counter files open for appending, least recently used first.  The lock is held
    across the write: an evicted descriptor is closed only when no thread is writing to
    it (its number could otherwise be another file's by the time the write is made)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fds: OrderedDict[str, int] = OrderedDict()

    def append(self, path: str, data: bytes) -> None:
        with self.lock:
            fd = self.fds.get(path)
            if fd is None:
                fd = self.fds[path] = _open(path)
                while len(self.fds) > KEEP_OPEN:
                    os.close(self.fds.popitem(last=False)[1])
            else:
                self.fds.move_to_end(path)
            os.write(fd, data)


def _open(path: str) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o640)
    except FileNotFoundError:  # the first count of a new queue: not a mkdir per message
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o640)


_open_files = _OpenFiles()


def _forked() -> None:
    """A forked child starts with a lock no thread of its own holds, and opens its own."""
    global _open_files
    inherited, _open_files = _open_files, _OpenFiles()
    for fd in inherited.fds.values():
        os.close(fd)


os.register_at_fork(after_in_child=_forked)


def add(queue_root: Path, name: str, n: int = 1) -> None:
    _open_files.append(_path(queue_root, name), b"." * n)


def read(queue_root: Path, name: str) -> int:
    try:
        return os.stat(_path(queue_root, name)).st_size
    except FileNotFoundError:
        return 0


def add_outcome(queue_root: Path, name: str, notes: dict[str, object] | None, n: int = 1) -> None:
    """An outcome's counter, and the same counter of the message's tenant."""
    add(queue_root, name, n)
    tenant = (notes or {}).get(TENANT_NOTE) or NO_TENANT
    add(queue_root, f"{BY_TENANT}/{tenant}/{name}", n)


def tenants(queue_root: Path) -> list[str]:
    """Every tenant some outcome was counted for (``-`` among them)."""
    try:
        return sorted(os.listdir(queue_root / ".counters" / BY_TENANT))
    except FileNotFoundError:
        return []


def read_tenant(queue_root: Path, tenant: str, name: str) -> int:
    return read(queue_root, f"{BY_TENANT}/{tenant}/{name}")


#: Replies by class and destination, ``replies/<class>/<destination>``, for the metrics.
REPLIES = "replies"


def add_reply(queue_root: Path, reply_class: str, destination: str) -> None:
    add(queue_root, f"{REPLIES}/{reply_class}/{destination}")


def replies(queue_root: Path) -> dict[tuple[str, str], int]:
    """Every (class, destination) counted, with its count."""
    out: dict[tuple[str, str], int] = {}
    base = queue_root / ".counters" / REPLIES
    try:
        classes = os.listdir(base)
    except FileNotFoundError:
        return out
    for cls in classes:
        try:
            for destination in os.listdir(base / cls):
                out[(cls, destination)] = read(queue_root, f"{REPLIES}/{cls}/{destination}")
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out
