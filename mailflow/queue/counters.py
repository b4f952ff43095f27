"""Totals since the queue directory was created: delivered, bounced, dropped.

Each counter is a file in ``<queue>/.counters/`` that grows by one byte per
event, written with O_APPEND: every process on the host (smtpd, workers, the
CLI) adds to it without locks, nothing is lost when one dies, and reading it
is one ``stat``.  It lives with the queue it counts.
"""

from __future__ import annotations

import os
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


def add(queue_root: Path, name: str, n: int = 1) -> None:
    path = _path(queue_root, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except FileNotFoundError:  # the first count of a new queue: not a mkdir per message
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
