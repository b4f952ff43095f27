"""The ``mailflow.transmit`` step: a route's messages over its session (more for a slow receiver)."""

from __future__ import annotations

import datetime
import logging
import smtplib
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any, Protocol

from mailflow import config
from mailflow.config.egress import Source
from mailflow.config.loader import Config
from mailflow.config.settings import Outbound
from mailflow.errors import DeliveryError, Reply, Throttled, local_reply
from mailflow.message import FileMessage
from mailflow.observation import tally
from mailflow.observation.sampler import SAMPLER
from mailflow.pipeline.acquire import next_source, session_for, warm
from mailflow.pipeline.lookup import same_way
from mailflow.pipeline.shaping import NEW_CONNECTION, RouteShaping, hold_reason
from mailflow.queue import countdowns, feed, verp
from mailflow.queue.claims import give_back, gone, here, holding, load
from mailflow.queue.hmail import HMail
from mailflow.queue.outcomes import crashed, fail_all, fail_each, record
from mailflow.queue.sites import site_key
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay import warmup
from mailflow.relay.client import EndOfDataTimeout, NextAddress, Session
from mailflow.relay.pool import POOL, NoSlot
from mailflow.wire.dsnparams import Dsn
from mailflow.wire.payloads import Outcome, Route
from mailflow.wire.requiretls import REQUIRETLS_NOTE

log = logging.getLogger(__name__)

#: A message that takes this long (seconds, MAIL FROM to the reply to its dot) marks a
#: slow receiver: the rest of its batch is shared over parallel connections (Courier).
#: A receiver on the same network answers in a few milliseconds; one across the
#: internet that holds each reply (greylisting tarpits, content scanning) takes longer.
SLOW_MESSAGE = 0.2
#: How long a destination found slow stays known as slow in this worker: its next batches
#: start their extra lanes with the first message, not after it.
KNOWN_SLOW_FOR = 300.0
#: Once a batch has spread, the lanes started at each later look for room while it does
#: not know where room is (a look that finds none costs a thread each); once a lane found
#: its addresses full, a look takes what the pool says has freed there (Pool.spare).
LANES_PER_LOOK = 4

#: A lane that has sent for this long (s) gives its connection up after its message when a
#: batch of another turn (another domain, another tenant's mail) with fewer connections at
#: its address waits for a slot there, as a scheduler's time slice: a fast receiver's
#: batch ends well within it, and a slow one's backlog no longer keeps everyone else's mail
#: for that receiver waiting behind each of its batches.  What is left of the batch is due
#: again at once, claimed in its turn.
TURN_QUANTUM = 2.0

#: Receivers (by their MX set: mailflow/queue/sites.py) found slow in this worker, and until
#: when (monotonic seconds): every domain they host is as slow.
_KNOWN_SLOW: dict[str, float] = {}
#: Past this many, the expired ones are forgotten (a long tail of domains is no leak).
KNOWN_SLOW_KEPT = 10_000


def _remember_slow(domain: str, now: float) -> None:
    if len(_KNOWN_SLOW) >= KNOWN_SLOW_KEPT:
        for expired in [d for d, until in _KNOWN_SLOW.items() if until <= now]:
            del _KNOWN_SLOW[expired]
    _KNOWN_SLOW[domain] = now + KNOWN_SLOW_FOR

#: A route stops taking new messages after this long and hands the rest back, due now.
#: It keeps every task far below Redis's visibility timeout and RabbitMQ's
#: consumer_timeout (30 min): one message's own RFC 5321 timeouts stay under 25 min.
BATCH_TIME_BUDGET = 300.0


def transmit(route: Route, ticket: str | None) -> None:
    """Send the route's entries over the session parked under ``ticket`` (or a new one)."""
    cfg = config.current()
    spool = Spool(cfg.queue_path())
    courier = Courier(cfg, route, POOL.collect(ticket), LocalLedger(spool, route, cfg.outbound))
    try:
        here(spool, route.batch)
        with holding(spool, route.batch) as held:
            if held:
                courier.run()
        spool.finish(route.batch.claim)
    finally:
        courier.let_go()
    if not held:
        raise gone(route.batch)


def drop_ticket(ticket: str | None) -> None:
    """The task was refused: its parked session, if any, goes back to the pool."""
    session = POOL.collect(ticket)
    if session is not None:
        POOL.release(session, config.current().outbound)


