"""Claims lent to holders on other hosts: parcels out, renewals in, and when such a lease may end.

A route whose entries may be delivered by any worker goes out as parcels
(:class:`~mailflow.wire.payloads.Parcel`): each entry's envelope and message, no
parcel over ``PAYLOAD_MAX`` bytes of payload.  An entry too large for any
parcel stays with the owner: it goes on as a plain route, on the owner's own
queue, and its bytes never enter the broker.

The claim stays the owner's: a rename here, its lease this directory's mtime.
A holder elsewhere renews it by remote control (``mailflow_renew``), and the
claim is marked as lent (``lent/<claim>``).  Such a claim expires only when
this host has heard the broker itself for a whole lease (``.heard/<node>``,
kept by each of its workers from its own renewal broadcasts coming back):
otherwise a renewal may have been sent and not reached us, and its holder may
still be sending.  docs/architecture.md has the argument, case by case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from mailflow import config
from mailflow.config import environ
from mailflow.message import dot_unstuff
from mailflow.queue import verp
from mailflow.queue.claims import load
from mailflow.queue.entry import BadName, check_claim, check_name
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import Spool, now_ms
from mailflow.wire.dsnparams import Dsn
from mailflow.wire.lease import LEASE_SECONDS, PARCEL_WAIT_SECONDS, RENEW_EVERY
from mailflow.wire.payloads import Letter, Parcel, Route
from mailflow.wire.requiretls import REQUIRETLS_NOTE

log = logging.getLogger(__name__)

#: Payload bytes one task may carry.  Redis holds each message whole in memory and
#: blocks while it copies it; RabbitMQ refuses messages over ``max_message_size``
#: (128 MiB by default) and pages large ones: a few MiB keeps both fast.
PAYLOAD_MAX: int = environ.value("MAILFLOW_PAYLOAD_MAX")
LENT = "lent"
#: ``lent/<claim>.taken``: a holder has renewed the claim (its parcel left the broker).
TAKEN = ".taken"
#: ``lent/returned/<claim>``: a claim that ended, kept for the outcomes that come late.
RETURNED = "returned"
#: How long an ended claim's record is kept (Redis redelivers after its visibility timeout,
#: an hour by default; a thawed host reports when it is back).
RETURNED_KEEP = 2 * 86400.0
HEARD = ".heard"
#: A gap longer than this between two broadcasts heard means we were not hearing.
HEARD_GAP_S = 2 * RENEW_EVERY

_NODE = re.compile(r"[^A-Za-z0-9@._-]")
#: Lent claims already said to be kept past their lease (said once each).
_kept: set[str] = set()


def pack(spool: Spool, route: Route) -> tuple[list[Parcel], Route | None]:
    """The route's entries as parcels under the payload cap, and the rest as a local route.

    Entries are read here, once, on the owner: a holder elsewhere has no queue.
    """
    parcels: list[Parcel] = []
    local: list[str] = []
    letters: list[Letter] = []
    size = 0
    issued = now_ms()

    def close() -> None:
        nonlocal letters, size
        if letters:
            batch = route.batch.part([x.name for x in letters])
            parcels.append(Parcel(route=dataclasses.replace(route, batch=batch, slot_wait_since=None),
                                  letters=tuple(letters), issued_ms=issued,
                                  lease_ms=int(LEASE_SECONDS * 1000),
                                  wait_ms=int(PARCEL_WAIT_SECONDS * 1000)))
        letters, size = [], 0

    for hmail in load(spool, route.batch):
        if _file_size(hmail) * 4 // 3 > PAYLOAD_MAX:
            local.append(hmail.filename)
            continue
        letter = _letter(hmail)
        if letter.size() > PAYLOAD_MAX:
            local.append(hmail.filename)
            continue
        if size + letter.size() > PAYLOAD_MAX:
            close()
        letters.append(letter)
        size += letter.size()
    close()
    rest = dataclasses.replace(route, batch=route.batch.part(local), slot_wait_since=None) if local else None
    return parcels, rest


def _file_size(hmail: HMail) -> int:
    try:
        return os.stat(hmail.path).st_size
    except FileNotFoundError:
        return 0


def _letter(hmail: HMail) -> Letter:
    """The entry for a holder elsewhere: the message itself, not its stored (dot-stuffed)
    form -- the holder puts it in wire form when it sends it, and trusts no stuffing."""
    return Letter(name=hmail.filename,
                  mail_from=verp.envelope_sender(hmail.todo, config.current().outbound.verp_domain),
                  rcpt_to=tuple(r.address for r in hmail.todo.rcpt_to), message=dot_unstuff(hmail.message()),
                  dsn=Dsn.from_notes(hmail.todo.notes),
                  requiretls=hmail.todo.notes.get(REQUIRETLS_NOTE) is True)


def _lent_dir(spool: Spool) -> Path:
    return Path(spool.root) / LENT


def lend(spool: Spool, claim: str, names: list[str] | tuple[str, ...]) -> None:
    """Mark the claim as held elsewhere, with the entries that go out in its parcels, after
    they were made (issued) and before they are published: the mark's mtime is when the
    claim was lent (see :func:`spare`), its lines the only entries a report may name."""
    directory = _lent_dir(spool)
    directory.mkdir(exist_ok=True)
    text = "".join(check_name(n) + "\n" for n in names).encode()
    fd = os.open(directory / check_claim(claim), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text)  # one write: routes of one claim lent by threads never interleave
    finally:
        os.close(fd)


def is_lent(spool: Spool, claim: str) -> bool:
    return (_lent_dir(spool) / claim).exists()


def lent_names(spool: Spool, claim: str) -> set[str] | None:
    """The entries this queue lent under ``claim`` -- while it is lent, and for
    ``RETURNED_KEEP`` after (late outcomes); None when it lent no such claim."""
    for path in (_lent_dir(spool) / check_claim(claim), _lent_dir(spool) / RETURNED / claim):
        try:
            return set(path.read_text().split())
        except FileNotFoundError:
            continue
    return None


def lent_at(spool: Spool, claim: str) -> float | None:
    """When the claim was lent (seconds, this host's clock), None if it is not."""
    try:
        return os.stat(_lent_dir(spool) / claim).st_mtime
    except FileNotFoundError:
        return None


def taken(spool: Spool, claim: str) -> bool:
    """Whether a holder has renewed the lent claim: its parcel left the broker."""
    return (_lent_dir(spool) / f"{claim}{TAKEN}").exists()


def returned(spool: Spool, claim: str) -> None:
    """The claim is done with: once its directory is gone it is no longer lent, and its
    record is kept aside for the outcomes that come late."""
    if spool.claim_dir(claim).exists():
        return
    directory = _lent_dir(spool)
    (directory / f"{claim}{TAKEN}").unlink(missing_ok=True)
    try:
        os.rename(directory / claim, directory / RETURNED / claim)
    except FileNotFoundError:
        (directory / RETURNED).mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another thread returned it first
            os.rename(directory / claim, directory / RETURNED / claim)


def renew(spool: Spool, claims: list[str]) -> int:
    """A holder elsewhere renews these claims of ours; only lent claims are renewed."""
    renewed = 0
    for claim in claims:
        try:
            if is_lent(spool, check_claim(claim)) and spool.renew(claim):
                renewed += 1
                mark = _lent_dir(spool) / f"{claim}{TAKEN}"
                if not mark.exists():
                    mark.touch()
        except ValueError:
            log.warning("a renewal named %r, which is not a claim id", claim)
    return renewed


def heard(spool: Spool, node: str, at_ms: int | None = None) -> None:
    """This host's worker ``node`` heard the broker (its own broadcast came back)."""
    now = now_ms() if at_ms is None else at_ms
    directory = Path(spool.root) / HEARD
    directory.mkdir(exist_ok=True)
    path = directory / _NODE.sub("_", node)
    since = now
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        last = json.loads(path.read_text())
        if now - int(last["last"]) <= HEARD_GAP_S * 1000:
            since = int(last["since"])
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"since": since, "last": now}))
    os.replace(tmp, path)


