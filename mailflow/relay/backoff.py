"""Adaptive backoff: a site that tells a source to slow down is sent to more slowly.

Mailbox providers say so in their replies (Gmail's ``421 4.7.28``, Microsoft's
``451 4.7.500``, Yahoo's ``TSS04``); a sender that keeps going is blocked.  PowerMTA's
*backoff mode* answers them; here a reply whose class is in ``classify.ini [actions]
backoff`` halves the connections and the rate its source may use towards the destination
*site* -- the MX host's registrable domain, so every Google-hosted domain slows together
-- across every host, for ``backoff_for``.  A repeat halves again, down to one connection
and ``backoff_floor`` messages a minute; once ``backoff_for`` passes without one, a step
is given back, and so on until the normal limits hold again.  Replies of the ``suspend``
classes (``SpamBlock``) are counted: ``suspend_after`` of them in its window stop the
source sending to the site for ``suspend_for``.

The state of each (site, source) is small and lives in the shaping store (Redis, shared by
every host, else a file of this host: mailflow/relay/shaping.py).  It is enforced as one
more shaping rule over the connection, ``backoff:<site>/<source>``, whose limits are the
state's: the same Lua scripts that hold shaping.ini's rules hold it.  Workers read the
states at most once a second (``REFRESH``), so a backoff reaches every host within a
second, and a site in none costs a dictionary lookup.

What is halved: the connections and rate a shaping.ini rule over the destination allows,
or where none does, outbound.ini's ``pool_concurrency_max`` connections and the rate this
worker process was sending at over the last minute (``Meter``).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from publicsuffixlist import PublicSuffixList

from mailflow.classify.actions import Policy
from mailflow.config.shaping import Rule

#: How often a worker reads the states again (s).
REFRESH = 1.0
#: Replies within this long of a halving are its echo (connections already in flight when
#: it happened), not a repeat: they extend the backoff without halving again (ms).
ECHO_MS = 60_000
#: Never more halvings than this (2**-16 of any rate is below any floor).
MAX_LEVEL = 16

_PSL = PublicSuffixList()


@functools.lru_cache(maxsize=65_536)
def site_of(mx_host: str) -> str:
    """The MX host's registrable domain by the Public Suffix List (``google.com`` for
    ``gmail-smtp-in.l.google.com``); the last two labels where no suffix applies; an
    address literal as it is."""
    host = mx_host.lower().rstrip(".").strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    found = _PSL.privatesuffix(host)
    return found or ".".join(host.split(".")[-2:])


@dataclass
class State:
    """One (site, source)'s backoff.  ``level`` halvings were in force at ``hit_ms`` (the
    last reply that asked to slow down); one is given back each ``period`` after it."""

    level: int = 0
    hit_ms: int = 0
    halved_ms: int = 0  #: the last halving (later replies within ECHO_MS are its echo)
    conns: int = 1  #: the connections and rate (a minute) the halvings are of
    rate: int = 1
    strikes: list[int] = field(default_factory=list)  #: suspend-class replies' times (ms)
    suspended_ms: int = 0  #: suspended until then

    def level_at(self, now_ms: int, policy: Policy) -> int:
        return max(0, self.level - (now_ms - self.hit_ms) // (policy.period * 1000))

    def limits(self, now_ms: int, policy: Policy) -> tuple[int, int]:
        """The connections and messages a minute allowed now."""
        level = self.level_at(now_ms, policy)
        return max(1, self.conns >> level), max(policy.floor, self.rate >> level)

    def fraction(self, now_ms: int, policy: Policy) -> float:
        """The share of the normal rate allowed now (1: none held back), as the metric shows it."""
        if self.suspended_ms > now_ms:
            return 0.0
        return min(1.0, self.limits(now_ms, policy)[1] / max(1, self.rate))

    def ends_ms(self, policy: Policy) -> int:
        """When the normal limits hold again (the last step given back), or the suspension ends."""
        return max(self.hit_ms + self.level * policy.period * 1000, self.suspended_ms)

    def active(self, now_ms: int, policy: Policy) -> bool:
        return self.level_at(now_ms, policy) > 0 or self.suspended_ms > now_ms

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> State:
        try:
            data = json.loads(raw) if raw else {}
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return cls()  # a damaged state is no backoff, never a crash on the delivery path


def hit(state: State, now_ms: int, policy: Policy, conns: int, rate: int) -> State:
    """``state`` after a reply asking to slow down: one more halving, unless it echoes the
    last; ``conns``/``rate``: the normal limits, as the worker that got the reply knows them
    (kept while a backoff lasts: a halved rate is never taken as the next normal one)."""
    level = state.level_at(now_ms, policy)
    if level == 0:
        state = replace(state, conns=max(1, conns), rate=max(1, rate))
    echo = level > 0 and now_ms - state.halved_ms < ECHO_MS
    at_floor = state.limits(now_ms, policy) == (1, policy.floor) and level > 0
    if echo or at_floor or level >= MAX_LEVEL:
        return replace(state, level=level, hit_ms=now_ms)
    return replace(state, level=level + 1, hit_ms=now_ms, halved_ms=now_ms)


def strike(state: State, now_ms: int, policy: Policy) -> State:
    """``state`` after a reply of a suspend class: counted in its window, and the site
    suspended when there are ``suspend_after`` of them."""
    strikes = [t for t in state.strikes if t > now_ms - policy.suspend_window * 1000] + [now_ms]
    if len(strikes) >= policy.suspend_after:
        return replace(state, strikes=[], suspended_ms=now_ms + policy.suspend_for * 1000)
    return replace(state, strikes=strikes)


def rule(key: str, state: State, now_ms: int, policy: Policy) -> Rule:
    """The shaping rule a backoff is enforced as (``key``: ``<site>/<source>``)."""
    conns, rate = state.limits(now_ms, policy)
    return Rule(name=f"backoff:{key}", kind="backoff", pattern=key, max_connections=conns,
                messages_per_minute=rate)


def key_of(site: str, source: str) -> str:
    return f"{site}/{source}"


class Meter:
    """Messages this process sent to each (site, source) in the current and the last minute:
    the normal rate a backoff halves when no shaping rule says one."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int, int]] = {}  #: key -> (minute, this, last)
        self._lock = threading.Lock()

    def count(self, key: str, now: float | None = None) -> None:
        minute = int((now or time.time()) // 60)
        with self._lock:
            at, this, last = self._counts.get(key, (minute, 0, 0))
            if at != minute:
                at, this, last = minute, 0, (this if at == minute - 1 else 0)
            self._counts[key] = (at, this + 1, last)

    def per_minute(self, key: str, now: float | None = None) -> int:
        """The last 60 s's messages: this minute's, and the last one's share still in the window."""
        now = now or time.time()
        minute, into = divmod(now, 60)
        with self._lock:
            at, this, last = self._counts.get(key, (int(minute), 0, 0))
        if at == int(minute):
            return this + int(last * (60 - into) / 60)
        return int(this * (60 - into) / 60) if at == int(minute) - 1 else 0


class Backoffs:
    """This process's view of every backoff in force, read again at most every REFRESH s.

    Asked several times per message by every delivery thread: one of them reads the store
    again when the view is old, and the others go on with the last view meanwhile rather
    than queue on a lock behind a Redis round trip (which, with a hundred threads waiting
    for the GIL, could take far longer than the round trip).  Only before the first read
    has anyone waited: there is no view to go on with."""

    def __init__(self, read: Callable[[], dict[str, State]]):
        self._read = read
        self._states: dict[str, State] = {}
        self._at: float | None = None  #: when the last read began (monotonic); None: never
        self._lock = threading.Lock()

    def states(self) -> dict[str, State]:
        at = self._at
        if at is not None and time.monotonic() - at < REFRESH:
            return self._states
        if not self._lock.acquire(blocking=at is None):
            return self._states  # another thread is reading it again
        try:
            now = time.monotonic()
            if self._at is None or now - self._at >= REFRESH:
                self._at = now
                try:
                    self._states = self._read()
                except OSError:
                    pass  # the last known states hold until the store answers again
            return self._states
        finally:
            self._lock.release()

    def known(self, key: str, state: State) -> None:
        """A change this process made: in force here at once, not at the next read."""
        with self._lock:
            self._states = {**self._states, key: state}
