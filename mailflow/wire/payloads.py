"""What the delivery steps hand each other through the broker: task names and typed payloads.

One definition each, with its JSON form:

- :class:`Batch` -- due entries of one claim, from the queue manager to
  ``mailflow.lookup_mx`` (or, for failed/ entries, ``mailflow.bounce``): the
  entries of one domain, or of several domains known to share one *site* (MX set);
- :class:`Route` -- the entries of a batch that go the same way (one MX list,
  one source address and EHLO name), from ``lookup_mx`` to
  ``acquire_connection`` to ``transmit``;
- :class:`Outcome` -- what one attempt at one entry found: where it went and
  every recipient's reply;
- :class:`Parcel` -- a route that may be delivered on any host: it carries each
  entry's envelope and message (:class:`Letter`) and when its lease was issued;
- :class:`RemoteOutcomes` -- what a holder on another host found, back to the owner.

A payload comes from the broker, and whoever can publish there is not meant to
own the file system: ``from_json`` accepts only the queue's own claim ids and
entry names, and every MX field is checked (:class:`BadName` otherwise).  A
``get_mx`` password travels sealed (:mod:`mailflow.wire.seal`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailflow.errors import NothingToDo, Reply
from mailflow.wire.dsnparams import DSN_NOTE, Dsn, ParamError
from mailflow.wire.mx import MX, mx_from_fields
from mailflow.wire.names import BOUNCE_CLAIM, IDENTITY, BadName, EntryName, check_claim, check_site
from mailflow.wire.seal import seal, unseal

log = logging.getLogger(__name__)

# The pipeline's tasks, named once: publishers hand on by these names, never by importing a task.
LOOKUP_MX = "mailflow.lookup_mx"
ACQUIRE_CONNECTION = "mailflow.acquire_connection"
TRANSMIT = "mailflow.transmit"
BOUNCE = "mailflow.bounce"
FLUSH_QUEUE = "mailflow.flush_queue"
RECORD_OUTCOMES = "mailflow.record_outcomes"
WEBHOOK = "mailflow.webhook"
TASK_NAMES = (LOOKUP_MX, ACQUIRE_CONNECTION, TRANSMIT, BOUNCE, FLUSH_QUEUE, RECORD_OUTCOMES, WEBHOOK)


@dataclass(frozen=True)
class Batch:
    """Entries of one claim in the queue ``owner`` (its identity).

    ``domain``: the one domain of its entries; None for a bounce batch (failed/ entries)
    and for a *site* batch, whose entries are for several domains last seen to share one
    MX set (``site``, mailflow/queue/sites.py).
    """

    owner: str
    claim: str
    names: tuple[str, ...]
    domain: str | None = None
    site: str | None = None

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
        if self.site is not None:
            data["site"] = self.site
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
        site = data.get("site")
        if site is not None:
            check_site(site)
            if domain is not None or claim.startswith(BOUNCE_CLAIM):
                raise BadName("a site batch is a delivery batch of several domains")
        for name in names:
            parsed = EntryName.parse(name) if isinstance(name, str) else None
            if parsed is None:
                raise BadName(f"not a queue entry name: {name!r}")
            if domain is not None and parsed.domain != domain:
                raise BadName(f"{name!r} is not an entry for {domain!r}")
        return cls(owner=owner, claim=claim, names=tuple(names), domain=domain, site=site)


#: An egress pool's or source's name (egress.ini), as it rides in a payload.
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: A connection pool's grant token (uuid4 hex).
GRANT_TOKEN = re.compile(r"[0-9a-f]{32}")


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
    #: TLS reports (RFC 8460 5.3): delivered whatever the domain's MTA-STS or DANE policy says
    tls_exempt: bool = False
    #: the egress pool (egress.ini) whose sources new connections take, when no bind is set
    pool: str | None = None
    #: the tenant of its entries (one batch is one tenant's): its shaping rules hold too
    tenant: str | None = None
    #: the token of the connection room kept for it when it was woken from a wait for a slot
    #: (relay/pool.py; only this worker's pool knows it)
    slot_grant: str | None = None

    @property
    def domain(self) -> str:
        """The route's domain; for a site's route, its first entry's (the others share its
        MX set and have no TLS policy or shaping rule of their own: mailflow/pipeline/lookup.py)."""
        if self.batch.domain is not None:
            return self.batch.domain
        parsed = EntryName.parse(self.batch.names[0])
        assert parsed is not None
        return parsed.domain

    @property
    def turn(self) -> str:
        """Whose turn a free connection slot is (relay/pool.py): the domain, or one tenant's
        mail for it -- so that a tenant's backlog waiting for slots at a receiver does not
        keep another tenant's mail for it waiting behind every one of its batches."""
        return f"{self.tenant}|{self.domain}" if self.tenant else self.domain

    def waiting_since(self, since: float) -> Route:
        return dataclasses.replace(self, slot_wait_since=since)

    def granted(self, token: str | None) -> Route:
        """The route as its wake-up sends it again, with the token of the room kept for it."""
        return dataclasses.replace(self, slot_grant=token)

    def shown(self) -> str:
        """Flower and events show the entries only: the MX list may hold get_mx credentials."""
        return self.batch.shown()

    def to_json(self, config_dir: Path) -> dict[str, Any]:
        data = {**self.batch.to_json(), "mx": [_mx_to_json(m, config_dir) for m in self.mx],
                "bind": self.bind, "helo": self.helo}
        if self.slot_wait_since is not None:
            data["slot_wait_since"] = self.slot_wait_since
        if self.tls_exempt:
            data["tls_exempt"] = True
        if self.pool is not None:
            data["pool"] = self.pool
        if self.tenant is not None:
            data["tenant"] = self.tenant
        if self.slot_grant is not None:
            data["slot_grant"] = self.slot_grant
        return data

    @classmethod
    def from_json(cls, data: Any, config_dir: Path) -> Route:
        batch = Batch.from_json(data)
        if batch.domain is None and batch.site is None:
            raise BadName("a route names its domain or its site")
        if not batch.names:
            raise BadName("a route has entries")
        mxs = data.get("mx")
        if not isinstance(mxs, list) or not mxs:
            raise BadName("the route has no MX list")
        bind, helo, since = data.get("bind"), data.get("helo"), data.get("slot_wait_since")
        for key, value in (("bind", bind), ("helo", helo)):
            if value is not None and not isinstance(value, str):
                raise BadName(f"{key} {value!r} is not text")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
            raise BadName(f"slot_wait_since {since!r} is not a time")
        pool, tenant = data.get("pool"), data.get("tenant")
        for key, value in (("pool", pool), ("tenant", tenant)):
            if value is not None and (not isinstance(value, str) or not POOL_NAME.match(value)):
                raise BadName(f"{key} {value!r} is not a name")
        grant = data.get("slot_grant")
        if grant is not None and (not isinstance(grant, str) or not GRANT_TOKEN.fullmatch(grant)):
            raise BadName(f"slot_grant {grant!r} is not a token")
        return cls(batch=batch, mx=tuple(_mx_from_json(m, config_dir) for m in mxs),
                   bind=bind, helo=helo, slot_wait_since=since,
                   tls_exempt=data.get("tls_exempt") is True, pool=pool, tenant=tenant, slot_grant=grant)


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
    tls_level: str = "none"  #: none, opportunistic, verified, mta-sts or dane
    source: str | None = None  #: the egress source (egress.ini) the connection left from
    #: the next hop offered DSN and was given the client's parameters: notices are its duty now
    dsn_taken: bool = False

    def keyword(self) -> str:
        """What became of the entry, as its log line says: delivered to anyone, else
        deferred for anyone, else failed."""
        replies = list(self.results.values())
        if any(200 <= r.code < 300 for r in replies):
            return "delivered"
        return "deferred" if any(not r.is_permanent for r in replies) else "failed"

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "results"},
                "results": {a: [r.code, r.text, r.command] for a, r in self.results.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        results = {str(a): Reply(int(r[0]), str(r[1]), str(r[2])) for a, r in data["results"].items()}
        return cls(host=str(data["host"]), ip=str(data["ip"]), port=int(data["port"]),
                   mode=str(data["mode"]), secured=bool(data["secured"]),
                   authenticated=bool(data["authenticated"]), results=results,
                   tls_level=str(data.get("tls_level") or ("opportunistic" if data["secured"]
                                                            else "none")),
                   source=_source_name(data.get("source")), dsn_taken=data.get("dsn_taken") is True)


def _source_name(value: Any) -> str | None:
    """An outcome's source, as another host reported it: a name, or nothing."""
    return value if isinstance(value, str) and POOL_NAME.match(value) else None


@dataclass(frozen=True)
class Letter:
    """One entry as a holder on another host needs it: the envelope and the message."""

    name: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: bytes
    dsn: Dsn | None = None  #: what the client asked to be told, for a next hop offering DSN
    requiretls: bool = False  #: RFC 8689: verified TLS all the way, or a bounce

    def size(self) -> int:
        """Its share of a task payload (base64 and the envelope)."""
        return len(self.message) * 4 // 3 + 256 + sum(len(r) + 4 for r in self.rcpt_to)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to),
                "message": base64.b64encode(self.message).decode("ascii"),
                **({"dsn": self.dsn.to_note()} if self.dsn is not None else {}),
                **({"requiretls": True} if self.requiretls else {})}

    @classmethod
    def from_json(cls, data: Any) -> Letter:
        if not isinstance(data, dict):
            raise BadName("a letter is a JSON object")
        name, mail_from, rcpts, body = (data.get(k) for k in ("name", "mail_from", "rcpt_to", "message"))
        if not (isinstance(mail_from, str) and isinstance(body, str) and isinstance(rcpts, list)
                and rcpts and all(isinstance(r, str) for r in rcpts)):
            raise BadName(f"letter {name!r} lacks its envelope or message")
        try:
            message = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise BadName(f"letter {name!r}: its message is not base64 ({exc})") from None
        return cls(name=str(name), mail_from=mail_from, rcpt_to=tuple(rcpts), message=message,
                   dsn=_letter_dsn(data.get("dsn"), rcpts), requiretls=data.get("requiretls") is True)


