"""Sites: domains that share one MX set, so that their mail shares batches and connections.

Google Workspace and Microsoft 365 host millions of domains behind the same MX
hosts; a long tail of their domains, one or two messages each, would otherwise
cost a batch each -- a claim, three tasks, an MX lookup and often a connection.
KumoMTA calls grouping them "MX rollup"; here the queue manager claims the due
entries of a site's domains together (mailflow/queue/manager.py) -- and those of
domains not seen before, a few each, together too, for one lookup that learns
their sites (``NEWCOMERS``) -- and the MX
lookup step, which resolves every domain anyway, routes those that still share
the MX set, and have no TLS policy or shaping rule of their own, together
(mailflow/pipeline/lookup.py).  Domains whose MX hosts all lie under one shaping
``[mx:SUFFIX]`` rule are one site whatever their MX sets: claimed together, and
routed together where their MX sets agree.

The lookup step learns which site a domain belongs to and writes it down in
``<queue>/sites/<domain>`` (the queue directory is the contract between the
steps); the queue manager reads it back, for ``SITE_TTL`` after it was
written.  A site is only a hint for claiming: the lookup decides the routes from
each domain's own answer every time, so a stale site costs a batch split in
two, never a message sent the wrong way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mailflow.queue.entry import check_domain
from mailflow.util.atomic import replace_text
from mailflow.wire.mx import MX

log = logging.getLogger(__name__)

#: The directory under the queue root.
SITES = "sites"
#: How long a learned site holds (s): long enough for a steady tail of domains to keep
#: its grouping, short enough that a domain that moved is soon claimed alone again.
SITE_TTL = 600.0
#: How long the reader takes a domain with no site for one (s): a lookup may write it.
UNKNOWN_FOR = 5.0
#: A site written less than this long ago is not written again (s): the next lookups of a
#: busy domain cost a read, not a write.
REWRITE_AFTER = SITE_TTL / 2
#: A directory mtime younger than this is not trusted to be final (ns): a file written in
#: the same clock tick as the last look would not change it.
SETTLE_NS = 2_000_000_000
#: A site is worth joining when another domain was placed at it within this long (s).
COMPANY_FOR = SITE_TTL
#: A first-seen domain with at most this many due entries is a *newcomer*: its entries are
#: claimed with other newcomers' for one lookup, which writes their sites down and gives
#: back those whose site has other domains, to be claimed with that site's mail
#: (mailflow/pipeline/lookup.py).  One with more is a batch's worth itself.
JOIN_MAX = 5
#: The site of a batch of newcomers (no MX set hashes to it: sixteen zeros).
NEWCOMERS = "0" * 16


class Company:
    """The sites this process placed a domain at lately, and which domain: a first-seen
    domain whose site already has another is worth its mail joining that site's batch; a
    site with none (a company's own MX) is not, and its mail goes out as it is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: site -> (the domain last placed there, until when that counts, monotonic)
        self._placed: dict[str, tuple[str, float]] = {}

    def joins(self, site: str, domain: str) -> bool:
        """Note ``domain`` placed at ``site``; whether another domain was placed there lately."""
        now = time.monotonic()
        with self._lock:
            last = self._placed.get(site)
            if len(self._placed) > 100_000:  # a long tail of sites is no leak
                self._placed = {k: v for k, v in self._placed.items() if v[1] > now}
            self._placed[site] = (domain, now + COMPANY_FOR)
        return last is not None and last[1] > now and last[0] != domain


#: This process's (the lookups run in the worker process of the queue's host).
COMPANY = Company()


def site_key(mxs: Iterable[MX]) -> str:
    """What domains with the same MX hosts have in common, whatever the order DNS gave them
    in (equal preferences are shuffled) -- 16 hex digits."""
    return hosts_key((mx.exchange, mx.priority, mx.port) for mx in mxs)


def hosts_key(hosts: Iterable[tuple[str, int, int | None]]) -> str:
    """The site key of (host, preference, port) triples."""
    found = sorted({(host.lower(), priority, port or 0) for host, priority, port in hosts})
    return hashlib.sha256(repr(found).encode()).hexdigest()[:16]


def suffix_key(rule_name: str) -> str:
    """The site of every domain whose MX hosts all lie under one shaping ``[mx:SUFFIX]`` rule:
    the operator has said they are one provider (Gmail's hosts serve domains with
    different MX sets), so their mail is claimed together and counted against one limit."""
    return hashlib.sha256(f"rule {rule_name.lower()}".encode()).hexdigest()[:16]


#: Where a domain's site comes from when no lookup has written it down: routes.ini and
#: relay_host name the next hop before any lookup (None: not known until one).
Configured = Callable[[str], str | None]


def _unknown(domain: str) -> str | None:
    return None


class Sites:
    """The site of each domain, as the lookups last found it, with a cache for the reader."""

    def __init__(self, root: Path | str, ttl: float = SITE_TTL):
        self.directory = Path(root) / SITES
        self.ttl = ttl
        #: domain -> (site or None, until when it holds, monotonic)
        self._cache: dict[str, tuple[str | None, float]] = {}
        #: the mtime of sites/ at the last recheck_unknown
        self._seen_mtime_ns: int | None = None

    def _path(self, domain: str) -> Path:
        return self.directory / check_domain(domain)

    def _age(self, domain: str) -> float:
        """Seconds since ``domain``'s site was written down (infinite: it is not)."""
        try:
            return time.time() - self._path(domain).stat().st_mtime
        except OSError:
            return float("inf")

    def fresh(self, domain: str) -> bool:
        """Whether ``domain``'s site was written lately (not to be worked out again yet)."""
        return self._age(domain) < REWRITE_AFTER

    def known(self, domain: str) -> bool:
        """Whether ``domain``'s site is written down and within its TTL: the queue manager
        reads it and claims the domain's mail with its site's."""
        return self._age(domain) < self.ttl

    def learn(self, domain: str, site: str | None) -> bool:
        """Write ``domain``'s site (None: it travels alone) unless it was written lately;
        whether it is written down now.

        Only a hint: a site that cannot be written (a full disk) is said and passed over,
        never a reason for the batch that learned it to stop."""
        path = self._path(domain)
        try:
            if time.time() - path.stat().st_mtime < REWRITE_AFTER and path.read_text() == (site or ""):
                return True
        except (OSError, UnicodeDecodeError):
            pass
        try:  # several lookups, threads of one process among them, may learn it at once
            replace_text(path, site or "")
        except OSError as exc:
            log.warning("could not write down the site of %s (%s): its mail is claimed alone", domain, exc)
            return False
        return True

    def recheck_unknown(self) -> None:
        """Forget which domains were found to have no site when ``sites/`` has changed since
        the last call (a lookup wrote one down), or changed too lately for its timestamp to
        say (timestamps are coarse): a first-seen domain's mail given back by its lookup
        (mailflow/pipeline/lookup.py) is then claimed with its site's at once, not after
        ``UNKNOWN_FOR``.  One stat per call; the unknown are read again only after a change."""
        try:
            mtime_ns = self.directory.stat().st_mtime_ns
        except OSError:
            return
        if mtime_ns == self._seen_mtime_ns and time.time_ns() - mtime_ns > SETTLE_NS:
            return
        self._seen_mtime_ns = mtime_ns
        self._cache = {d: c for d, c in self._cache.items() if c[0] is not None}

    def of(self, domain: str, configured: Configured = _unknown) -> str | None:
        """The site ``domain`` was last found to share, if that was within the TTL: a site
        key, or "" when it travels alone; else what ``configured`` says; else None."""
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached is not None and cached[1] > now:
            return cached[0]
        site: str | None = None
        until = now + min(self.ttl, UNKNOWN_FOR)  # unknown: looked at again soon
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
            path = self._path(domain)
            age = time.time() - path.stat().st_mtime
            if age < self.ttl:
                site = path.read_text()
                until = now + self.ttl - age
        if site is None:
            site = configured(domain)
        if len(self._cache) > 100_000:  # a long tail of domains is no leak
            self._cache = {d: c for d, c in self._cache.items() if c[1] > now}
        self._cache[domain] = (site, until)
        return site

    def expire(self) -> int:
        """Remove what is past its TTL (the queue manager, now and then); how many went."""
        gone = 0
        with contextlib.suppress(OSError):
            for item in os.scandir(self.directory):
                with contextlib.suppress(OSError):
                    if time.time() - item.stat().st_mtime >= self.ttl:
                        os.unlink(item.path)
                        gone += 1
        return gone
