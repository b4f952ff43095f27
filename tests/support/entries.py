"""Queue entries made for tests, without the submission path."""

from __future__ import annotations

from mailflow.address import parse_address
from mailflow.queue.entry import EntryName
from mailflow.queue.spool import NewEntry, now_ms
from mailflow.queue.todo import ToDo


def make_entry(ident: str = "U.1", domain: str = "example.com", pad: int = 0) -> NewEntry:
    t = now_ms()
    notes = {"k": "v", "pad": "p" * pad} if pad else {"k": "v"}
    todo = ToDo(uuid=ident, queue_time=t, domain=domain, mail_from=parse_address("a@b.example"),
                rcpt_to=[parse_address(f"x@{domain}")], notes=notes)
    return NewEntry(EntryName(t, 0, t, ident, domain), todo)