def heard_for(spool: Spool, seconds: float, at_ms: int | None = None) -> bool:
    """Some worker of this host has heard the broker without a gap for the last ``seconds``."""
    now = now_ms() if at_ms is None else at_ms
    directory = Path(spool.root) / HEARD
    try:
        files = [e.path for e in os.scandir(directory) if not e.name.endswith(".tmp")]
    except FileNotFoundError:
        return False
    for path in files:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            state = json.loads(Path(path).read_text())
            if int(state["since"]) <= now - seconds * 1000 and int(state["last"]) >= now - HEARD_GAP_S * 1000:
                return True
    return False


def spare(spool: Spool, lease_seconds: float) -> Callable[[str], bool]:
    """For :meth:`Spool.expire`: keep a lent claim while its parcels may still wait in the
    broker for a holder (``PARCEL_WAIT_SECONDS`` and a lease from when it was lent), and
    while we may have missed its renewals.

    Also drops the marks of lent claims whose directories are gone.
    """
    _sweep_marks(spool)
    if not _lent_dir(spool).exists():
        return lambda claim: False
    deaf = not heard_for(spool, lease_seconds)
    now = time.time()

    def keep(claim: str) -> bool:
        since = lent_at(spool, claim)
        if since is None:
            return False
        # a parcel not yet taken may wait in the broker; once a holder renewed the claim it
        # is out of the broker, and a lease after its last renewal is all it gets
        if not taken(spool, claim) and now < since + PARCEL_WAIT_SECONDS + lease_seconds:
            return True
        if deaf:
            if claim not in _kept:
                _kept.add(claim)
                log.warning("claim %s is lent to another host and its lease ran out, but this "
                            "host has not heard the broker for a whole lease: kept until it has",
                            claim)
            return True
        _kept.discard(claim)
        return False
    return keep


def _sweep_marks(spool: Spool) -> None:
    directory = _lent_dir(spool)
    try:
        marks = [e.name for e in os.scandir(directory) if e.is_file()]
    except FileNotFoundError:
        return
    for mark in marks:
        with contextlib.suppress(BadName):
            returned(spool, check_claim(mark.removesuffix(TAKEN)))
    old = time.time() - RETURNED_KEEP
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory / RETURNED):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_ctime < old:
                    os.unlink(entry.path)
