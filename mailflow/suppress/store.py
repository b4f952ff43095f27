"""The suppression list: addresses that will not be mailed again.

A permanent failure that says the mailbox or its domain does not exist (enhanced
status 5.1.x: the remote server's reply, or mailflow's own for NXDOMAIN and a null
MX) adds the recipient; a policy refusal (5.7.x) never does, nor a 5xx without an
enhanced status.  Mailing such an address again hurts the sender's reputation
with the large providers more than anything else an MTA does.

Kept where every host sees it: in Redis (``shaping_redis`` of shaping.ini, or
the broker's URL when the broker is Redis), else in the state directory, one
file per address (every process of the host sees an add or a remove at once).
When Redis does not answer, a check lets the mail through: suppression is a
courtesy to receivers, and a Redis outage must not stop all mail.  That is
logged, at most once a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import redis

from mailflow.config.loader import Config
from mailflow.config.state import state_dir
from mailflow.errors import Reply
from mailflow.util.atomic import replace_text

log = logging.getLogger(__name__)

REDIS_KEY = "mailflow:suppressed"
#: the SMTP commands whose refusal speaks for one recipient's mailbox
RECIPIENT_COMMANDS = ("RCPT", "DATA", "MAIL")


@dataclass(frozen=True)
class Entry:
    address: str
    reason: str
    since: float
    expires: float | None = None

    def live(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def normal(address: str) -> str:
    return address.strip().strip("<>").lower()


def suppresses(reply: Reply, reply_class: str | None = None,
               classes: frozenset[str] = frozenset()) -> bool:
    """Whether a permanent failure with this reply puts the recipient on the list: the
    receiver's own refusal of the recipient, of a class in ``classes`` (classify.ini
    [actions] suppress) -- or, with no class given, a 5.1.x status."""
    if reply.code == 0:
        # mailflow's own conclusions (NXDOMAIN, null MX) bounce but never suppress: a broken
        # resolver, a sandbox or a DNS outage must not make every recipient permanent damage
        return False
    if reply.code // 100 != 5 or reply.command not in RECIPIENT_COMMANDS:
        return False
    if reply_class is not None:
        return reply_class in classes
    return reply.enhanced.startswith("5.1.")


class Store(Protocol):
    blocking: bool

    def known_empty(self) -> bool:
        """The list was found empty a moment ago: no check can find anything (and none need
        wait on the network for it)."""
        ...

    def get(self, address: str) -> Entry | None: ...

    def add(self, entry: Entry) -> None: ...

    def remove(self, address: str) -> bool: ...

    def entries(self) -> Iterator[Entry]: ...


def _entry(data: str | bytes) -> Entry | None:
    try:
        fields = json.loads(data)
        return Entry(address=str(fields["address"]), reason=str(fields["reason"]),
                     since=float(fields["since"]),
                     expires=None if fields.get("expires") is None else float(fields["expires"]))
    except (ValueError, KeyError, TypeError):
        return None


class DirectoryStore:
    """One file per address under ``directory``, named by the address's hash."""

    blocking = False  #: a check is one open() of a local file

    def __init__(self, directory: Path):
        self.directory = directory

    def known_empty(self) -> bool:
        return False

    def _path(self, address: str) -> Path:
        return self.directory / hashlib.sha256(address.encode()).hexdigest()

    def get(self, address: str) -> Entry | None:
        try:
            return _entry(self._path(address).read_text())
        except OSError:
            return None

    def add(self, entry: Entry) -> None:
        replace_text(self._path(entry.address), json.dumps(entry.to_json()))

    def remove(self, address: str) -> bool:
        try:
            self._path(address).unlink()
            return True
        except FileNotFoundError:
            return False

    def entries(self) -> Iterator[Entry]:
        try:
            paths = sorted(p for p in self.directory.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return
        for path in paths:
            try:
                found = _entry(path.read_text())
            except OSError:
                continue
            if found is not None:
                yield found


class RedisStore:
    """One hash in Redis: address -> the entry as JSON.

    While the list is empty (most installations, most of the time) a check costs no
    round trip: its emptiness is asked at most once a second.
    """

    blocking = True  #: a check is a network round trip: not on an event loop

    def __init__(self, url: str):
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._empty_until = 0.0

    def known_empty(self) -> bool:
        """While it holds a check costs nothing: a submission's RCPT then need not go
        through a thread for one (a quarter of a millisecond of CPU each)."""
        return time.monotonic() < self._empty_until

    def get(self, address: str) -> Entry | None:
        now = time.monotonic()
        if now < self._empty_until:
            return None
        if not self.client.hlen(REDIS_KEY):
            self._empty_until = now + 1.0
            return None
        raw = self.client.hget(REDIS_KEY, address)
        return _entry(raw) if raw else None

    def add(self, entry: Entry) -> None:
        self.client.hset(REDIS_KEY, entry.address, json.dumps(entry.to_json()))
        self._empty_until = 0.0

    def remove(self, address: str) -> bool:
        return bool(self.client.hdel(REDIS_KEY, address))

    def entries(self) -> Iterator[Entry]:
        for _, raw in sorted(self.client.hscan_iter(REDIS_KEY)):
            found = _entry(raw)
            if found is not None:
                yield found


_stores: dict[str, Store] = {}
_lock = threading.Lock()
_last_complaint = 0.0


def store_for(redis_url: str | None) -> Store:
    """The list for this configuration: Redis when there is a Redis URL, else this host's."""
    key = redis_url or str(state_dir() / "suppressed")
    with _lock:
        found = _stores.get(key)
        if found is None:
            found = RedisStore(redis_url) if redis_url else DirectoryStore(Path(key))
            _stores[key] = found
        return found


def for_config(cfg: Config) -> Store:
    return store_for(cfg.shared_redis())


def check(store: Store, address: str, now: float | None = None) -> Entry | None:
    """The live entry for ``address``, or None (also when Redis does not answer, said once a
    minute: mail goes on rather than stopping)."""
    global _last_complaint
    try:
        entry = store.get(normal(address))
    except redis.RedisError as exc:
        if time.monotonic() - _last_complaint > 60:
            _last_complaint = time.monotonic()
            log.warning("suppression list not checked (Redis: %s); mail goes on meanwhile", exc)
        return None
    if entry is None or not entry.live(time.time() if now is None else now):
        return None
    return entry


def suppress_failure(store: Store, address: str, reply: Reply, reply_class: str | None = None,
                     classes: frozenset[str] = frozenset()) -> bool:
    """Add the recipient of a permanent failure when its class (or status) says so; True if
    added."""
    if not suppresses(reply, reply_class, classes):
        return False
    try:
        store.add(Entry(address=normal(address), reason=str(reply), since=time.time()))
    except (redis.RedisError, OSError) as exc:
        log.warning("%s not added to the suppression list: %s", address, exc)
        return False
    log.info("suppressed rcpt=%s reason=%r", normal(address), str(reply))
    return True