def accepted(outcome: Outcome | None) -> bool:
    """Whether the receiver took the message for at least one recipient."""
    return outcome is not None and any(200 <= r.code < 300 for r in outcome.results.values())


def outcome_of(session: Session) -> Outcome:
    return Outcome(host=session.host, ip=session.target.ip, port=session.target.port,
                   mode="LMTP" if session.key.lmtp else "SMTP", secured=session.secured,
                   authenticated=session.authenticated, tls_level=session.level,
                   source=session.source)


class Ledger(Protocol):
    """Where a courier's entries come from and its outcomes go.

    :class:`LocalLedger` is the queue directory on this host; a holder on another host
    keeps one that reports to the owner (mailflow/pipeline/parcels.py).  Items are
    whatever the ledger hands out (an HMail here, a Letter there).
    """

    domain: str

    def items(self) -> list[Any]: ...
    def envelope(self, item: Any) -> tuple[str, list[str], bytes | FileMessage]: ...
    def dsn(self, item: Any) -> Dsn | None: ...
    def requires_tls(self, item: Any) -> bool: ...
    def still_here(self, item: Any) -> bool: ...
    def may_start(self) -> bool: ...
    def record(self, item: Any, outcome: Outcome) -> None: ...
    def fail_all(self, item: Any, reply: Reply, outcome: Outcome) -> None: ...
    def fail_each(self, items: list[Any], exc: DeliveryError) -> None: ...
    def crashed(self, item: Any, exc: BaseException, outcome: Outcome | None = None) -> None: ...
    def give_back(self, items: list[Any], due_ms: int | None = None, why: str = "") -> int: ...
    def open_feed(self) -> bool: ...
    def more(self) -> list[Any]: ...
    def close_feed(self) -> None: ...


class LocalLedger:
    """The entries of a claim in this host's queue directory; outcomes recorded there."""

    def __init__(self, spool: Spool, route: Route, settings: Outbound):
        self.spool, self.route, self.settings = spool, route, settings
        self.domain = route.domain
        #: the entries of the claim this transmit has taken, fed ones included
        self._seen = set(route.batch.names)

    def items(self) -> list[HMail]:
        return load(self.spool, self.route.batch)

    def envelope(self, item: HMail) -> tuple[str, list[str], FileMessage]:
        # the queue file's message, read in blocks as it is sent and put in wire form then
        # (relay/client.py): a 20 MB message is never held whole
        rcpts = [r.address for r in item.todo.rcpt_to]
        return verp.envelope_sender(item.todo, self.settings.verp_domain), rcpts, item.message_file()

    def dsn(self, item: HMail) -> Dsn | None:
        """What the client asked to be told (RFC 3461), passed on to a next hop that offers DSN."""
        return Dsn.from_notes(item.todo.notes)

    def requires_tls(self, item: HMail) -> bool:
        """REQUIRETLS (RFC 8689): verified TLS all the way, or a bounce."""
        return item.todo.notes.get(REQUIRETLS_NOTE) is True

    def still_here(self, item: HMail) -> bool:
        return item.path.exists()  # not handled meanwhile (e.g. deleted by an operator)

    def may_start(self) -> bool:
        return True  # the claim is held here: the flock and the rename fence it

    def record(self, item: HMail, outcome: Outcome) -> None:
        record(self.spool, item, outcome, self.settings)

    def fail_all(self, item: HMail, reply: Reply, outcome: Outcome) -> None:
        fail_all(self.spool, item, reply, outcome, self.settings)

    def fail_each(self, items: list[HMail], exc: DeliveryError) -> None:
        fail_each(self.spool, items, exc, self.settings)

    def crashed(self, item: HMail, exc: BaseException, outcome: Outcome | None = None) -> None:
        crashed(self.spool, item, exc, self.settings, outcome)

    def give_back(self, items: list[HMail], due_ms: int | None = None, why: str = "") -> int:
        return give_back(self.spool, items, due_ms or now_ms(), why)

    def open_feed(self) -> bool:
        """Let the queue manager feed this claim while it sends (mailflow/queue/feed.py):
        only when the route is the whole claim (another route's entries go elsewhere)."""
        claim = self.route.batch.claim
        if any(str(n) not in self._seen for n in self.spool.claim_names(claim)):
            return False
        return feed.open_feed(self.spool, claim)

    def more(self) -> list[HMail]:
        """The entries fed into the claim since the last look, each through the hooks a
        lookup calls; one that goes another way is given back (due now) and the feed is
        closed, so that it is not fed back in while this batch runs."""
        claim = self.route.batch.claim
        new = [str(n) for n in self.spool.claim_names(claim) if str(n) not in self._seen]
        self._seen.update(new)
        taken: list[HMail] = []
        answers: dict[str, Any] = {}  # the lookup's DNS answers, one per domain of this look
        cfg = config.current()
        for hmail in load(self.spool, self.route.batch, new):
            fits = same_way(self.spool, self.route, hmail, cfg, answers)
            if fits:
                taken.append(hmail)
            elif fits is not None:
                self.close_feed()
                give_back(self.spool, [hmail], now_ms())
        return taken

    def close_feed(self) -> None:
        feed.close_feed(self.spool, self.route.batch.claim)


