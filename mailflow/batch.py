"""A destination batch: the unit of work of the pipeline (docs/architecture.md).

A batch is a JSON dict carried from task to task: ``domain``, ``claim`` (its
directory under ``active/``), ``names`` (queue file names in it), then ``mx``
(the MX list as dicts) and ``bind`` / ``helo`` once looked up.  Each step
re-reads the files; an entry no longer in the claim has been handled and is
skipped, and a claim whose lease expired is skipped whole.

While a step works on a batch it holds the claim: a thread of this process
renews the lease of every held claim every few seconds.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .config import Config
from .hmail import HMail
from .mx import MX, Target
from .qfile import CorruptEntry
from .spool import Spool

log = logging.getLogger(__name__)

#: A claim not renewed for this long is given back to pending/ by the queue manager.
LEASE_SECONDS = float(os.environ.get("MAILFLOW_LEASE_SECONDS") or 300)
#: How often a holder renews its claims.
RENEW_EVERY = min(10.0, LEASE_SECONDS / 4)

_held: dict[tuple[str, str], int] = {}
_held_lock = threading.Lock()
_renewer: threading.Thread | None = None


def _renew_forever() -> None:
    while True:
        threading.Event().wait(RENEW_EVERY)
        with _held_lock:
            claims = list(_held)
        for root, claim in claims:
            Spool(root).renew(claim)


#: How long a second execution of the same batch waits for the first to let go.
EXCLUSIVE_WAIT = 120.0


def _lock_claim(spool: Spool, claim: str) -> int | None:
    """An exclusive flock on the claim directory, waiting for another holder; None if it is gone.

    A broker may run a task twice at once (Redis redelivers a task that outlives its
    visibility timeout); the second waits here and then finds its entries handled.
    """
    try:
        fd = os.open(spool.active / claim, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + EXCLUSIVE_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


@contextmanager
def holding(spool: Spool, batch: dict[str, Any]) -> Iterator[bool]:
    """Hold the batch's claim, alone, while the block runs; yields False when the claim is gone."""
    global _renewer
    claim = batch["claim"]
    fd = _lock_claim(spool, claim)
    if fd is None:
        yield False
        return
    if not spool.renew(claim):
        os.close(fd)
        yield False
        return
    key = (str(spool.root), claim)
    with _held_lock:
        _held[key] = _held.get(key, 0) + 1
        if _renewer is None or not _renewer.is_alive():
            _renewer = threading.Thread(target=_renew_forever, daemon=True, name="mailflow-lease")
            _renewer.start()
    try:
        yield True
    finally:
        with _held_lock:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        os.close(fd)  # releases the flock


def load(spool: Spool, batch: dict[str, Any], names: list[str] | None = None) -> list[HMail]:
    out = []
    for name in batch["names"] if names is None else names:
        path = spool.claimed_path(batch["claim"], name)
        try:
            out.append(HMail.load(path))
        except FileNotFoundError:
            continue
        except CorruptEntry as exc:
            spool.move_aside(path, str(exc))
    return out


def shown(batch: dict[str, Any]) -> str:
    """How a batch appears in events and Flower: what identifies it, never credentials."""
    return repr([{k: batch[k] for k in ("domain", "claim", "names") if k in batch}])


def mx_to_json(mx: MX) -> dict[str, Any]:
    return dataclasses.asdict(mx)


def mx_from_json(data: dict[str, Any]) -> MX:
    return MX(**data)


def source_for(target: Target, batch: dict[str, Any], cfg: Config) -> tuple[str | None, str]:
    """Source address and EHLO name: get_mx's bind/bind_helo, else the notes, else defaults."""
    bind = target.mx.bind or batch.get("bind") or None
    helo = target.mx.bind_helo or batch.get("helo") or cfg.me
    return bind, helo
