"""Traffic shaping across hosts: connection leases, sliding-window rates, suspensions.

The counts live where every host sees them: in Redis (one Lua script per decision, so
two hosts never both take the last place), else -- the embedded broker, or Redis
not answering -- in a file per rule under the state directory, locked, which holds
for the processes of this host only.  Falling back is logged at most once a minute.

* A *lease* is one open connection under a rule's ``max_connections``: a member of a
  sorted set scored by its expiry, renewed with each message sent and dropped when
  the connection closes; a host that dies stops renewing, and its leases lapse
  (``LEASE_TTL``).
* A *take* is places for some messages under ``messages_per_minute``/``_per_hour``:
  never more in any sliding 60 s / 3600 s window, all matching rules decided together.
* A *suspension* (a reply named in ``suspend_on``) stops a rule for ``suspend_for``.
* A *backoff* (mailflow/relay/backoff.py) is the state of a site that asked a source to
  slow down: read by every worker, changed by one at a time.

Each returns how long to wait (0: go on); waiting is the caller's job, by handing the
entries back due later -- never counted as failures, never holding a thread.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from mailflow.config.shaping import Rule, matching
from mailflow.config.state import state_dir
from mailflow.observation.sampler import SAMPLER
from mailflow.relay.backoff import State as BackoffState
from mailflow.util import lua

log = logging.getLogger(__name__)

LEASE_TTL = 60.0
KEY = "mailflow:shaping:"
#: every backoff in force: a hash of ``<site>/<source>`` -> its state (JSON)
BACKOFF_KEY = "mailflow:backoff"
#: a change to a backoff: the state it was (a fresh one when none) -> the state it becomes;
#: then which states are worth keeping (the others are forgotten)
Change = Callable[[BackoffState], BackoffState]
Keep = Callable[[BackoffState], bool]
#: when the connection limit is reached, look again after this long
FULL_WAIT = 5.0
#: Places in a rate window are taken for several messages at once (a round trip per
#: message costs as much as a tenth of a delivery), to be used within this many seconds.
#: Each counts in the window from when it is taken until CREDIT_TTL + the window after,
#: so messages sent any time in between can never make more than the limit in any window.
CREDIT_TTL = 1.0

#: The two decisions, made atomically in Redis for every host at once.
_LEASE = lua.script("mailflow.relay", "shaping_lease.lua")
_TAKE = lua.script("mailflow.relay", "shaping_take.lua")


def _keys(rules: list[Rule]) -> list[str]:
    out = []
    for rule in rules:
        base = KEY + rule.name
        out += [f"{base}:conns", f"{base}:m", f"{base}:h", f"{base}:suspended"]
    return out


def _limits(rules: list[Rule]) -> list[int]:
    out = []
    for rule in rules:
        out += [rule.max_connections or 0, rule.messages_per_minute or 0, rule.messages_per_hour or 0]
    return out


class RedisBackend:
    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._lease = self.client.register_script(_LEASE)
        self._take = self.client.register_script(_TAKE)

    def lease(self, rules: list[Rule], lease_id: str, now_ms: int) -> float:
        args: list[str | int] = [now_ms, lease_id, int(LEASE_TTL * 1000), *_limits(rules),
                                 int(FULL_WAIT * 1000)]
        return float(self._lease(keys=_keys(rules), args=args)) / 1000

    def release(self, rules: list[Rule], lease_id: str) -> None:
        for key in _keys(rules)[0::4]:
            self.client.zrem(key, lease_id)

    def take(self, rules: list[Rule], now_ms: int, wanted: int = 1) -> tuple[int, float]:
        args: list[str | int] = [now_ms, uuid.uuid4().hex, int(CREDIT_TTL * 1000), *_limits(rules),
                                 wanted]
        granted, wait = self._take(keys=_keys(rules), args=args)
        return int(granted), float(wait) / 1000

    def suspend(self, rule: Rule, until_ms: int) -> None:
        ttl = max(1, until_ms - _now_ms())
        self.client.set(f"{KEY}{rule.name}:suspended", until_ms, px=ttl)

    def suspended(self, rule: Rule, now_ms: int) -> float:
        raw = self.client.get(f"{KEY}{rule.name}:suspended")
        until = int(raw) if raw else 0
        return max(0.0, (until - now_ms) / 1000)

    def backoffs(self) -> dict[str, BackoffState]:
        return {_text(k): BackoffState.from_json(v) for k, v in self.client.hgetall(BACKOFF_KEY).items()}

    def change_backoff(self, key: str, change: Change, keep: Keep) -> BackoffState:
        """One host's change, none lost to another's at the same moment (WATCH: the
        transaction fails, and is made again, when the hash changed meanwhile)."""
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(BACKOFF_KEY)
                    states = {_text(k): BackoffState.from_json(v)
                              for k, v in pipe.hgetall(BACKOFF_KEY).items()}
                    new = change(states.get(key) or BackoffState())
                    stale = [k for k, st in states.items() if k != key and not keep(st)]
                    pipe.multi()
                    pipe.hset(BACKOFF_KEY, key, new.to_json())
                    if stale:
                        pipe.hdel(BACKOFF_KEY, *stale)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue


@dataclass
class _State:
    conns: dict[str, int] = field(default_factory=dict)  #: lease id -> expiry ms
    minute: list[int] = field(default_factory=list)
    hour: list[int] = field(default_factory=list)
    suspended: int = 0


class LocalBackend:
    """The same decisions for this host alone: one locked JSON file per rule."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory  #: None: the state directory's, as it is when asked

    @contextmanager
    def _states(self, rules: list[Rule]) -> Iterator[list[_State]]:
        directory = self.directory or state_dir() / "shaping"
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / hashlib.sha256(r.name.encode()).hexdigest()[:32] for r in rules]
        fds = []
        try:
            for path in sorted(paths):  # one order for every process: no deadlock
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
                fds.append((path, fd))
                fcntl.flock(fd, fcntl.LOCK_EX)
            by_path = dict(fds)
            states = [self._read(by_path[p]) for p in paths]
            yield states
            for path, state in zip(paths, states, strict=True):
                data = json.dumps(state.__dict__).encode()
                fd = by_path[path]
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
        finally:
            for _, fd in fds:
                os.close(fd)

    @staticmethod
    def _read(fd: int) -> _State:
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            return _State(**json.loads(raw)) if raw else _State()
        except (ValueError, TypeError):
            return _State()

    def lease(self, rules: list[Rule], lease_id: str, now_ms: int) -> float:
        with self._states(rules) as states:
            wait = 0.0
            for rule, st in zip(rules, states, strict=True):
                st.conns = {k: v for k, v in st.conns.items() if v > now_ms}
                wait = max(wait, (st.suspended - now_ms) / 1000)
                if rule.max_connections and lease_id not in st.conns and \
                        len(st.conns) >= rule.max_connections:
                    wait = max(wait, FULL_WAIT)
            if wait <= 0:
                for rule, st in zip(rules, states, strict=True):
                    if rule.max_connections:
                        st.conns[lease_id] = now_ms + int(LEASE_TTL * 1000)
            return max(0.0, wait)

    def release(self, rules: list[Rule], lease_id: str) -> None:
        with self._states(rules) as states:
            for st in states:
                st.conns.pop(lease_id, None)

    def take(self, rules: list[Rule], now_ms: int, wanted: int = 1) -> tuple[int, float]:
        with self._states(rules) as states:
            wait, granted = 0.0, wanted
            for rule, st in zip(rules, states, strict=True):
                st.minute = [t for t in st.minute if t > now_ms - 60_000]
                st.hour = [t for t in st.hour if t > now_ms - 3_600_000]
                wait = max(wait, (st.suspended - now_ms) / 1000)
                for window, span, limit in ((st.minute, 60_000, rule.messages_per_minute),
                                            (st.hour, 3_600_000, rule.messages_per_hour)):
                    if limit and len(window) >= limit:
                        wait = max(wait, (min(window) + span - now_ms + 1) / 1000)
                    elif limit:
                        granted = min(granted, limit - len(window))
            if wait > 0:
                return 0, wait
            at = now_ms + int(CREDIT_TTL * 1000)
            for rule, st in zip(rules, states, strict=True):
                if rule.messages_per_minute:
                    st.minute += [at] * granted
                if rule.messages_per_hour:
                    st.hour += [at] * granted
            return granted, 0.0

    def suspend(self, rule: Rule, until_ms: int) -> None:
        with self._states([rule]) as [st]:
            st.suspended = max(st.suspended, until_ms)

    def suspended(self, rule: Rule, now_ms: int) -> float:
        with self._states([rule]) as [st]:
            return max(0.0, (st.suspended - now_ms) / 1000)

    @contextmanager
    def _backoff_file(self) -> Iterator[tuple[int, dict[str, BackoffState]]]:
        directory = self.directory or state_dir() / "shaping"
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "backoff", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {}
            yield fd, {k: BackoffState.from_json(v) for k, v in data.items() if isinstance(v, str)}
        finally:
            os.close(fd)

    def backoffs(self) -> dict[str, BackoffState]:
        with self._backoff_file() as (_, states):
            return states

    def change_backoff(self, key: str, change: Change, keep: Keep) -> BackoffState:
        with self._backoff_file() as (fd, states):
            new = change(states.get(key) or BackoffState())
            kept = {k: st.to_json() for k, st in states.items() if k != key and keep(st)}
            data = json.dumps({**kept, key: new.to_json()}).encode()
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, data)
            return new


