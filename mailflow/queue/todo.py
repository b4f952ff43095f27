"""The queue entry's envelope and notes: Haraka's ``todo`` (the JSON header of a queue file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailflow.address import Address


@dataclass
class ToDo:
    """What must be delivered: one sender, the recipients at one domain, and the notes.

    ``notes`` are the original transaction's notes (``outbound_ip`` and
    ``outbound_helo`` are read from here).  ``record`` is mailflow's own record
    of the entry: per-recipient outcomes, attempt history, last error.
    """

    uuid: str
    queue_time: int  # epoch milliseconds
    domain: str
    mail_from: Address
    rcpt_to: list[Address]
    notes: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "queue_time": self.queue_time,
            "domain": self.domain,
            "mail_from": self.mail_from.to_json(),
            "rcpt_to": [r.to_json() for r in self.rcpt_to],
            "notes": self.notes,
            "state": self.record,  # the key on disk: queue files written before keep reading
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToDo:
        return cls(
            uuid=str(data["uuid"]),
            queue_time=int(data["queue_time"]),
            domain=str(data["domain"]),
            mail_from=Address.from_json(data["mail_from"]),
            rcpt_to=[Address.from_json(r) for r in data["rcpt_to"]],
            notes=dict(data.get("notes") or {}),
            record=dict(data.get("state") or {}),
        )
