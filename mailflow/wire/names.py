"""The one validator for every name that arrives in a payload, before it touches a path.

Whoever can publish to the broker is not meant to own the file system, and a MAC
(mailflow/wire/signing.py) says who published a message, not that its publisher made no
mistake: so every name a task, report, parcel or broadcast carries is checked here, in
its canonical form, before anything joins it to a path.  Nothing else in mailflow joins
a string from a payload to a path.

- claim ids: ``uuid4().hex``, with ``b-`` in front for bounce claims;
- queue entry names: ``<next_attempt_ms>_<num_failures>_<arrival_ms>_<id>_<domain>``,
  canonical (formatting the parsed name gives it back), one path component;
- queue identities (owners): ``[A-Za-z0-9][A-Za-z0-9._-]{0,99}``;
- domains, as an entry name ends (a file under ``sites/``), and site keys (16 hex digits);
- webhook batch names: ``uuid4().hex``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache, total_ordering
from operator import attrgetter

TMP_PREFIX = "__tmp__."
ERROR_PREFIX = "error."


class BadName(ValueError):
    """A claim id or entry name that is not one of the queue's own (e.g. from a forged task)."""


#: How a bounce claim's id begins.
BOUNCE_CLAIM = "b-"
#: A claim directory's name: ``uuid4().hex``, with ``b-`` in front for bounce claims.
CLAIM_ID = re.compile(r"(?:b-)?[0-9a-f]{32}\Z")
#: A site key: what the queue manager groups domains by (mailflow/queue/sites.py).
SITE = re.compile(r"[0-9a-f]{16}\Z")


def _checked(pattern: re.Pattern[str], value: object, what: str) -> str:
    """``value`` when it is text that ``pattern`` matches; BadName naming ``what`` otherwise."""
    if not isinstance(value, str) or not pattern.match(value):
        raise BadName(f"not {what}: {value!r}")
    return value


def check_claim(claim: object) -> str:
    return _checked(CLAIM_ID, claim, "a claim id")


def check_name(name: object) -> str:
    if not isinstance(name, str) or EntryName.parse(name) is None:
        raise BadName(f"not a queue entry name: {name!r}")
    return name


def check_domain(domain: object) -> str:
    """A domain as it ends a queue entry name: one path component, never hidden."""
    if (not isinstance(domain, str) or not domain or domain.startswith(".") or "/" in domain
            or "\0" in domain):
        raise BadName(f"not a domain of a queue entry: {domain!r}")
    return domain


def check_site(site: object) -> str:
    return _checked(SITE, site, "a site key")


@total_ordering
@dataclass(frozen=True, slots=True)
class EntryName:
    """A queue entry's name, parsed.  Ordered by its fields (when it is due first); the queue
    manager lists and sorts thousands of these several times a second, so the text and the
    sort key are computed once (a dataclass's generated ``__lt__`` builds two tuples per
    comparison: sorting 5,000 names took 20 ms)."""

    next_attempt_ms: int
    num_failures: int
    arrival_ms: int
    id: str
    domain: str
    #: the file name, once formatted (or as parsed: then known canonical)
    _text: str = field(default="", init=False, repr=False, compare=False)
    #: the fields as a tuple: what names are ordered by (see ORDER)
    key: tuple[int, int, int, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.next_attempt_ms, self.num_failures, self.arrival_ms,
                                         self.id, self.domain))

    def __lt__(self, other: EntryName) -> bool:
        return self.key < other.key

    def __str__(self) -> str:
        if not self._text:
            object.__setattr__(self, "_text", f"{self.next_attempt_ms:013d}_{self.num_failures}_"
                                              f"{self.arrival_ms:013d}_{self.id}_{self.domain}")
        return self._text

    @classmethod
    def parse(cls, name: str) -> EntryName | None:
        """The parts of a queue file name, or None for anything else (temp, error, stray).

        Only the canonical form counts (``str(parse(name)) == name``) and never a name
        with a path separator: names also arrive in task payloads, and whoever can publish
        to the broker must not be able to point a worker outside the queue directory.
        """
        return _parse(name)

    @classmethod
    def _parse_uncached(cls, name: str) -> EntryName | None:
        if name.startswith((TMP_PREFIX, ERROR_PREFIX, ".")) or "/" in name or "\0" in name:
            return None
        parts = name.split("_", 4)
        if len(parts) != 5:
            return None
        nxt, fails, arrival, ident, domain = parts
        if not all(n.isascii() and n.isdigit() for n in (nxt, fails, arrival)) or not ident or not domain:
            return None
        parsed = cls(int(nxt), int(fails), int(arrival), ident, domain)
        return parsed if str(parsed) == name else None

    @property
    def tenant_tag(self) -> str | None:
        """The tag of the message's tenant in its id (``<uuid>.t<tag>.<n>``), or None: the
        queue manager serves tenants in turn from the names alone."""
        parts = self.id.split(".")
        if len(parts) >= 3 and len(parts[1]) == 9 and parts[1][0] == "t":
            return parts[1][1:]
        return None

    def matches(self, ident: str) -> bool:
        """This entry is ``ident``: its own id, or the message id its entries share
        (``<uuid>`` names every ``<uuid>.<n>`` entry of one message)."""
        return self.id == ident or self.id.startswith(ident + ".")

    def rescheduled(self, next_attempt_ms: int, num_failures: int | None = None) -> EntryName:
        return replace(
            self,
            next_attempt_ms=next_attempt_ms,
            num_failures=self.num_failures if num_failures is None else num_failures,
        )


#: Names parsed lately, and what they parsed to.  A name is parsed by every step that
#: meets it -- in a payload, joining it to a path, loading its entry -- several times per
#: message at 3 us each; an EntryName is immutable, so the answer for a string is always
#: the same one.  Bounded: a queue manager lists far more names than it keeps meeting.
_parse = lru_cache(maxsize=16384)(EntryName._parse_uncached)

#: Sort names by this (``names.sort(key=ORDER)``): their order, without a Python call per comparison.
ORDER = attrgetter("key")


def tenant_tag(tenant: str) -> str:
    """Eight hex digits standing for a tenant in entry ids (its name may hold ``_``, which
    separates the parts of a queue file name)."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:8]


#: A queue directory's identity, which names its owner's Celery queue.
IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")

#: A webhook batch's directory name under ``.webhooks/inflight/``.
WEBHOOK_BATCH = re.compile(r"[0-9a-f]{32}\Z")


def check_identity(owner: object) -> str:
    return _checked(IDENTITY, owner, "a queue identity")


def check_webhook_batch(batch: object) -> str:
    return _checked(WEBHOOK_BATCH, batch, "a webhook batch name")