class Shaper:
    """The decisions for one configuration, in Redis when it has one, else on this host."""

    def __init__(self, redis_url: str | None):
        self.redis = RedisBackend(redis_url) if redis_url else None
        self.local = LocalBackend()
        self._complained = 0.0
        self.fallbacks = 0

    def _call(self, method: str, *args: Any) -> Any:
        if self.redis is not None:
            try:
                return getattr(self.redis, method)(*args)
            except redis.RedisError as exc:
                self.fallbacks += 1
                SAMPLER.add("shaping_fallback")
                if time.monotonic() - self._complained > 60:
                    self._complained = time.monotonic()
                    log.warning("shaping: Redis not answering (%s); limits hold for this host only "
                                "meanwhile", exc)
        return getattr(self.local, method)(*args)

    def lease(self, rules: list[Rule]) -> Lease | float | None:
        """A lease on a connection under every rule, or how long to wait for one; None when
        no rule counts connections (a suspension is still looked at): such a connection
        holds no place, and may wait idle in the pool like any other."""
        rules = [r for r in rules if r.max_connections or r.suspend_on]
        lease_id = uuid.uuid4().hex
        wait = self._call("lease", rules, lease_id, _now_ms()) if rules else 0.0
        if wait > 0:
            return float(wait)
        return Lease(self, rules, lease_id) if any(r.max_connections for r in rules) else None

    def take(self, rules: list[Rule], wanted: int = 1) -> tuple[int, float]:
        """Places for up to ``wanted`` messages under every rule, to be sent within
        CREDIT_TTL (counted); or none, and the wait."""
        rules = [r for r in rules if r.messages_per_minute or r.messages_per_hour or r.suspend_on]
        return self._call("take", rules, _now_ms(), wanted) if rules else (wanted, 0.0)

    def suspend(self, rule: Rule) -> None:
        log.warning("shaping: %s suspended for %d s", rule.name, rule.suspend_for)
        self._call("suspend", rule, _now_ms() + rule.suspend_for * 1000)

    def suspend_until(self, rule: Rule, until_ms: int) -> None:
        self._call("suspend", rule, until_ms)

    def suspended(self, rule: Rule) -> float:
        return float(self._call("suspended", rule, _now_ms()))

    def backoffs(self) -> dict[str, BackoffState]:
        """Every backoff kept (in force or not: the caller asks each)."""
        found: dict[str, BackoffState] = self._call("backoffs")
        return found

    def change_backoff(self, key: str, change: Change, keep: Keep) -> BackoffState:
        new: BackoffState = self._call("change_backoff", key, change, keep)
        return new