class LockedLedger:
    """A ledger shared by a batch's lanes: one call at a time (records are renames and
    small writes, the network is where the time goes)."""

    def __init__(self, ledger: Ledger):
        self._ledger, self._lock = ledger, threading.Lock()
        self.domain = ledger.domain

    def __getattr__(self, name: str) -> Any:
        """The ledger's method under the lock, made once per name (then found directly)."""
        method = getattr(self._ledger, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)
        setattr(self, name, locked)
        return locked


class Courier:
    """One batch's messages, over one session -- or, when the receiver is slow, over as
    many parallel sessions (*lanes*) as its connection limits allow.

    A fast receiver keeps the economy of one connection for the whole batch.  One that
    takes SLOW_MESSAGE or more per message would make a batch of 50 last a minute over
    one connection while the limits allow many: after such a message the rest of the
    batch is shared with extra lanes, each a thread with a session of its own from the
    pool (no waiting for a slot, and no closing another destination's idle session: a
    lane that gets none ends at once), taking the next message as it is free.  Room
    frees as other batches end and their connections close, so the batch looks again
    after each message it sends and takes what is free then -- once a lane found its
    addresses full, only as far as the pool says room has freed there (Pool.spare).  A
    destination found slow is remembered for a while (``KNOWN_SLOW_FOR``): its next
    batches spread from their first message.  The batch still costs one MX lookup and
    one claim.

    Whatever happens -- a broken connection, a full disk while recording an outcome,
    an exception nobody planned for -- every session goes back to the pool or is
    discarded, so no connection slot is ever lost.
    """

    def __init__(self, cfg: Config, route: Route, session: Session | None, ledger: Ledger):
        self.cfg, self.settings, self.route = cfg, cfg.outbound, route
        self.ledger: Any = LockedLedger(ledger)
        self.first = Lane(self, session)
        self._todo: deque[Any] = deque()
        self._lock = threading.Lock()
        self._lanes: list[threading.Thread] = []
        self._counted: list[tuple[Counter[str], list[countdowns.Deferral]]] = []
        self._started = 0.0
        #: the receiver takes SLOW_MESSAGE or more per message: lanes are looked for
        self._slow = False
        #: the addresses where a lane last found no room: later lanes start only as room
        #: frees there (Pool.spare)
        self._full: frozenset[str] = frozenset()
        self.shaping = RouteShaping(cfg, route.domain, route.tenant)
        #: the MX hosts' key, which slowness is remembered under
        self.receiver = site_key(route.mx)
        #: the queue manager feeds the claim while it sends (mailflow/queue/feed.py)
        self._feeding = False
        #: the batch stopped early (entries handed back or held): nothing more is taken
        self._stopped = False

    @property
    def session(self) -> Session | None:
        return self.first.session

    def let_go(self) -> None:
        self.first.let_go()

    def run(self) -> None:
        self._todo = deque(self.ledger.items())
        self._started = time.monotonic()
        self._feeding = bool(self._todo) and self.ledger.open_feed()
        first = None
        if _KNOWN_SLOW.get(self.receiver, 0.0) > self._started and len(self._todo) > 1:
            # the first lane keeps its message for the session it already has; the rest
            # is shared from the start (else the lanes could take every message, leaving
            # that session to be closed unused)
            first = self._take()
            self._found_slow()
        try:
            while True:
                self._drive(self.first, first)
                first = None
                self._join_lanes()
                # a lane that lost its session put its message back; else what was fed
                if not self._todo and not self._refill():
                    return
        finally:
            self._join_lanes()
            if self._feeding:  # something unplanned stopped the batch: nothing more comes in,
                self._feeding = False  # and what came is due again at once, not at lease expiry
                self.ledger.close_feed()
                self.ledger.give_back(self.ledger.more())

    def _refill(self) -> bool:
        """Take what the queue manager fed into the claim while the batch sent; once
        nothing more came, close the feed and take what came before the close.  A batch
        that stopped early, or whose time is spent, gives what was fed back instead."""
        if not self._feeding:
            return False
        spent = time.monotonic() - self._started > BATCH_TIME_BUDGET
        if self._stopped or spent:
            self._feeding = False
            self.ledger.close_feed()
            rest = self.ledger.more()
            if rest:
                self.ledger.give_back(rest)
            return False
        more = self.ledger.more()
        if not more:
            self._feeding = False
            self.ledger.close_feed()
            more = self.ledger.more()
        if more:
            tally.count("fed", len(more))
        with self._lock:
            self._todo.extend(more)
        return bool(more)

    def _drive(self, lane: Lane, first: Any | None = None) -> None:
        """Send messages over ``lane`` until none is left (or the batch must stop), ``first``
        first when the lane took it before its session."""
        primary = lane is self.first
        for item in self._items(first):
            if not self.ledger.still_here(item):
                continue
            if time.monotonic() - self._started > BATCH_TIME_BUDGET:
                back = self.ledger.give_back([item, *self._take_all()])
                log.info("batch for %s out of time: %d entries due again", self.route.domain, back)
                return
            if not self.ledger.may_start():
                back = self.ledger.give_back([item, *self._take_all()])
                log.warning("batch for %s stopped at its lease's fence: %d entries handed back",
                            self.route.domain, back)
                return
            if not lane.ready():
                if primary:
                    self._none_for([item, *self._take_all()], lane.why)
                else:  # the other lanes, or the first, will send it
                    with self._lock:
                        self._todo.appendleft(item)
                return
            if self.shaping.watching and not self._shaped(lane, item):
                return
            if lane.session is not None and lane.session.source and not self._warm(lane, item):
                return
            warming = self._warming(lane)
            took = time.monotonic()
            lane.last = None
            try:
                lane.send_one(item)
            except Exception as exc:  # the session's state is unknown: never reuse it
                outcome = outcome_of(lane.session) if lane.session is not None else None
                lane.discard()
                self.ledger.crashed(item, exc, outcome)
            if warming is not None and not accepted(lane.last):
                warmup.give_back(*warming)  # a deferral's retry must not count twice
            if lane.last is not None:
                SAMPLER.attempt(self.shaping.destination(lane.last.host, lane.last_source),
                                time.monotonic() - took)
            if self.shaping.watching and lane.session is not None and lane.last is not None:
                pause = self.shaping.after(lane.session, lane.last)
                if pause > 0:
                    self._hold([*self._take_all()], pause, "suspended", self._rules(lane.session))
                    return
            if self._yields(lane):
                if primary:  # the lanes yield too; what none of them took is due again
                    self._join_lanes()
                    self._hand_back_for_others()
                return
            if primary and not self._slow and time.monotonic() - took >= SLOW_MESSAGE:
                self._found_slow()
            elif primary and self._slow:
                self._spread(LANES_PER_LOOK)  # room another batch or connection left

    def _yields(self, lane: Lane) -> bool:
        """Whether ``lane`` has had its time slice and a batch of another turn waits for
        a slot at its address (TURN_QUANTUM)."""
        session = lane.session
        return (session is not None and time.monotonic() - lane.since >= TURN_QUANTUM
                and POOL.owes_room(session.key.ip, self.route.turn))

    def _hand_back_for_others(self) -> None:
        rest = self._take_all()
        if rest:
            back = self.ledger.give_back(rest)
            log.info("batch for %s gives its connection up to mail waiting for one: %d entries "
                     "due again", self.route.domain, back)

    def _shaped(self, lane: Lane, item: Any) -> bool:
        """Whether ``item`` may go now under shaping.ini; if not, it and the rest wait."""
        assert lane.session is not None
        wait = self.shaping.before(lane.session, self._left() + 1)
        if wait == NEW_CONNECTION:  # max_messages_per_connection: QUIT, and a fresh one in its slot
            try:
                lane.session = POOL.reopen(lane.session, settings=self.settings,
                                           tls=self.cfg.tls_outbound, domain=self.route.domain)
                wait = self.shaping.before(lane.session, self._left() + 1)
            except NextAddress:
                lane.session = None
                with self._lock:
                    self._todo.appendleft(item)
                return False
        if wait > 0:
            self._hold([item, *self._take_all()], wait, "throttled", self._rules(lane.session))
            return False
        return True

    def _warm(self, lane: Lane, item: Any) -> bool:
        """Whether ``item`` may go over the lane's source under its warm-up allowance; if
        not, the lane moves to the pool's next source with room, or the rest wait until the
        next UTC day (held, not failed)."""
        assert lane.session is not None
        try:
            other = warm(lane.session, self.route, self.cfg)
            if other is None:
                return True
            lane.session = POOL.reopen(lane.session, settings=self.settings, tls=self.cfg.tls_outbound,
                                       domain=self.route.domain, source=other)
        except Throttled as exc:
            self._hold([item, *self._take_all()], exc.wait, "held", exc.held_by)
            return False
        except NextAddress:
            lane.session = None
            with self._lock:
                self._todo.appendleft(item)
            return False
        return self._warm(lane, item)

    def _warming(self, lane: Lane) -> tuple[Source, datetime.date] | None:
        """The warming source whose allowance the next message over ``lane`` has just taken
        (``_warm``), and the day it counts on."""
        name = lane.session.source if lane.session is not None else None
        source = self.cfg.egress.sources.get(name) if name else None
        return (source, warmup.today()) if source is not None and source.warmup else None

    def _rules(self, session: Session) -> str:
        """The rules over ``session``'s destination, as a hold names them."""
        return hold_reason(self.shaping.matched(session.host, session.key.bind))

    def _hold(self, items: list[Any], wait: float, why: str, held_by: str) -> None:
        back = self.ledger.give_back(items, now_ms() + int(wait * 1000), held_by)
        log.info("shaping: %d entries for %s %s, due again in %.0f s", back, self.route.domain, why, wait)

    def _left(self) -> int:
        with self._lock:
            return len(self._todo)

    def _items(self, first: Any | None) -> Iterator[Any]:
        if first is not None:
            yield first
        while (item := self._take()) is not None:
            yield item

    def _take(self) -> Any | None:
        with self._lock:
            return self._todo.popleft() if self._todo else None

    def _take_all(self) -> list[Any]:
        """The rest of the batch, for handing back or holding: the batch stops here."""
        with self._lock:
            rest, self._todo = list(self._todo), deque()
            self._stopped = True
        return rest

    def _none_for(self, rest: list[Any], why: BaseException | None) -> None:
        """The first lane has no session: the rest of the batch gets its outcome now."""
        if isinstance(why, Throttled):  # not a failure: due when the rule allows
            self._hold(rest, why.wait, "throttled", why.held_by)
        elif isinstance(why, NoSlot):  # never wait for a slot in a worker thread
            back = self.ledger.give_back(rest)
            log.info("no free connection slot for %s: %d entries due again", self.route.domain, back)
        elif isinstance(why, DeliveryError):
            self.ledger.fail_each(rest, why)
        else:
            for item in rest:
                self.ledger.crashed(item, why or RuntimeError("no session"))

    # -- lanes for a slow receiver --------------------------------------------------------

    def _found_slow(self) -> None:
        """A slow receiver: share the rest of the batch, and remember it for the next."""
        self._slow = True
        _remember_slow(self.receiver, time.monotonic())
        wanted = self._spread()
        if wanted:
            log.info("slow receiver for %s: %d more messages shared over up to as many more "
                     "connections", self.route.domain, wanted)

    def _spread(self, most: int | None = None) -> int:
        """Start a lane for each message waiting beyond those the running lanes will take,
        ``most`` at a time while the room is unknown (the pool's limits stop the excess),
        as many as the pool has room for once a lane found the addresses full; return how
        many started.  Only the first lane calls this: ``_lanes`` is its own."""
        self._lanes = [t for t in self._lanes if t.is_alive()]  # what they counted is kept
        with self._lock:
            wanted = len(self._todo) - len(self._lanes)
        if wanted > 0 and self._full:  # no lane that could only find no room, and no fewer
            wanted = min(wanted, POOL.spare(self._full, self.settings))  # than the room freed
        elif most is not None:
            wanted = min(wanted, most)
        for _ in range(wanted):
            thread = threading.Thread(target=self._extra_lane,
                                      name=f"lane-{self.route.domain}-{len(self._lanes)}", daemon=True)
            self._lanes.append(thread)
            thread.start()
        return max(wanted, 0)

    def _extra_lane(self) -> None:
        with tally.tallied() as counts, countdowns.collecting() as deferrals:
            lane = Lane(self, None, extra=True)
            try:
                # a message first, then a session for it: a lane never opens a connection
                # that the other lanes leave with nothing to send
                item = self._take()
                if item is not None and lane.ready():
                    self._drive(lane, item)
                elif item is not None:  # no room: the other lanes will send it
                    if isinstance(lane.why, NoSlot):
                        self._full = lane.why.ips
                    with self._lock:
                        self._todo.appendleft(item)
            except Exception:
                log.exception("a lane of the batch for %s stopped", self.route.domain)
            finally:
                lane.let_go()
        self._counted.append((counts, deferrals))

    def _join_lanes(self) -> None:
        """Wait for the lanes; what they counted and deferred becomes this task's."""
        for thread in self._lanes:
            thread.join()
        self._lanes = []
        for counts, deferrals in self._counted:
            tally.add(counts)
            countdowns.add(deferrals)
        self._counted = []


