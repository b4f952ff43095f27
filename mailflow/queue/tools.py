"""What ``mailflow queue list|show|delete|stats`` read and do.

Counting needs no file opened (names carry the schedule); listing opens each
entry's header for its envelope and last error, never its message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailflow import logs
from mailflow.config.tenants import CAMPAIGN_NOTE, TENANT_NOTE
from mailflow.message import dot_unstuff, header_block
from mailflow.queue import countdowns, counters, holds
from mailflow.queue import entry as qfile
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import ACTIVE, FAILED, PENDING, Spool, now_ms

#: Where the entries of an expired claim are, on their way back: due now (queued).
EXPIRED = "expired"


def _located(spool: Spool) -> Iterator[tuple[str, Path, EntryName]]:
    """Every entry: where it is, the directory holding it, its name -- no path built per
    entry (the metrics page counts the whole queue at every scrape)."""
    for place in (PENDING, FAILED):
        directory = spool.dir(place)
        for name in spool.names(place):
            yield place, directory, name
    for claim in spool.claims():
        for name in _names(spool.active / claim):
            yield ACTIVE, spool.active / claim, name
    for directory in spool.expired_dirs():
        for name in _names(directory):
            yield EXPIRED, directory, name


def _entries(spool: Spool) -> list[tuple[str, Path, EntryName]]:
    out = []
    for where, directory, name in _located(spool):
        if where == EXPIRED:
            out.append((PENDING, directory / str(name), name.rescheduled(0)))
        else:
            out.append((where, directory / str(name), name))
    return out


def _names(directory: Path) -> list[EntryName]:
    try:
        return [n for n in (EntryName.parse(p.name) for p in directory.iterdir()) if n]
    except FileNotFoundError:
        return []


def state_of(where: str, name: EntryName, now: int) -> str:
    if where == ACTIVE:
        return "in_progress"
    if where == PENDING and name.next_attempt_ms > now:
        return "waiting"
    return "queued"  # due, or failed recipients waiting for their bounce


#: The keys of ``stats``, in order.
STAT_KEYS = ("queued", "in_progress", "waiting", *counters.NAMES)


def census(spool: Spool) -> tuple[dict[str, int], int | None]:
    """The entries by state and the oldest one's arrival (ms), in one listing."""
    now = now_ms()
    counts = {"queued": 0, "in_progress": 0, "waiting": 0}
    oldest: int | None = None
    for where, _, name in _located(spool):
        counts["queued" if where == EXPIRED else state_of(where, name, now)] += 1
        if oldest is None or name.arrival_ms < oldest:
            oldest = name.arrival_ms
    return counts, oldest


def stats(spool: Spool) -> dict[str, int]:
    out = census(spool)[0]
    for counter in counters.NAMES:
        out[counter] = counters.read(spool.root, counter)
    return out


def tenant_stats(spool: Spool, tenant: str) -> dict[str, Any]:
    """What is in the queue now for one tenant, by state (totals are kept for the queue as a
    whole, not per tenant: delivered and bounced are in the log lines and metrics)."""
    counts: dict[str, Any] = {"tenant": tenant, "queued": 0, "in_progress": 0, "waiting": 0}
    for row in rows(spool, tenant=tenant):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def age_of(oldest_ms: int | None) -> float:
    """Seconds since the oldest entry arrived (``census``'s second answer; 0: none)."""
    return max(0.0, (now_ms() - oldest_ms) / 1000) if oldest_ms is not None else 0.0