class Lease:
    """One connection's place under its rules; renewed per message, released on close."""

    def __init__(self, shaper: Shaper, rules: list[Rule], lease_id: str):
        self.shaper, self.rules, self.id = shaper, rules, lease_id
        self._released = False
        self._renewed = time.monotonic()
        self._counted = any(r.max_connections for r in rules)  #: holds a place to keep

    def renew(self) -> None:
        """Keep the place (at most every quarter lease: a round trip per message is too many)."""
        now = time.monotonic()
        if self._counted and not self._released and now - self._renewed >= LEASE_TTL / 4:
            self._renewed = now
            self.shaper._call("lease", self.rules, self.id, _now_ms())

    def release(self) -> None:
        if self.rules and not self._released:
            self._released = True
            try:
                self.shaper._call("release", self.rules, self.id)
            except OSError as exc:
                log.warning("shaping: lease not released (it lapses in %d s): %s", LEASE_TTL, exc)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _now_ms() -> int:
    return int(time.time() * 1000)


_shapers: dict[str, Shaper] = {}
_lock = threading.Lock()


def shaper_for(redis_url: str | None) -> Shaper:
    with _lock:
        key = redis_url or ""
        found = _shapers.get(key)
        if found is None:
            found = _shapers[key] = Shaper(redis_url)
        return found


def rules_for(rules: tuple[Rule, ...], domain: str, mx_host: str, source: str | None,
              tenant: str | None = None) -> list[Rule]:
    """The rules over a connection.  An ``[mx:SUFFIX]`` rule counts per source address when
    the connection has one (a provider's limits are per sending IP, and each source of a
    pool has its own reputation there): ``mx:.google.com@192.0.2.10``."""
    return [dataclasses.replace(r, name=f"{r.name}@{source}") if r.kind == "mx" and source else r
            for r in matching(rules, domain, mx_host, source, tenant)]
