"""What the queue manager has in flight: entries and bytes of the live claims, by destination.

The window (qmgr's active queue limits) is counted without reading every claim's
directory at every scan: a claim counts whole, as it was claimed, until its directory
is gone, and one listing of ``active/`` says which are gone.  Listing each claim at
each scan, ten times a second under load, cost a tenth of the queue manager's process
with thousands of small claims in flight.  Claims this process did not make (an
earlier process's, until their leases expire) are listed once, when first seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from mailflow.queue.entry import EntryName
from mailflow.queue.spool import Spool


class InFlight:
    def __init__(self, spool: Spool):
        self.spool = spool
        #: each live claim's entries and bytes by destination, as claimed
        self._claims: dict[str, tuple[Counter[str], Counter[str]]] = {}
        #: the sums over the live claims
        self.entries: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        #: how many live claims hold entries of each key
        self.claims: Counter[str] = Counter()

    def add(self, claim: str, entries: Counter[str], sizes: Counter[str]) -> None:
        """A claim this process just made."""
        self._drop(claim)
        self._claims[claim] = (entries, sizes)
        self.entries.update(entries)
        self.bytes.update(sizes)
        self.claims.update(entries.keys())

    def grow(self, claim: str, entries: Counter[str], sizes: Counter[str]) -> None:
        """Entries fed into a live claim (mailflow/queue/feed.py)."""
        had = self._claims.get(claim)
        if had is None:
            self.add(claim, entries, sizes)
            return
        self.claims.update(k for k in entries if k not in had[0])
        had[0].update(entries)
        had[1].update(sizes)
        self.entries.update(entries)
        self.bytes.update(sizes)

    def recount(self, claim: str) -> None:
        """Count a fed claim again from its directory: one that takes entries as it sends
        lives long, and counted as claimed it would hold the window with what it delivered
        (bytes scaled by what is left of each key: they are not looked at again)."""
        had = self._claims.get(claim)
        if had is None:
            return
        left = Counter(flight_key(n) for n in self.spool.claim_names(claim))
        sizes = Counter({k: had[1][k] * n // had[0][k] for k, n in left.items() if had[0][k]})
        self.add(claim, left, sizes)

    def __len__(self) -> int:
        """How many claims are live, as last refreshed."""
        return len(self._claims)

    def __contains__(self, claim: object) -> bool:
        return claim in self._claims

    def keys_by_claim(self) -> Iterator[tuple[str, Iterable[str]]]:
        """Each live claim and the keys of its entries."""
        for claim, (entries, _sizes) in self._claims.items():
            yield claim, entries.keys()

    def refresh(self) -> None:
        """Forget the claims that are done; learn those made elsewhere (bytes unknown)."""
        live = set(self.spool.claims())
        for claim in [c for c in self._claims if c not in live]:
            self._drop(claim)
        # without the destinations at zero
        self.entries, self.bytes, self.claims = +self.entries, +self.bytes, +self.claims
        for claim in live - self._claims.keys():
            self.add(claim, Counter(flight_key(n) for n in self.spool.claim_names(claim)), Counter())

    def _drop(self, claim: str) -> None:
        gone = self._claims.pop(claim, None)
        if gone is not None:
            self.entries.subtract(gone[0])
            self.bytes.subtract(gone[1])
            self.claims.subtract(gone[0].keys())


#: Between a tenant's tag and a domain in the window's counts.
TENANT_SEP = "|"


def flight_key(name: EntryName) -> str:
    """What the window counts an entry under: its domain, with its tenant's tag when it has
    one -- each tenant's mail for a destination has a share of the window of its own."""
    tag = name.tenant_tag
    return f"{tag}{TENANT_SEP}{name.domain}" if tag else name.domain
