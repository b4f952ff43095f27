"""Totals since the queue directory was created: delivered, bounced, dropped.

Each counter is a file in ``<queue>/.counters/`` that grows by one byte per
event, written with O_APPEND: every process on the host (smtpd, workers, the
CLI) adds to it without locks, nothing is lost when one dies, and reading it
is one ``stat``.  It lives with the queue it counts.
"""

from __future__ import annotations

import os
from pathlib import Path

NAMES = ("delivered", "bounced", "dropped")


def _path(queue_root: Path, name: str) -> Path:
    return queue_root / ".counters" / name


def add(queue_root: Path, name: str, n: int = 1) -> None:
    path = _path(queue_root, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except FileNotFoundError:  # the first count of a new queue: not a mkdir per message
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"." * n)
    finally:
        os.close(fd)


def read(queue_root: Path, name: str) -> int:
    try:
        return os.stat(_path(queue_root, name)).st_size
    except FileNotFoundError:
        return 0
