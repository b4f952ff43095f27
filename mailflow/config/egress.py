"""``egress.ini``: the source addresses mail leaves from, and pools of them.

``[source:mta1]`` names an address to bind (IPv4 or IPv6) and the name to greet with
(``ehlo``, which should be the address's reverse DNS); ``[pool:marketing]`` lists sources
with weights, ``sources = mta1:3, mta2:1``.  A message's pool is its tenant's
(tenants.ini ``pool``), else its route's (routes.ini ``pool``), else ``[main]
default_pool``; each new connection takes the pool's next source in weighted turn
(smooth weighted round robin, as nginx spreads over upstreams: the proportions hold over
any run of connections, not only on average).  A get_mx answer's ``bind`` wins over a pool.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailflow.config.files import ConfigError, parse_list, read_ini, unknown
from mailflow.config.settings import POOL_KEYS, SOURCE_KEYS, tenant_name

SOURCE_KEY_NAMES = tuple(k.name for k in SOURCE_KEYS)
POOL_KEY_NAMES = tuple(k.name for k in POOL_KEYS)


@dataclass(frozen=True)
class Source:
    name: str
    address: str
    ehlo: str
    #: messages it may send on its 1st, 2nd, … UTC day of use (mailflow/relay/warmup.py)
    warmup: tuple[int, ...] = ()


class NoRoom(Exception):
    """Every source of the pool has sent what its warm-up allows today."""


@dataclass(frozen=True)
class Pool:
    name: str
    sources: tuple[tuple[Source, int], ...]  #: (source, weight)


#: Each pool's smooth weighted round-robin state, for this process: kept across config
#: reloads (a Config is made again when a live file changes), keyed by the pool as it is.
_TURNS: dict[Pool, list[int]] = {}
_TURNS_LOCK = threading.Lock()


@dataclass
class Egress:
    sources: dict[str, Source]
    pools: dict[str, Pool]
    default_pool: str | None = None

    def choose(self, pool_name: str, room: Callable[[Source], bool] = lambda source: True) -> Source:
        """The pool's next source in weighted turn among those with ``room`` (KeyError for a
        pool that is not one; NoRoom when no source has room)."""
        pool = self.pools[pool_name]
        open_ = [n for n, (source, _) in enumerate(pool.sources) if room(source)]
        if not open_:
            raise NoRoom(pool_name)
        with _TURNS_LOCK:
            current = _TURNS.setdefault(pool, [0] * len(pool.sources))
            total = 0
            for n in open_:
                current[n] += pool.sources[n][1]
                total += pool.sources[n][1]
            best = max(open_, key=lambda n: current[n])
            current[best] -= total
            return pool.sources[best][0]

    def check_local(self, path: Path) -> None:
        """Every source address is one of this host's: a connection bound to one that is not
        would fail every delivery; found at start, it is one line."""
        for source in self.sources.values():
            family = socket.AF_INET6 if ":" in source.address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((source.address, 0))
            except OSError as exc:
                raise ConfigError(path, None, f"[source:{source.name}] address {source.address} is "
                                  f"not an address of this host ({exc.strerror or exc})") from None


def _ehlo(text: str) -> str:
    name = text.strip().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels):
        raise ValueError(f"ehlo {text!r} is not a host name")
    return name


def load(path: Path) -> Egress:
    ini = read_ini(path)
    sources: dict[str, Source] = {}
    pool_specs: dict[str, tuple[str, int | None]] = {}
    default_pool = None
    for section, keys in ini.sections.items():
        if section == "main":
            for key, raw in keys.items():
                if key != "default_pool":
                    raise ConfigError(path, raw.line, unknown("key", key, ("default_pool",)))
                default_pool = raw.text.strip() or None
            continue
        kind, sep, name = section.partition(":")
        if not sep or kind not in ("source", "pool"):
            raise ConfigError(path, None, f"[{section}]: a section is [source:NAME] or [pool:NAME]")
        try:
            tenant_name(name)
        except ValueError as exc:
            raise ConfigError(path, None, f"[{section}]: {exc}") from None
        allowed = SOURCE_KEY_NAMES if kind == "source" else POOL_KEY_NAMES
        for key, raw in keys.items():
            if key not in allowed:
                raise ConfigError(path, raw.line, unknown("key", key, allowed))
        if kind == "source":
            sources[name] = _source(path, name, keys)
        else:
            if "sources" not in keys:
                raise ConfigError(path, None, f"[{section}] needs sources = NAME[:weight], ...")
            pool_specs[name] = (keys["sources"].text, keys["sources"].line)
    pools = {name: _pool(path, name, text, line, sources) for name, (text, line) in pool_specs.items()}
    if default_pool is not None and default_pool not in pools:
        raise ConfigError(path, None, f"default_pool = {default_pool}: there is no [pool:{default_pool}]")
    return Egress(sources, pools, default_pool)


def _source(path: Path, name: str, keys: dict) -> Source:
    if "address" not in keys or "ehlo" not in keys:
        raise ConfigError(path, None, f"[source:{name}] needs address and ehlo")
    try:
        address = str(ipaddress.ip_address(keys["address"].text.strip()))
    except ValueError:
        raise ConfigError(path, keys["address"].line,
                          f"[source:{name}] address {keys['address'].text!r} is not an IP address") from None
    try:
        ehlo = _ehlo(keys["ehlo"].text)
    except ValueError as exc:
        raise ConfigError(path, keys["ehlo"].line, f"[source:{name}] {exc}") from None
    warmup: tuple[int, ...] = ()
    if "warmup" in keys:
        try:
            warmup = tuple(int(n) for n in parse_list(keys["warmup"].text))
        except ValueError:
            warmup = (0,)
        if not warmup or min(warmup) < 1:
            raise ConfigError(path, keys["warmup"].line, f"[source:{name}] warmup is a list of "
                              "whole numbers, 1 or more: messages on its 1st, 2nd, … day")
    return Source(name, address, ehlo, warmup)


def _pool(path: Path, name: str, text: str, line: int | None, sources: dict[str, Source]) -> Pool:
    members = []
    for item in parse_list(text):
        source, _, weight = item.partition(":")
        if source not in sources:
            raise ConfigError(path, line, f"[pool:{name}]: there is no [source:{source}]")
        try:
            n = int(weight) if weight else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(path, line, f"[pool:{name}]: the weight of {source} must be a whole "
                              "number, 1 or more")
        members.append((sources[source], n))
    if not members:
        raise ConfigError(path, line, f"[pool:{name}] has no sources")
    return Pool(name, tuple(members))
