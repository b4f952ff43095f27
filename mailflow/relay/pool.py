"""Per-process pool of ready SMTP sessions (Postfix's scache(8), in process).

Connections are keyed by destination IP, port, source address, EHLO name and
AUTH user (:class:`SessionKey`), and reused across messages and batches until
``pool_timeout`` of idleness, then closed with QUIT; with ``pool_timeout = 0``
every session ends in QUIT after its use.  A session is reused only for a
delivery whose TLS requirement it meets (:meth:`Session.meets`, checked
before reuse).  Limits are counted on open connections, idle ones included:
at most ``concurrency_max`` per process (a worker node runs the threads pool:
one process) and ``pool_concurrency_max`` per destination IP.

A live socket cannot cross a task boundary, so ``acquire_connection`` *parks*
the session it got and hands ``transmit`` a *ticket*: an id under which the
session waits in this process until it is collected (transmit is routed to
this node).

No worker thread waits here for a free slot.  A parked session holds its slot
until its transmit task gets a thread; were the threads all blocked waiting
for slots, no transmit could run to free one, and every session would sit idle
until the wait timed out (seen as two-minute stalls under load).  So
:meth:`Pool.acquire` raises :class:`NoSlot` at once unless told to wait, and a
task that meets it leaves a *waiter* (:meth:`Pool.wait_for_slot`): a callback
that re-publishes the task once a slot at one of its addresses frees.  The room
that woke it is *granted* to it: the slot stays reserved (or the idle session
that freed stays out of the idle list) under a token its task brings back, so
that while the task crosses the broker no running batch's lane, nor a new
batch, takes it -- else a waiting batch (another tenant's, a one-message
domain's) would lose every freed slot to a backlog's lanes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mailflow.config.settings import Outbound, Tls
from mailflow.errors import TemporaryError, local_reply
from mailflow.relay.client import NextAddress, Session, SessionKey, open_session
from mailflow.relay.mx import Target
from mailflow.relay.tlsneed import TlsNeed, tls_need

log = logging.getLogger(__name__)

#: How long a batch may wait for a free connection slot before it is deferred.
SLOT_WAIT = 120.0
#: Parked sessions not collected within this long are closed (their transmit task was lost).
TICKET_TTL = 600.0
#: A session holding a shaping lease stays idle at most this long (s), its place kept, for
#: the destination's next batch (Postfix's smtp_connection_cache_time_limit is 2 s too):
#: mail that arrives while a rule's one connection is busy goes over it, not a new one.
LEASED_IDLE = 2.0
#: An idle session unused this long (s) may be closed for a slow receiver's extra lane, which
#: closes no fresher one: a connection kept for a destination whose mail is done would else
#: hold its slot of ``concurrency_max`` for ``pool_timeout`` while a backlog elsewhere goes
#: over one connection (Postfix's smtp_connection_cache_time_limit is 2 s as well).
STALE_IDLE = 2.0
#: A woken waiter's granted room is kept for it this long (s): its task crosses the broker to
#: take it; past that (the task was lost), the room is freed again.
GRANT_TTL = 30.0
#: A waiter is woken at least this often, so that its task renews its claim's lease
#: and gives up after SLOT_WAIT even when no slot frees.
WAITER_RECHECK = 20.0


class NoSlot(TemporaryError):
    """Every address is at its connection limit and nothing idle can be reused or closed."""

    def __init__(self, ips: list[str]):
        super().__init__(local_reply("4.4.5", f"no free connection slot for {', '.join(ips)} "
                                     "(concurrency limits)"))
        self.ips = frozenset(ips)


@dataclass
class Waiter:
    """A task waiting for a slot at one of ``ips``: ``wake`` re-publishes it."""

    ips: frozenset[str]
    #: called with the token of the room granted to it (None: none, look again)
    wake: Callable[[str | None], None]
    since: float = field(default_factory=time.monotonic)
    #: its batch's recipient domain, or one tenant's mail for it: slots go to them in turn
    turn: str = ""


@dataclass
class Grant:
    """Room kept for a woken waiter: a reserved slot at ``ip``, with the idle session that
    freed it when there was one."""

    ip: str
    session: Session | None
    until: float


class Pool:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: dict[tuple, list[Session]] = {}
        self._open = 0
        self._per_ip: Counter[str] = Counter()
        self._parked: dict[str, tuple[Session, float]] = {}
        self._pool_timeout = 50.0
        self._out = Outbound()  #: the limits last asked for (waiters are judged by them)
        self._reaper: threading.Thread | None = None
        self._kick = threading.Event()
        self._stopping = threading.Event()
        #: the waiters by turn (a domain, or a tenant's mail for it), in turn order (one
        #: served goes last)
        self._waiters: dict[str, deque[Waiter]] = {}
        self._woken: list[tuple[Waiter, str | None]] = []
        #: room kept for woken waiters, by the token their task brings back
        self._grants: dict[str, Grant] = {}
        #: connections in use by (address, turn) (Session.turn)
        self._using: Counter[tuple[str, str]] = Counter()

    # -- accounting ------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open

    @property
    def idle_connections(self) -> int:
        with self._cond:
            return sum(len(sessions) for sessions in self._idle.values())

    def spare(self, ips: frozenset[str], settings: Outbound) -> int:
        """How many more sessions at ``ips`` could be had now without closing another
        destination's idle one: free slots there, and the idle sessions there.  A slow
        receiver's batch that found no room for a lane starts no more lanes than this: each
        beyond it would only look for room and find none (a thread, the route's policy and
        addresses worked out, the pool's lock) -- after every message, while all is busy."""
        with self._cond:
            per_ip = sum(max(settings.pool_concurrency_max - self._per_ip[ip], 0) for ip in ips)
            stale = len(self._stale_idle(time.monotonic(), outside=ips))  # closed to make room
            free = min(settings.concurrency_max - self._open + stale, per_ip)
            idle = sum(1 for sessions in self._idle.values() for s in sessions if s.key.ip in ips)
        return max(free, 0) + idle

    def _room(self, ip: str, settings: Outbound) -> bool:
        return self._open < settings.concurrency_max and self._per_ip[ip] < settings.pool_concurrency_max

    def _reserve_or_reuse(self, target: Target, helo: str, bind: str | None, need: TlsNeed,
                          settings: Outbound, deadline: float, evict: bool = True) -> Session | None:
        """An idle session for this delivery, or (returning None) a reserved slot for a new one.

        Waits until ``deadline`` while the limits are reached (NoSlot after it); an idle
        session that cannot serve this delivery is closed to make room -- without ``evict``
        (a slow receiver's extra lanes) only one idle for ``STALE_IDLE`` or more.
        """
        while True:
            reused = self._take_idle_locked(target, helo, bind, need)
            if reused is not None:
                return reused
            if self._room(target.ip, settings):
                self._open += 1
                self._per_ip[target.ip] += 1
                return None
            at_ip_cap = self._per_ip[target.ip] >= settings.pool_concurrency_max
            victim = self._oldest_idle(target.ip if at_ip_cap else None,
                                       stale_only=not evict)
            if victim is not None:
                self._drop_idle(victim)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoSlot([target.ip])
            self._cond.wait(min(remaining, 1.0))

    def _unreserve(self, ip: str) -> None:
        self._open -= 1
        self._per_ip[ip] -= 1
        self._cond.notify_all()
        self._wake_locked(ip)

    def _oldest_idle(self, ip: str | None, *, stale_only: bool = False) -> Session | None:
        candidates = self._stale_idle(time.monotonic()) if stale_only else \
            [s for sessions in self._idle.values() for s in sessions]
        candidates = [s for s in candidates if ip is None or s.key.ip == ip]
        return min(candidates, key=lambda s: s.last_used) if candidates else None

    def _stale_idle(self, now: float, outside: frozenset[str] = frozenset()) -> list[Session]:
        """The idle sessions unused for ``STALE_IDLE`` or more, but those at ``outside``."""
        return [s for sessions in self._idle.values() for s in sessions
                if now - s.last_used >= STALE_IDLE and s.key.ip not in outside]

    def _drop_idle(self, session: Session) -> None:
        self._idle[self._idle_key(session)].remove(session)
        self._unreserve(session.key.ip)
        threading.Thread(target=_let_go, args=(session,), kwargs={"quit": True}, daemon=True).start()

    @staticmethod
    def _idle_key(session: Session) -> tuple:
        return (session.key, session.target.mx.auth_pass)

    # -- acquiring -------------------------------------------------------------------

    def acquire(self, targets: list[Target], *, helo: str, bind: str | None, settings: Outbound, tls: Tls,
                domain: str, wait: float = 0.0, evict: bool = True,
                need_for: Callable[[Target], TlsNeed] | None = None, grant: str | None = None) -> Session:
        """A ready session to the first address that takes one.

        Raises NoSlot when every address is at its limits (after waiting up to ``wait``
        seconds for each), TemporaryError when none takes a session.  Without ``evict``
        only an idle session unused for ``STALE_IDLE`` or more is closed to make room.  ``need_for``
        says what each address requires of TLS (default: tls.ini's policy alone).
        ``grant``: the token of room kept for this task when it was woken, taken first.
        """
        self._pool_timeout, self._out = settings.pool_timeout, settings
        self._start_reaper()
        granted = self._take_grant(grant)
        if granted is not None:
            kept = next((t for t in targets if t.ip == granted.ip), None)
            if kept is None:
                self._give_back(granted)
            else:
                need = need_for(kept) if need_for else tls_need(kept, domain, tls, settings)
                session = self._use_grant(granted, kept, helo, bind, need, settings, tls)
                if session is not None:
                    return session
        last: NextAddress | None = None
        last_target: Target | None = None
        full: list[str] = []
        for n, target in enumerate(targets):
            need = need_for(target) if need_for else tls_need(target, domain, tls, settings)
            try:
                with self._cond:
                    reused = self._reserve_or_reuse(target, helo, bind, need, settings,
                                                    time.monotonic() + wait, evict)
            except NoSlot:
                full.append(target.ip)
                continue
            if reused is not None:
                return reused
            opened = self._open_reserved(target, helo=helo, bind=bind, settings=settings, tls=tls, need=need)
            if isinstance(opened, Session):
                return opened
            log.info("%s[%s]:%d: %s; %s", target.mx.exchange, target.ip, target.port, opened.reply,
                     "trying the next address" if n + 1 < len(targets) else "no address left")
            last, last_target = opened, target
        if full and last is None:
            raise NoSlot(full)
        if last is None:
            raise TemporaryError(local_reply("4.4.4", "no MX address to try"))
        tried = targets[-1] if last_target is None else last_target  # named in the attempt line
        raise TemporaryError(last.reply, host=tried.mx.exchange, ip=tried.ip, port=tried.port)

    def reopen(self, session: Session, *, settings: Outbound, tls: Tls, domain: str,
               source: tuple[str, str, str] | None = None) -> Session:
        """QUIT ``session`` and connect afresh to the same address in the same slot; from
        ``source`` (address, EHLO name, its name: an egress pool's next turn) when given.

        ``pool_timeout = 0`` means one connection per message; keeping the slot
        between them means a batch never has to queue for a slot again mid-way.
        """
        session.close(quit=True)
        target = session.target
        need = session.need or tls_need(target, domain, tls, settings)
        bind, helo, name = source or (session.key.bind, session.key.helo, session.source)
        try:
            fresh = open_session(target, helo=helo, bind=bind, settings=settings, tls=tls, need=need)
        except BaseException:
            if session.lease is not None:
                session.lease.release()
            with self._cond:
                self._stop_serving_locked(session)
                self._unreserve(target.ip)
            raise
        fresh.lease = session.lease  # the same slot, the same place under its shaping rules
        fresh.source, fresh.turn = name, session.turn  # and the same turn's
        return fresh

    def _take_idle_locked(self, target: Target, helo: str, bind: str | None, need: TlsNeed,
                          rules: list[str] | None = None) -> Session | None:
        """An idle session for ``target`` that meets ``need``: one without a shaping lease, or
        with ``rules`` one leased under exactly those rules (see take_leased)."""
        for (key, password), sessions in self._idle.items():
            if not _serves(key, password, target, helo, bind):
                continue
            for session in reversed(sessions):
                leased = None if session.lease is None else [r.name for r in session.lease.rules]
                if not session.meets(need) or leased != rules:
                    continue
                sessions.remove(session)
                if session.alive():
                    session.target = target
                    return session
                self._unreserve(session.key.ip)
                _let_go(session, quit=False)
                return self._take_idle_locked(target, helo, bind, need, rules)
        return None

    def take_leased(self, targets: list[Target], *, helo: str, bind: str | None,
                    need_for: Callable[[Target], TlsNeed], rules: list[str]) -> Session | None:
        """An idle session that holds a shaping lease under exactly ``rules`` (names), for
        the next batch of its destination: its place goes with it.  Only a route that would
        lease under the same rules may have it, so no rule's count is ever skipped."""
        with self._cond:
            for target in targets:
                found = self._take_idle_locked(target, helo, bind, need_for(target), rules)
                if found is not None:
                    return found
        return None

    def release(self, session: Session, settings: Outbound, *, reusable: bool = True) -> None:
        """Back to the pool, or QUIT when pooling is off or the session is not fit for reuse.

        A session holding a shaping lease is kept idle with it for ``LEASED_IDLE`` at most:
        longer, an idle connection would hold its rule's place from every other host
        (relay/shaping.py).
        """
        with self._cond:
            self._stop_serving_locked(session)
        if reusable and settings.pool_timeout > 0 and session.alive():
            session.last_used = time.monotonic()
            with self._cond:
                self._idle.setdefault(self._idle_key(session), []).append(session)
                self._cond.notify_all()
                self._wake_locked(session.key.ip, idle=True)
            return
        _let_go(session, quit=reusable)
        with self._cond:
            self._unreserve(session.key.ip)

    def discard(self, session: Session) -> None:
        """A broken session, or one in an unknown state: close without QUIT and free its slot."""
        _let_go(session, quit=False)
        with self._cond:
            self._stop_serving_locked(session)
            self._unreserve(session.key.ip)

    # -- parking a session for the next task -----------------------------------------

    def park(self, session: Session) -> str:
        """Keep ``session`` for the task that brings the returned ticket (transmit)."""
        ticket = uuid.uuid4().hex
        with self._cond:
            self._parked[ticket] = (session, time.monotonic())
        return ticket

    def collect(self, ticket: str | None) -> Session | None:
        """The session parked under ``ticket``; None when there is none (any more)."""
        if not ticket:
            return None
        with self._cond:
            entry = self._parked.pop(ticket, None)
        return entry[0] if entry else None

    # -- waiting for a slot ------------------------------------------------------------

    def wait_for_slot(self, ips: frozenset[str], wake: Callable[[str | None], None], settings: Outbound,
                      turn: str = "") -> None:
        """Call ``wake`` (from the pool's thread) once a slot at one of ``ips`` may be free,
        with the token of the room kept for it (None: none was; it looks again); ``turn``:
        the domain, or one tenant's mail for it (waiters take turns by it)."""
        self._out = settings
        self._start_reaper()
        with self._cond:
            self._waiters.setdefault(turn, deque()).append(Waiter(ips, wake, turn=turn))
            self._wake_locked(next(iter(ips)))  # a slot may have freed meanwhile

    def serve(self, session: Session, turn: str) -> None:
        """``session`` carries ``turn``'s mail now (counted until it is released)."""
        with self._cond:
            self._stop_serving_locked(session)
            session.turn = turn
            self._using[session.key.ip, turn] += 1

    def _stop_serving_locked(self, session: Session) -> None:
        if session.turn is not None:
            key = (session.key.ip, session.turn)
            self._using[key] -= 1
            if self._using[key] <= 0:
                del self._using[key]
            session.turn = None

    def owes_room(self, ip: str, turn: str) -> bool:
        """Whether a turn that has fewer connections at ``ip`` than ``turn`` has waits for a
        slot there: then one of ``turn``'s should be given up to it."""
        with self._cond:
            mine = self._using[ip, turn]
            return any(self._using[ip, t] < mine for t, queue in self._waiters.items()
                       if t != turn and any(ip in w.ips for w in queue))

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(len(queue) for queue in self._waiters.values())

    def _wake_locked(self, ip: str, idle: bool = False) -> None:
        """A slot (or an ``idle`` session) at ``ip`` came free: it goes to the waiting turns
        in turn -- domains, and each tenant's mail for a domain apart -- and within a turn to
        its oldest waiter that may use it, so that a one-message domain waiting for its
        provider's connections is not served after every batch of a large domain behind the
        same hosts, nor one tenant's mail after every batch of another's backlog to the same
        domain (Postfix's qmgr serves destinations round robin in the same way).

        Its callback publishes a task, which is no work to do under the lock: the
        pool's thread runs it.
        """
        for turn, queue in self._waiters.items():
            for waiter in queue:
                if self._may_go(waiter, ip, idle):
                    queue.remove(waiter)
                    del self._waiters[turn]
                    if queue:
                        self._waiters[turn] = queue  # its next waiter's turn comes after the others'
                    self._woken.append((waiter, self._grant_locked(waiter, ip, idle)))
                    self._kick.set()
                    return

    def _grant_locked(self, waiter: Waiter, ip: str, idle: bool) -> str | None:
        """Keep the room that woke ``waiter`` for it: a slot reserved at one of its addresses
        (``ip`` first), else the idle session at ``ip`` taken out of the idle list; its
        token, or None when the room is an idle session elsewhere it may close."""
        free = [i for i in sorted(waiter.ips, key=lambda i: i != ip) if self._room(i, self._out)]
        session = None
        if free:
            ip = free[0]
            self._open += 1
            self._per_ip[ip] += 1
        elif idle and ip in waiter.ips:
            here = [s for sessions in self._idle.values() for s in sessions if s.key.ip == ip]
            if not here:
                return None
            session = max(here, key=lambda s: s.last_used)
            self._idle[self._idle_key(session)].remove(session)
        else:
            return None
        token = uuid.uuid4().hex
        self._grants[token] = Grant(ip, session, time.monotonic() + GRANT_TTL)
        return token

    def _take_grant(self, token: str | None) -> Grant | None:
        with self._cond:
            grant = self._grants.pop(token, None) if token else None
        if grant is not None and grant.until < time.monotonic():
            self._give_back(grant)
            return None
        return grant

    def _give_back(self, grant: Grant) -> None:
        """Granted room nobody took: its session idle again (or closed), its slot freed."""
        if grant.session is not None and grant.session.alive():
            self.release(grant.session, self._out)
            return
        if grant.session is not None:
            _let_go(grant.session, quit=False)
        with self._cond:
            self._unreserve(grant.ip)

    def _use_grant(self, grant: Grant, target: Target, helo: str, bind: str | None, need: TlsNeed,
                   settings: Outbound, tls: Tls) -> Session | None:
        """A session in the granted room: its idle session if it serves this delivery, else
        a new connection in its slot (None, the slot freed, when the address takes none)."""
        old = grant.session
        if old is not None:
            if old.lease is None and _serves(old.key, old.target.mx.auth_pass, target, helo, bind) \
                    and old.meets(need) and old.alive():
                old.target = target
                return old
            threading.Thread(target=_let_go, args=(old,), kwargs={"quit": True}, daemon=True).start()
        opened = self._open_reserved(target, helo=helo, bind=bind, settings=settings, tls=tls, need=need)
        if isinstance(opened, Session):
            return opened
        log.info("%s[%s]:%d: %s", target.mx.exchange, target.ip, target.port, opened.reply)
        return None

    def _open_reserved(self, target: Target, *, helo: str, bind: str | None, settings: Outbound,
                       tls: Tls, need: TlsNeed) -> Session | NextAddress:
        """A new connection in the slot reserved at ``target``; when the address takes none,
        the slot is freed and why is returned (any other failure is raised)."""
        try:
            return open_session(target, helo=helo, bind=bind, settings=settings, tls=tls, need=need)
        except NextAddress as exc:
            with self._cond:
                self._unreserve(target.ip)
            return exc
        except BaseException:
            with self._cond:
                self._unreserve(target.ip)
            raise

    def _may_go(self, waiter: Waiter, ip: str, idle: bool) -> bool:
        """A slot at one of its addresses, or an idle session it may reuse or close for room."""
        if any(self._room(i, self._out) for i in waiter.ips):
            return True
        below_ip_cap = any(self._per_ip[i] < self._out.pool_concurrency_max for i in waiter.ips)
        return idle and (ip in waiter.ips or below_ip_cap)

    def _run_woken(self) -> None:
        now = time.monotonic()
        with self._cond:
            stale = [w for queue in self._waiters.values() for w in queue if now - w.since >= WAITER_RECHECK]
            for waiter in stale:
                self._waiters[waiter.turn].remove(waiter)
            self._waiters = {turn: queue for turn, queue in self._waiters.items() if queue}
            woken, self._woken = self._woken + [(w, None) for w in stale], []
        for waiter, token in woken:
            try:
                waiter.wake(token)
            except Exception:  # its claim's lease expires and the entries come back
                log.exception("could not wake a batch waiting for a connection slot")
                grant = self._take_grant(token)
                if grant is not None:
                    self._give_back(grant)

    # -- the pool's thread: wake-ups and idle reaping ----------------------------------

    def _start_reaper(self) -> None:
        with self._cond:
            if not self._stopping.is_set() and (self._reaper is None or not self._reaper.is_alive()):
                self._reaper = threading.Thread(target=self._reap_forever, daemon=True,
                                                name="mailflow-pool")
                self._reaper.start()

    def _reap_forever(self) -> None:
        """Wake waiters and reap idle sessions while there is anything to look after; a pool
        with no connection, no waiter and nothing parked needs no thread (the next acquire
        starts one again)."""
        while not self._stopping.is_set():
            self._kick.wait(0.5)
            self._kick.clear()
            if self._stopping.is_set():
                return
            self._run_woken()
            self.reap()
            with self._cond:
                if not (self._open or self._waiters or self._woken or self._parked):
                    self._reaper = None
                    return

    def stop(self, timeout: float = 5.0) -> None:
        """End the pool's thread (the process is stopping); idle sessions are QUIT first."""
        self._stopping.set()
        self._kick.set()
        reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout)
        with self._cond:
            idle = [s for sessions in self._idle.values() for s in sessions]
            idle += [g.session for g in self._grants.values() if g.session is not None]
            for grant in self._grants.values():
                if grant.session is None:
                    self._unreserve(grant.ip)
            self._idle.clear()
            self._grants.clear()
        for session in idle:
            _let_go(session, quit=True)
            with self._cond:
                self._unreserve(session.key.ip)
        self._stopping.clear()  # usable again: the next acquire starts a thread anew

    def reap(self) -> None:
        """QUIT idle sessions past pool_timeout, and parked ones nobody collected; free the
        room granted to woken waiters whose task did not come for it."""
        now = time.monotonic()
        expired: list[Session] = []
        with self._cond:
            for sessions in self._idle.values():
                for s in list(sessions):
                    keep = min(self._pool_timeout, LEASED_IDLE) if s.lease is not None else self._pool_timeout
                    if now - s.last_used >= keep or not s.alive():
                        sessions.remove(s)
                        expired.append(s)
            for ticket, (s, at) in list(self._parked.items()):
                if now - at > TICKET_TTL:
                    del self._parked[ticket]
                    expired.append(s)
            lapsed = [token for token, grant in self._grants.items() if grant.until < now]
            unclaimed = [self._grants.pop(token) for token in lapsed]
        for grant in unclaimed:
            self._give_back(grant)
        for s in expired:
            _let_go(s, quit=True)
            with self._cond:
                self._unreserve(s.key.ip)


def _serves(key: SessionKey, password: str | None, target: Target, helo: str, bind: str | None) -> bool:
    """Whether a session opened under ``key`` (and AUTH ``password``) is a connection a
    delivery to ``target`` from ``bind`` greeting as ``helo`` may use (TLS aside)."""
    return (key.ip, key.port, key.bind, key.helo, key.auth_user, key.lmtp) == (
        target.ip, target.port, bind, helo, target.mx.auth_user, target.mx.using_lmtp) \
        and password == target.mx.auth_pass


def _let_go(session: Session, *, quit: bool) -> None:
    """Close ``session`` and give up its shaping place, if it holds one."""
    if session.lease is not None:
        session.lease.release()
        session.lease = None
    session.close(quit=quit)


#: The pool of this process.
POOL = Pool()
