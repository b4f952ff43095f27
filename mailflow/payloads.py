"""What the delivery steps hand each other through the broker: task names and typed payloads.

One definition each, with its JSON form:

- :class:`Batch` -- due entries of one claim, from the queue manager to
  ``mailflow.lookup_mx`` (or, for failed/ entries, ``mailflow.bounce``);
- :class:`Route` -- the entries of a batch that go the same way (one MX list,
  one source address and EHLO name), from ``lookup_mx`` to
  ``acquire_connection`` to ``transmit``;
- :class:`Outcome` -- what one attempt at one entry found: where it went and
  every recipient's reply.

A payload comes from the broker, and whoever can publish there is not meant to
own the file system: ``from_json`` accepts only the queue's own claim ids and
entry names, and every MX field is checked (:class:`BadName` otherwise).  A
``get_mx`` password travels sealed (:mod:`mailflow.seal`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailflow.errors import NothingToDo, Reply
from mailflow.queue.entry import BadName, EntryName, check_claim
from mailflow.queue.identity import IDENTITY
from mailflow.relay.answers import mx_from_fields
from mailflow.relay.mx import MX
from mailflow.seal import seal, unseal

log = logging.getLogger(__name__)

# The pipeline's tasks, named once: publishers hand on by these names, never by importing a task.
LOOKUP_MX = "mailflow.lookup_mx"
ACQUIRE_CONNECTION = "mailflow.acquire_connection"
TRANSMIT = "mailflow.transmit"
BOUNCE = "mailflow.bounce"
FLUSH_QUEUE = "mailflow.flush_queue"
TASK_NAMES = (LOOKUP_MX, ACQUIRE_CONNECTION, TRANSMIT, BOUNCE, FLUSH_QUEUE)


@dataclass(frozen=True)
class Batch:
    """Entries of one claim in the queue ``owner`` (its identity).

    ``domain`` is None for a bounce batch (failed/ entries).
    """

    owner: str
    claim: str
    names: tuple[str, ...]
    domain: str | None = None

    def part(self, names: list[str] | tuple[str, ...]) -> Batch:
        """The same claim, fewer entries."""
        return dataclasses.replace(self, names=tuple(names))

    def shown(self) -> str:
        """How it appears in events and Flower: what identifies it, never more."""
        return repr([self.to_json()])

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"owner": self.owner, "claim": self.claim, "names": list(self.names)}
        if self.domain is not None:
            data["domain"] = self.domain
        return data

    @classmethod
    def from_json(cls, data: Any) -> Batch:
        """The batch, when it names only this queue's own claim and entries; BadName otherwise."""
        if not isinstance(data, dict):
            raise BadName(f"a batch is a JSON object, not {type(data).__name__}")
        owner = data.get("owner")
        if not isinstance(owner, str) or not IDENTITY.match(owner):
            raise BadName(f"owner {owner!r} is not a queue identity")
        claim = check_claim(data.get("claim"))
        names = data.get("names")
        if not isinstance(names, list):
            raise BadName("the batch has no list of names")
        domain = data.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise BadName(f"domain {domain!r} is not text")
        for name in names:
            parsed = EntryName.parse(name) if isinstance(name, str) else None
            if parsed is None:
                raise BadName(f"not a queue entry name: {name!r}")
            if domain is not None and parsed.domain != domain:
                raise BadName(f"{name!r} is not an entry for {domain!r}")
        return cls(owner=owner, claim=claim, names=tuple(names), domain=domain)


@dataclass(frozen=True)
class Route:
    """Entries of one batch that go the same way: one MX list, one source and EHLO name.

    ``slot_wait_since`` is set while the route waits for a connection slot
    (mailflow/relay/pool.py): it is given up on after ``SLOT_WAIT`` in all.
    """

    batch: Batch
    mx: tuple[MX, ...]
    bind: str | None = None
    helo: str | None = None
    slot_wait_since: float | None = None

    @property
    def domain(self) -> str:
        assert self.batch.domain is not None, "a route is always for one domain"
        return self.batch.domain

    def waiting_since(self, since: float) -> Route:
        return dataclasses.replace(self, slot_wait_since=since)

    def shown(self) -> str:
        """Flower and events show the entries only: the MX list may hold get_mx credentials."""
        return self.batch.shown()

    def to_json(self, config_dir: Path) -> dict[str, Any]:
        data = {**self.batch.to_json(), "mx": [_mx_to_json(m, config_dir) for m in self.mx],
                "bind": self.bind, "helo": self.helo}
        if self.slot_wait_since is not None:
            data["slot_wait_since"] = self.slot_wait_since
        return data

    @classmethod
    def from_json(cls, data: Any, config_dir: Path) -> Route:
        batch = Batch.from_json(data)
        if batch.domain is None:
            raise BadName("a route names its domain")
        mxs = data.get("mx")
        if not isinstance(mxs, list) or not mxs:
            raise BadName("the route has no MX list")
        bind, helo, since = data.get("bind"), data.get("helo"), data.get("slot_wait_since")
        for key, value in (("bind", bind), ("helo", helo)):
            if value is not None and not isinstance(value, str):
                raise BadName(f"{key} {value!r} is not text")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise BadName(f"slot_wait_since {since!r} is not a time")
        return cls(batch=batch, mx=tuple(_mx_from_json(m, config_dir) for m in mxs),
                   bind=bind, helo=helo, slot_wait_since=since)


def _mx_to_json(mx: MX, config_dir: Path) -> dict[str, Any]:
    """An MX as it rides in a route: the get_mx password sealed, never in clear."""
    data = dataclasses.asdict(mx)
    secret = data.pop("auth_pass")
    if secret is not None:
        data["auth_pass_sealed"] = seal(config_dir, secret)
    return data


def _mx_from_json(data: Any, config_dir: Path) -> MX:
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


@dataclass
class Outcome:
    """Where an attempt at one entry went and every recipient's reply, for hooks and the log line."""

    host: str = "-"
    ip: str = "-"
    port: int = 0
    mode: str = "SMTP"
    secured: bool = False
    authenticated: bool = False
    results: dict[str, Reply] = field(default_factory=dict)  #: address -> reply

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "results"},
                "results": {a: [r.code, r.text, r.command] for a, r in self.results.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        results = {str(a): Reply(int(r[0]), str(r[1]), str(r[2])) for a, r in data["results"].items()}
        return cls(host=str(data["host"]), ip=str(data["ip"]), port=int(data["port"]),
                   mode=str(data["mode"]), secured=bool(data["secured"]),
                   authenticated=bool(data["authenticated"]), results=results)


def accepted(parse: Any, data: Any, task: str, *args: Any) -> Any:
    """``parse(data, *args)``; NothingToDo, with a log line, for what is not this queue's."""
    try:
        return parse(data, *args)
    except BadName as exc:
        log.error("%s refused a payload that is not one of this queue's batches: %s", task, exc)
        raise NothingToDo(f"refused: {exc}") from None
