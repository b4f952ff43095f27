"""Leases held for an owner on another host: renewed through the broker, and the fence.

A worker that delivers a parcel (mailflow/wire/payloads.py) holds its claim on the
owner's behalf.  Every ``RENEW_EVERY`` seconds each worker broadcasts, by
Celery's remote control, ``mailflow_renew``: the claims it holds, by owner.
The owner touches them (mailflow/queue/lending.py).  The same broadcast says
that a worker host is there (the owner sends parcels only when one is) and,
coming back to the worker that sent it, that this worker hears the broker.

The fence: a holder starts no message later than ``FENCE_SECONDS`` after the
last renewal the broker took from it.  Before its first, it starts none later
than ``FENCE_SECONDS`` after it took the parcel, nor after the parcel's
``start_by_ms`` (the owner keeps a parcel's claim for a wait and a lease
before its lease counts).  The owner gives a lent claim back only after a whole
lease in which it heard the broker and no renewal came, so by then the holder
has stopped starting messages for half a lease (docs/architecture.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailflow.wire.lease import FENCE_SECONDS, RENEW_EVERY, clock
from mailflow.wire.payloads import Letter, Parcel

log = logging.getLogger(__name__)

#: How long a held parcel waits for its next step (transmit after acquire) before it is
#: dropped from the renewals: a step lost on the way must not keep a claim for ever.
HOP_GRACE = max(2 * RENEW_EVERY, 30.0)
#: A worker host not heard from for this long is taken to be gone.
PRESENCE_S = 3 * RENEW_EVERY

Broadcast = Callable[[dict[str, Any]], None]


@dataclass
class Holding:
    owner: str
    claim: str
    fence: float  #: clock() after which no message may start
    hop_until: float | None  #: clock() by which its next step must have taken it over
    letters: tuple[Letter, ...] = ()  #: kept for the next step, which comes without them

    def may_start(self) -> bool:
        return clock() < self.fence


class Holdings:
    """This process's parcels, and the thread that renews their claims."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str, tuple[str, ...]], Holding] = {}
        self._present: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- holder side ------------------------------------------------------------------

    def take(self, parcel: Parcel, *, hop: bool) -> Holding | None:
        """Hold the parcel's claim (or keep holding it); None when its fence has passed."""
        key = (parcel.batch.owner, parcel.batch.claim, parcel.batch.names)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                left = (parcel.start_by_ms() - time.time() * 1000) / 1000
                held = Holding(parcel.batch.owner, parcel.batch.claim,
                               clock() + min(left, FENCE_SECONDS), None)
            if not held.may_start():
                self._held.pop(key, None)
                return None
            held.hop_until = clock() + HOP_GRACE if hop else None
            held.letters = parcel.letters or held.letters
            self._held[key] = held
        return held

    def let_go(self, parcel: Parcel) -> None:
        with self._lock:
            self._held.pop((parcel.batch.owner, parcel.batch.claim, parcel.batch.names), None)

    def claims(self) -> dict[str, list[str]]:
        """What to renew now, by owner (parcels whose next step never came are dropped)."""
        now = clock()
        out: dict[str, set[str]] = {}
        with self._lock:
            for key, held in list(self._held.items()):
                if held.hop_until is not None and now > held.hop_until:
                    log.warning("the parcel of claim %s waited %d s for its next step: no "
                                "longer renewed", held.claim, HOP_GRACE)
                    del self._held[key]
                    continue
                out.setdefault(held.owner, set()).add(held.claim)
        return {owner: sorted(claims) for owner, claims in out.items()}

    def renewed(self, claims: dict[str, list[str]], sent_at: float) -> None:
        """The broker took a renewal sent at ``sent_at``: the fence moves on for those claims."""
        with self._lock:
            for held in self._held.values():
                if held.claim in claims.get(held.owner, ()):
                    held.fence = max(held.fence, sent_at + FENCE_SECONDS)

    # -- the renewer -----------------------------------------------------------------

    def start(self, broadcast: Broadcast, describe: Callable[[], dict[str, Any]]) -> None:
        """Renew every RENEW_EVERY: ``describe()`` says who this worker is."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broadcast, describe), daemon=True,
                                        name="mailflow-renew")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, broadcast: Broadcast, describe: Callable[[], dict[str, Any]]) -> None:
        while True:
            claims = self.claims()
            sent_at = clock()
            try:
                broadcast({**describe(), "claims": claims})
            except Exception as exc:  # the broker is away: the fence does the rest
                log.warning("could not renew %d claims through the broker: %s",
                            sum(map(len, claims.values())), exc)
            else:
                self.renewed(claims, sent_at)
            if self._stop.wait(RENEW_EVERY):
                return

    # -- presence of worker hosts -----------------------------------------------------

    def seen(self, node: str) -> None:
        now = clock()
        with self._lock:
            new = now - self._present.get(node, -PRESENCE_S - 1) > PRESENCE_S
            self._present[node] = now
        if new:
            log.info("worker host %s is here: routes go out as parcels any worker may deliver", node)

    def worker_hosts(self) -> list[str]:
        """Worker hosts heard from lately (they deliver parcels for any owner)."""
        now = clock()
        with self._lock:
            return sorted(n for n, t in self._present.items() if now - t <= PRESENCE_S)


HOLDINGS = Holdings()
