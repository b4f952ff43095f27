"""Why an entry waits without having failed: a shaping rule held it back.

An entry's name says when it is due, not why; ``queue list`` showed a held entry as
``fails=0 error=-``, as if nothing were the matter.  Each hold therefore leaves a small
record beside the queue, ``held/<due_ms>-<token>.json``: the rule (``shaping:domain:x``),
the time the entries are due again, and their ids.  An entry reads as held only while its
name is due at the record's time: once it is claimed again, delivered or deferred for a
reply, the record no longer describes it, so a stale record can never tell a lie.  Records
whose time has passed are removed by the next hold.  A record is information, never the
contract: one that cannot be written is logged and the hold goes on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailflow.queue.entry import EntryName
from mailflow.queue.spool import now_ms
from mailflow.util import atomic

log = logging.getLogger(__name__)

DIRECTORY = "held"
#: A record is kept this long past its due time (a scan may be a little late to claim).
KEEP_MS = 60_000


@dataclass(frozen=True)
class Hold:
    why: str  #: ``shaping:domain:example.com`` (several rules: comma separated)
    due_ms: int


def record(root: Path, names: Iterable[EntryName], due_ms: int, why: str) -> None:
    """Remember that ``names`` wait until ``due_ms`` because of ``why``."""
    ids = sorted({n.id for n in names})
    if not ids or not why:
        return
    directory = root / DIRECTORY
    try:
        _prune(directory, now_ms())
        atomic.replace_text(directory / f"{due_ms}-{secrets.token_hex(4)}.json",
                            json.dumps({"why": why, "due_ms": due_ms, "ids": ids}))
    except OSError as exc:
        log.warning("hold of %d entries (%s) not recorded: %s", len(ids), why, exc)


def _prune(directory: Path, now: int) -> None:
    try:
        found = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in found:
        due, sep, _ = name.partition("-")
        if sep and due.isdigit() and int(due) + KEEP_MS < now:
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass


def current(root: Path) -> dict[str, list[Hold]]:
    """Every recorded hold still ahead, by entry id (an id may be held more than once:
    ``of`` picks the one that matches the entry's due time)."""
    out: dict[str, list[Hold]] = {}
    directory = root / DIRECTORY
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            data = json.loads((directory / name).read_text())
            hold = Hold(why=str(data["why"]), due_ms=int(data["due_ms"]))
            ids = [str(i) for i in data["ids"]]
        except (OSError, ValueError, KeyError, TypeError):  # removed meanwhile, or not ours
            continue
        for ident in ids:
            out.setdefault(ident, []).append(hold)
    return out


def of(holds: dict[str, list[Hold]], name: EntryName) -> Hold | None:
    """The hold that explains why ``name`` waits, if one does: same id, same due time."""
    for hold in holds.get(name.id, ()):
        if hold.due_ms == name.next_attempt_ms:
            return hold
    return None