def _letter_dsn(raw: Any, rcpts: list[str]) -> Dsn | None:
    """A letter's DSN parameters, as the owner wrote them -- checked as a client's would be
    (anything else is dropped: the next hop is then simply not asked)."""
    found = Dsn.from_notes({DSN_NOTE: raw}) if isinstance(raw, dict) else None
    try:
        return found.checked(rcpts) if found is not None else None
    except ParamError:
        return None


@dataclass(frozen=True)
class Parcel:
    """A route with its letters, for a holder on any host (docs/architecture.md).

    ``issued_ms`` is the owner's clock when it published the parcel: the owner keeps its
    claim for ``wait_ms`` and a lease more, so a holder that has not renewed the lease
    since starts no message after ``issued_ms + wait_ms + lease_ms / 2``.
    """

    route: Route
    letters: tuple[Letter, ...]
    issued_ms: int
    lease_ms: int
    wait_ms: int = 0

    def start_by_ms(self) -> float:
        """The last moment (owner's clock) a holder that never renewed may start a message."""
        return self.issued_ms + self.wait_ms + self.lease_ms / 2

    @property
    def batch(self) -> Batch:
        return self.route.batch

    @property
    def domain(self) -> str:
        return self.route.domain

    def shown(self) -> str:
        return self.route.shown()

    def to_json(self, config_dir: Path, letters: bool = True) -> dict[str, Any]:
        """``letters`` False: the parcel without them (``"letters": null``), for its next step
        on the same worker, which holds them already (mailflow/relay/fence.py)."""
        return {**self.route.to_json(config_dir),
                "letters": [x.to_json() for x in self.letters] if letters else None,
                "issued_ms": self.issued_ms, "lease_ms": self.lease_ms, "wait_ms": self.wait_ms}

    @classmethod
    def from_json(cls, data: Any, config_dir: Path) -> Parcel:
        route = Route.from_json(data, config_dir)
        letters = data.get("letters")
        if letters is not None and not isinstance(letters, list):
            raise BadName("a parcel carries a list of letters (or null: held where it goes)")
        parsed = tuple(Letter.from_json(x) for x in letters or ())
        if letters is not None and tuple(x.name for x in parsed) != route.batch.names:
            raise BadName("a parcel's letters are not its entries")
        times = [data.get(k) for k in ("issued_ms", "lease_ms", "wait_ms")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in times):
            raise BadName(f"a parcel's issued_ms, lease_ms and wait_ms are times: {times!r}")
        return cls(route=route, letters=parsed, issued_ms=times[0], lease_ms=times[1], wait_ms=times[2])