def rows(spool: Spool, *, domain: str | None = None, state: str | None = None,
         tenant: str | None = None) -> list[dict[str, Any]]:
    """Every entry, oldest first, with what an operator asks of it; ``tenant`` reads each
    entry's header (a tenant is not in the file name)."""
    now = now_ms()
    out = []
    armed = countdowns.armed_names(spool)
    held = holds.current(spool.root)
    for where, path, name in sorted(_entries(spool), key=lambda e: e[2].arrival_ms):
        st = state_of(where, name, now)
        if (domain and name.domain != domain.lower()) or (state and st != state):
            continue
        try:
            todo, offset = qfile.load(path)
            size = path.stat().st_size - offset
        except (OSError, qfile.CorruptEntry):  # gone meanwhile, or not a readable entry
            continue
        if tenant is not None and todo.notes.get(TENANT_NOTE) != tenant:
            continue
        out.append({
            "id": name.id, "domain": name.domain, "state": st,
            "age": round((now - name.arrival_ms) / 1000),
            "size": size, "mail_from": todo.mail_from.address,
            "rcpt_to": [r.address for r in todo.rcpt_to], "num_failures": name.num_failures,
            "next_attempt": name.next_attempt_ms // 1000 if st == "waiting" else None,
            "countdown": str(name) in armed,  # a countdown retry is armed for it
            "last_error": todo.record.get("last_error") or todo.record.get("reason"),
            #: a shaping rule holds it back (not a failure): which, as shaping:domain:x
            "held": hold.why if (hold := holds.of(held, name)) and st == "waiting" else None,
            "tenant": todo.notes.get(TENANT_NOTE), "campaign": todo.notes.get(CAMPAIGN_NOTE),
            "last_class": todo.record.get("last_class"),
        })
    return out


def find(spool: Spool, ident: str) -> list[Path]:
    return [p for _, p, n in _entries(spool) if n.matches(ident)]


def printable(text: str, keep: str = "\n\t") -> str:
    """``text`` safe for a terminal: control and other non-printing characters escaped.

    A Subject (or an address, or a remote reply) can carry escape sequences that
    would rewrite an operator's screen; they are shown as ``\\x1b``, never sent.
    """
    return "".join(c if c.isprintable() or c in keep else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


def show(path: Path, body: bool = False) -> str:
    """One entry as ``queue show`` prints it: envelope, attempts, headers (the whole message
    with ``body``, as postcat -b does), control characters made visible."""
    todo, _ = qfile.load(path)
    message = dot_unstuff(qfile.read_message(path))
    lines = [f"id: {todo.uuid}", f"domain: {todo.domain}",
             f"queued: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(todo.queue_time / 1000))}",
             f"from: {todo.mail_from}", "to: " + ", ".join(str(r) for r in todo.rcpt_to),
             f"file: {path}"]
    for address, status in todo.record.get("rcpt_status", {}).items():
        lines.append(f"last attempt for {address}: {status.get('code') or ''} {status.get('text', '')} "
                     f"({status.get('remote_mta', '-')})")
    for attempt in todo.record.get("history", []):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(attempt["at"] / 1000))
        lines.append(f"attempt {when} via {attempt.get('host', '-')}: {attempt.get('error', '')}")
    if todo.record.get("last_error"):
        lines.append(f"last error: {todo.record['last_error']}")
    shown = message if body else header_block(message)
    lines += ["", shown.decode("utf-8", "replace").replace("\r\n", "\n").rstrip()]
    return printable("\n".join(lines))


def delete(spool: Spool, *, ident: str | None = None, domain: str | None = None,
           all_deferred: bool = False) -> int:
    """Remove matching entries (an in-flight one is skipped by its batch before it is sent)."""
    now = now_ms()
    removed = 0
    for where, path, name in _entries(spool):
        if ident is not None and not name.matches(ident):
            continue
        if domain is not None and name.domain != domain.lower():
            continue
        if all_deferred and not (where == PENDING and name.num_failures > 0
                                 and name.next_attempt_ms > now):
            continue
        try:
            notes = qfile.load(path)[0].notes
        except (OSError, qfile.CorruptEntry):
            notes = {}
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        counters.add_outcome(spool.root, "dropped", notes)
        logs.event("dropped", id=name.id, reason="deleted by the operator")
    return removed