class Lane:
    """One session's share of a batch."""

    def __init__(self, courier: Courier, session: Session | None, extra: bool = False):
        self.courier, self.session = courier, session
        #: An extra lane uses spare room: it never closes another destination's idle
        #: session (at concurrency_max, that would trade one connection for another)
        self.extra = extra
        self.why: BaseException | None = None  #: why :meth:`ready` found no session
        self.last: Outcome | None = None  #: the outcome of the message it sent last
        self.last_source: str | None = None  #: the source address it was sent from
        self.since = time.monotonic()  #: when it began to send (its time slice)

    def let_go(self) -> None:
        if self.session is not None:
            POOL.release(self.session, self.courier.settings)
            self.session = None

    def discard(self) -> None:
        if self.session is not None:
            POOL.discard(self.session)
            self.session = None

    def ready(self) -> bool:
        """A session for the next message (False, with :attr:`why`, when there is none)."""
        c = self.courier
        if self.session is not None and c.settings.pool_timeout == 0 and self.session.messages:
            try:  # no pooling: a fresh connection per message, in the same slot
                self.session = POOL.reopen(self.session, settings=c.settings, tls=c.cfg.tls_outbound,
                                           domain=c.route.domain,
                                           source=next_source(self.session.target, c.route, c.cfg))
            except NextAddress:
                self.session = None
        if self.session is not None:
            return True
        try:
            self.session = session_for(c.route, c.cfg, evict=not self.extra)
            return True
        except Exception as exc:
            self.why = exc
        return False

    def send_one(self, item: Any) -> None:
        """Send one entry and record its outcome; the session is None afterwards if it broke."""
        c = self.courier
        mail_from, rcpts, message = c.ledger.envelope(item)
        dsn, requiretls = c.ledger.dsn(item), c.ledger.requires_tls(item)
        for retry in (False, True):
            session = self.session
            assert session is not None
            outcome = outcome_of(session)
            try:
                results = session.send(mail_from, rcpts, message, c.settings, dsn, requiretls)
            except EndOfDataTimeout:
                self.discard()
                c.ledger.fail_all(item, local_reply(
                    "4.4.2", "timeout waiting for the reply to the end of data"), outcome)
                return
            except (smtplib.SMTPException, OSError) as exc:
                self.discard()
                if retry or session.messages <= 1:
                    c.ledger.fail_all(item, local_reply(
                        "4.4.2", f"connection to {outcome.host} broke: {exc}"), outcome)
                    return
                # a pooled connection the remote end closed: replace it, do not fail the message
                try:
                    self.session = session_for(c.route, c.cfg)
                except DeliveryError as err:
                    c.ledger.fail_all(item, err.reply, outcome)
                    return
                continue
            outcome.results = {r.address: r.reply for r in results}
            outcome.dsn_taken = session.dsn_taken
            self.last, self.last_source = outcome, session.key.bind
            c.ledger.record(item, outcome)
            return
