"""Per-process pool of ready SMTP sessions (Postfix's scache(8), in process).

Connections are keyed by destination IP, port, source address, EHLO name,
TLS and AUTH user (:class:`SessionKey`) and reused across messages and
batches until ``pool_timeout`` of idleness, then closed with QUIT; with
``pool_timeout = 0`` every session ends in QUIT after its use.  Limits are
counted on open connections, idle ones included: at most ``concurrency_max``
per process (a worker node runs the threads pool: one process) and
``pool_concurrency_max`` per destination IP.

A live socket cannot cross a task boundary, so ``acquire_connection`` hands
``transmit`` a *lease*: an id under which the checked-out session waits in
this process until it is redeemed (transmit is routed to this node).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

from .client import NextAddress, Session, open_session
from .config import Tls
from .errors import TemporaryError, local_reply
from .mx import Target
from .settings import Outbound

log = logging.getLogger(__name__)

#: How long acquire waits for a free connection slot before deferring the batch.
SLOT_WAIT = 120.0
#: Leases not redeemed within this long are closed (their transmit task was lost).
LEASE_TTL = 600.0


class Pool:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: dict[tuple, list[Session]] = {}
        self._open = 0
        self._per_ip: Counter[str] = Counter()
        self._leases: dict[str, tuple[Session, float]] = {}
        self._pool_timeout = 50.0
        self._reaper: threading.Thread | None = None

    # -- accounting ------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open

    def _room(self, ip: str, out: Outbound) -> bool:
        return self._open < out.concurrency_max and self._per_ip[ip] < out.pool_concurrency_max

    def _reserve_or_reuse(self, target: Target, helo: str, bind: str | None, out: Outbound,
                          deadline: float) -> Session | None:
        """An idle session for this destination, or (returning None) a reserved slot for a new one.

        Waits while the limits are reached; an idle session to *another* destination is
        closed to make room, never one this destination could reuse.
        """
        while True:
            reused = self._take_idle_locked(target, helo, bind)
            if reused is not None:
                return reused
            if self._room(target.ip, out):
                self._open += 1
                self._per_ip[target.ip] += 1
                return None
            at_ip_cap = self._per_ip[target.ip] >= out.pool_concurrency_max
            victim = self._oldest_idle(target.ip if at_ip_cap else None)
            if victim is not None:
                self._drop_idle(victim)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TemporaryError(local_reply(
                    "4.4.5", f"no free connection slot for {target.ip} (concurrency limits)"))
            self._cond.wait(min(remaining, 1.0))

    def _unreserve(self, ip: str) -> None:
        self._open -= 1
        self._per_ip[ip] -= 1
        self._cond.notify_all()

    def _oldest_idle(self, ip: str | None) -> Session | None:
        candidates = [s for sessions in self._idle.values() for s in sessions
                      if ip is None or s.key.ip == ip]
        return min(candidates, key=lambda s: s.last_used) if candidates else None

    def _drop_idle(self, session: Session) -> None:
        self._idle[self._idle_key(session)].remove(session)
        self._unreserve(session.key.ip)
        threading.Thread(target=session.close, daemon=True).start()

    @staticmethod
    def _idle_key(session: Session) -> tuple:
        return (session.key, session.target.mx.auth_pass)

    # -- acquiring -------------------------------------------------------------------

    def acquire(self, targets: list[Target], *, helo: str, bind: str | None, out: Outbound, tls: Tls,
                domain: str) -> Session:
        """A ready session to the first address that takes one; TemporaryError when none does."""
        self._pool_timeout = out.pool_timeout
        self._start_reaper()
        last: NextAddress | None = None
        for target in targets:
            with self._cond:
                reused = self._reserve_or_reuse(target, helo, bind, out,
                                                time.monotonic() + SLOT_WAIT)
            if reused is not None:
                return reused
            try:
                return open_session(target, helo=helo, bind=bind, out=out, tls=tls, domain=domain)
            except NextAddress as exc:
                log.info("next address after %s[%s]:%d: %s", target.mx.exchange, target.ip,
                         target.port, exc.reply)
                last = exc
            except BaseException:
                with self._cond:
                    self._unreserve(target.ip)
                raise
            with self._cond:
                self._unreserve(target.ip)
        reply = last.reply if last else local_reply("4.4.4", "no MX address to try")
        raise TemporaryError(reply)

    def _take_idle_locked(self, target: Target, helo: str, bind: str | None) -> Session | None:
        for (key, password), sessions in self._idle.items():
            if (key.ip, key.port, key.bind, key.helo, key.auth_user, key.lmtp) != (
                    target.ip, target.port, bind, helo, target.mx.auth_user, target.mx.using_lmtp) \
                    or password != target.mx.auth_pass:
                continue
            while sessions:
                session = sessions.pop()
                if session.alive():
                    session.target = target
                    return session
                self._unreserve(session.key.ip)
                session.close(quit=False)
        return None

    def release(self, session: Session, out: Outbound, *, reusable: bool = True) -> None:
        """Back to the pool, or QUIT when pooling is off or the session is not fit for reuse."""
        if reusable and out.pool_timeout > 0 and session.alive():
            session.last_used = time.monotonic()
            with self._cond:
                self._idle.setdefault(self._idle_key(session), []).append(session)
                self._cond.notify_all()
            return
        session.close(quit=reusable)
        with self._cond:
            self._unreserve(session.key.ip)

    def discard(self, session: Session) -> None:
        """A broken session: close without QUIT and free its slot."""
        session.close(quit=False)
        with self._cond:
            self._unreserve(session.key.ip)

    # -- leases ----------------------------------------------------------------------

    def lease(self, session: Session) -> str:
        lease_id = uuid.uuid4().hex
        with self._cond:
            self._leases[lease_id] = (session, time.monotonic())
        return lease_id

    def redeem(self, lease_id: str | None) -> Session | None:
        if not lease_id:
            return None
        with self._cond:
            entry = self._leases.pop(lease_id, None)
        return entry[0] if entry else None

    # -- idle reaping ------------------------------------------------------------------

    def _start_reaper(self) -> None:
        with self._cond:
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap_forever, daemon=True,
                                                name="mailflow-pool-reaper")
                self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(0.5)
            self.reap()

    def reap(self) -> None:
        """QUIT idle sessions past pool_timeout, and leases nobody redeemed."""
        now = time.monotonic()
        expired: list[Session] = []
        with self._cond:
            for sessions in self._idle.values():
                for s in list(sessions):
                    if now - s.last_used >= self._pool_timeout or not s.alive():
                        sessions.remove(s)
                        expired.append(s)
            for lease_id, (s, at) in list(self._leases.items()):
                if now - at > LEASE_TTL:
                    del self._leases[lease_id]
                    expired.append(s)
        for s in expired:
            s.close(quit=True)
            with self._cond:
                self._unreserve(s.key.ip)


#: The pool of this process.
POOL = Pool()