def is_parcel(data: Any) -> bool:
    """Whether a step's payload carries letters (a holder on any host may do it)."""
    return isinstance(data, dict) and "letters" in data


#: The longest hold reason remote outcomes may carry (it is shown by ``queue list``, never a path).
HOLD_WHY_MAX = 512


@dataclass(frozen=True)
class RemoteOutcomes:
    """Outcomes a holder on another host sends its owner (``mailflow.record_outcomes``).

    ``results`` are attempts made; ``back`` entries it did not attempt (given back,
    due now).  Reports of one parcel may be applied in any order: no entry is in two.
    """

    batch: Batch
    holder: str
    results: dict[str, Outcome] = field(default_factory=dict)
    back: tuple[str, ...] = ()
    back_due_ms: int = 0  #: when the entries given back are due (0: now; later for a shaping wait)
    back_why: str = ""  #: the shaping rule that held them back (``shaping:domain:x``)

    def to_json(self) -> dict[str, Any]:
        return {**self.batch.to_json(), "holder": self.holder,
                "results": {n: o.to_json() for n, o in self.results.items()},
                "back": list(self.back), "back_due_ms": self.back_due_ms, "back_why": self.back_why}

    @classmethod
    def from_json(cls, data: Any) -> RemoteOutcomes:
        batch = Batch.from_json(data)
        results, back = data.get("results"), data.get("back")
        if not isinstance(results, dict) or not isinstance(back, list):
            raise BadName("remote outcomes have results and back")
        named = set(batch.names)
        if not set(results) | set(back) <= named:
            raise BadName("remote outcomes name entries that are not their batch's")
        try:
            outcomes = {str(n): Outcome.from_json(o) for n, o in results.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadName(f"a remote outcome is malformed: {exc!r}") from None
        due, why = data.get("back_due_ms", 0), data.get("back_why", "")
        return cls(batch=batch, holder=str(data.get("holder", "?")), results=outcomes,
                   back=tuple(str(n) for n in back),
                   back_due_ms=due if isinstance(due, int) and not isinstance(due, bool) else 0,
                   back_why=why[:HOLD_WHY_MAX] if isinstance(why, str) and why.isprintable() else "")


def accepted(parse: Any, data: Any, task: str, *args: Any) -> Any:
    """``parse(data, *args)``; NothingToDo, with a log line, for what is not this queue's."""
    try:
        return parse(data, *args)
    except BadName as exc:
        log.error("%s refused a payload that is not one of this queue's batches: %s", task, exc)
        raise NothingToDo(f"refused: {exc}") from None
