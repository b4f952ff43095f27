"""A destination batch: the unit of work of the pipeline (docs/architecture.md).

A batch is a JSON dict carried from task to task: ``domain``, ``claim`` (its
directory under ``active/``), ``names`` (queue file names in it), then ``mx``
(the MX list as dicts) and ``bind`` / ``helo`` once looked up.  Each step
re-reads the files; an entry no longer in the claim has been handled and is
skipped, and a claim whose lease expired is skipped whole.

While a step works on a batch it holds the claim: a thread of this process
renews the lease of every held claim every few seconds.

A batch comes from the broker, and whoever can publish there is not meant to
own the file system: :func:`checked` accepts only the queue's own claim ids
and entry names, so no payload can point a worker outside the queue
directory.  A ``get_mx`` password in the MX list travels sealed
(:mod:`mailflow.seal`).
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
from pathlib import Path
from typing import Any

from .client import Session
from .config import Config
from .hmail import HMail
from .mx import MX, Target, mx_from_fields, targets
from .pool import POOL
from .qfile import CorruptEntry, EntryName
from .seal import seal, unseal
from .spool import BadName, Spool, check_claim, check_name

log = logging.getLogger(__name__)

#: A claim not renewed for this long is given back to pending/ by the queue manager.
LEASE_SECONDS = float(os.environ.get("MAILFLOW_LEASE_SECONDS") or 300)
#: Entries that could not be handed on (the broker was unreachable) are due again after this.
BROKER_RETRY_MS = 5000
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
        fd = os.open(spool.claim_dir(claim), os.O_RDONLY | os.O_DIRECTORY)
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


def checked(batch: Any) -> dict[str, Any]:
    """The batch, when it names only this queue's own claim and entries; BadName otherwise."""
    if not isinstance(batch, dict):
        raise BadName(f"a batch is a JSON object, not {type(batch).__name__}")
    check_claim(batch.get("claim"))
    names = batch.get("names")
    if not isinstance(names, list):
        raise BadName("the batch has no list of names")
    domain = batch.get("domain")
    for name in names:
        check_name(name)
        parsed = EntryName.parse(name)
        if domain is not None and parsed is not None and parsed.domain != domain:
            raise BadName(f"{name!r} is not an entry for {domain!r}")
    return batch


def accepted(batch: Any, task: str) -> dict[str, Any] | None:
    """``checked(batch)``, or None with a log line: a task refuses what is not its queue's."""
    try:
        return checked(batch)
    except BadName as exc:
        log.error("%s refused a payload that is not one of this queue's batches: %s", task, exc)
        return None


def give_back(spool: Spool, hmails: list[HMail], due_ms: int) -> int:
    """Put claimed entries back in pending/, due at ``due_ms``, not counted as a failure."""
    back = 0
    for hmail in hmails:
        try:
            spool.release(hmail.path, hmail.name.rescheduled(due_ms))
        except FileNotFoundError:  # handled meanwhile
            continue
        back += 1
    return back


def mx_to_json(mx: MX, config_dir: Path) -> dict[str, Any]:
    """An MX as it rides in a batch: the get_mx password sealed, never in clear."""
    data = dataclasses.asdict(mx)
    secret = data.pop("auth_pass")
    if secret is not None:
        data["auth_pass_sealed"] = seal(config_dir, secret)
    return data


def mx_from_json(data: Any, config_dir: Path) -> MX:
    """The MX of a batch (every field checked: it came through the broker)."""
    if not isinstance(data, dict):
        raise BadName(f"an MX is a JSON object, not {type(data).__name__}")
    fields = dict(data)
    sealed = fields.pop("auth_pass_sealed", None)
    if sealed is not None:
        if not isinstance(sealed, str):
            raise BadName("auth_pass_sealed is not text")
        fields["auth_pass"] = unseal(config_dir, sealed)
    try:
        return mx_from_fields(fields, from_dns=bool(fields.pop("from_dns", True)))
    except ValueError as exc:
        raise BadName(str(exc)) from None


def open_for(batch: dict[str, Any], cfg: Config, *, wait: float = 0.0) -> Session:
    """Resolve the batch's MX addresses and get a session from the pool.

    Raises DeliveryError (NoSlot among them: every address at its limits).
    """
    out = cfg.outbound
    mxs = batch.get("mx")
    if not isinstance(mxs, list) or not mxs:
        raise BadName("the batch has no MX list")
    found = targets([mx_from_json(m, cfg.directory) for m in mxs], out)
    bind, helo = source_for(found[0], batch, cfg)
    return POOL.acquire(found, helo=helo, bind=bind, out=out, tls=cfg.tls_outbound,
                        domain=batch["domain"], wait=wait)


def source_for(target: Target, batch: dict[str, Any], cfg: Config) -> tuple[str | None, str]:
    """Source address and EHLO name: get_mx's bind/bind_helo, else the notes, else defaults."""
    bind = target.mx.bind or batch.get("bind") or None
    helo = target.mx.bind_helo or batch.get("helo") or cfg.me
    return bind, helo
