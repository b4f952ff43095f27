"""The queue manager: turns due entries into destination batches (Postfix's qmgr(8)).

One thread per queue directory -- whichever mailflow process on the host
holds ``<queue>/.qmgr.lock`` (smtpd, ``mailflow run`` or a worker) -- scans
``pending/`` by name only, claims the due entries of each domain in batches
(a ``rename`` into ``active/``), one batch per domain in turn, and starts one
``mailflow.lookup_mx`` chain per batch.  It scans every second, at once when mail
is queued in its process, and within ``POLL_INTERVAL`` when ``pending/`` changes
(mail queued by another process);
wake-ups that come while a scan has just run are coalesced for up to
``SCAN_COALESCE`` seconds, so that a busy submission stream makes batches of
many entries (one task chain each) rather than one chain per message; an
entry whose wake-up was lost is simply found again by the next scan, and
the entries of a claim whose lease expired (its worker died, its broker
message was lost) are given back to ``pending/`` and attempted again.
While ``disabled`` is set in outbound.ini it claims nothing.

A scan lists ``pending/`` only when something may have become due: the
directory changed (its mtime: every arrival, deferral and flush is a rename
into it), the earliest deferred entry's time has come, or a minute has
passed.  A backlog of deferred entries then costs nothing between its retry
times (listing 100,000 names every second cost a quarter of a core).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url

from mailflow import config as configmod
from mailflow.config import environ
from mailflow.queue import countdowns, feed, holds, lending, submission
from mailflow.queue.claims import BROKER_RETRY_MS
from mailflow.queue.entry import EntryName
from mailflow.queue.identity import owner_queue
from mailflow.queue.inflight import TENANT_SEP, InFlight, flight_key
from mailflow.queue.sites import JOIN_MAX, NEWCOMERS, Sites, hosts_key
from mailflow.queue.spool import FAILED, PENDING, Spool, now_ms
from mailflow.runtime.application import app
from mailflow.wire.lease import LEASE_SECONDS
from mailflow.wire.names import ORDER
from mailflow.wire.payloads import BOUNCE, LOOKUP_MX, Batch

log = logging.getLogger(__name__)

SCAN_INTERVAL = 1.0
#: How often the lock holder looks at pending/'s mtime: mail queued by another process
#: (another smtpd node, ``mailflow send``) is seen this fast, for the price of a stat.
POLL_INTERVAL = 0.05
#: After a scan, further wake-ups wait this long: the price of a batch (four tasks) is then
#: shared by everything queued meanwhile, at the cost of at most this much latency.
SCAN_COALESCE = 0.1
#: Entries per batch: one MX lookup and one connection carry this many messages
#: (like Postfix's per-delivery recipient limit; $MAILFLOW_BATCH_MAX tunes it).
BATCH_MAX: int = environ.value("MAILFLOW_BATCH_MAX")
#: A directory mtime younger than this is not trusted to be final (timestamps are coarse:
#: a rename in the same clock tick as the last listing would not change it).
MTIME_SETTLE_NS = 2_000_000_000
#: List pending/ at least this often whatever its mtime says (clock steps, odd filesystems).
FULL_SCAN_MS = 60_000
#: At most this many entries in flight; the rest wait in pending/ (qmgr's bounded window).
ACTIVE_MAX = 5000
#: At most this many bytes of entries in flight: with worker hosts about, each claimed
#: message is also in the broker and in some worker's memory (mailflow/queue/lending.py).
ACTIVE_BYTES_MAX: int = environ.value("MAILFLOW_ACTIVE_BYTES_MAX")
#: The share of either window one destination may hold: the rest stays for the others.
DESTINATION_SHARE = 0.8
#: How often what the lookups learned of sites is cleared of what has expired (s).
SITES_EXPIRE_EVERY = 300.0
#: How often claims whose lease ran out are looked for (s): a tenth of a lease, 5 s at most.
#: Looking stats every live claim; at every scan (several a second under load, with a
#: hundred claims live) it was most of the queue manager's system calls.
EXPIRE_EVERY = min(5.0, LEASE_SECONDS / 10)
#: How a site's destination is told from a domain's (a domain has no colon outside the
#: brackets of an address literal).
SITE_PREFIX = "site:"
#: How often the claims fed while they send are counted again (s): they live for minutes.
RECOUNT_EVERY = 1.0
#: The destination of first-seen domains' few entries, claimed together (``_newcomers``):
#: never held for a batch in flight, each newcomer batch is a different set of domains.
NEWCOMERS_TURN = SITE_PREFIX + NEWCOMERS

#: A claim whose directory has not changed for this long (its lease renewed every 10 s,
#: a batch waiting for a connection slot every 20 s, a delivery unlinks an entry) no longer
#: holds its destination's new mail back (hold and fill): its worker may be gone.
HOLD_STALE = 45.0

#: Publish a batch to a task, by the task's name.
Publisher = Callable[[str, Batch], None]

#: The managers running in this process (flush wakes them at once).
RUNNING: list[QueueManager] = []


def nudge_all() -> None:
    for manager in list(RUNNING):
        manager.nudge()


def _publish(task: str, batch: Batch) -> None:
    """To the owner's own queue: only the workers of this host can do a step of its batches."""
    app.send_task(task, args=[batch.to_json()], argsrepr=batch.shown(),
                  queue=owner_queue(batch.owner))


def _probe() -> None:
    """Connect to the broker once; an exception says it cannot be reached."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT)


class Unpublished(Exception):
    """The broker did not take a batch: it was given back, and this scan stops."""


#: Seconds a domain's mail must wait before it is claimed (a suspended shaping rule; 0: now),
#: and why (``shaping:domain:x``).
Held = Callable[[str], tuple[float, str]]


def _never_held(domain: str) -> tuple[float, str]:
    return 0.0, ""


#: How often, at most, an unreachable broker is said again (s).
BROKER_SAY_EVERY = 60.0
#: How long the look at the broker at start may take (s).
PROBE_TIMEOUT = 10.0


class Fills:
    """Which turns have a live batch in flight, for one scan of hold and fill: ``counts``
    (claims in flight by turn) answers most turns; the claims of each turn are sorted out
    only when one has some, and a claim's directory is looked at (its mtime) only then,
    once a scan."""

    def __init__(self, manager: QueueManager, turn_of: dict[str, str], counts: Counter[str]):
        self.manager, self.turn_of, self.counts = manager, turn_of, counts
        self._claims: dict[str, list[str]] | None = None
        self._claimed_now: set[str] = set()
        #: each turn's live claims found this scan, with their directories' mtimes
        self._live: dict[str, list[tuple[str, int]]] = {}

    def claimed(self, turn: str) -> None:
        """This scan claimed a batch of ``turn``: it is live."""
        self._claimed_now.add(turn)

    def live(self, turn: str) -> bool:
        if turn in self._claimed_now:
            return True
        return bool(self._live_claims(turn))

    def _live_claims(self, turn: str) -> list[tuple[str, int]]:
        """The turn's claims renewed within ``HOLD_STALE``, with their directories' mtimes."""
        if not self.counts[turn]:
            return []
        if turn in self._live:
            return self._live[turn]
        if self._claims is None:
            self._claims = defaultdict(list)
            for claim, keys in self.manager.in_flight.keys_by_claim():
                for key in keys:
                    self._claims[self.manager.turn(key, self.turn_of)].append(claim)
        active, now_ns, found = str(self.manager.spool.active), time.time_ns(), []
        for claim in self._claims.get(turn, ()):
            try:
                mtime_ns = os.stat(os.path.join(active, claim)).st_mtime_ns
            except FileNotFoundError:
                continue
            if now_ns - mtime_ns < HOLD_STALE * 1e9:
                found.append((claim, mtime_ns))
        self._live[turn] = found
        return found

    def open_claim(self, turn: str) -> tuple[str, int] | None:
        """A live claim of the turn whose transmit takes more entries as it sends (feed.py),
        and how many more it may take: what it holds and what is fed stay within a batch
        (``BATCH_MAX``), so that a backlog that grows past that is claimed as batches of
        their own, over connections of their own, not queued behind one."""
        spool = self.manager.spool
        for claim, mtime_ns in self._live_claims(turn):
            if feed.is_open(spool, claim):
                left = BATCH_MAX - self.manager.entries_in(claim, mtime_ns)
                if left > 0:
                    return claim, left
        return None


class QueueManager:
    def __init__(self, cfg: configmod.Config, publish: Publisher = _publish, held: Held = _never_held,
                 probe: Callable[[], None] | None = None):
        self.cfg = cfg
        self.publish = publish
        #: a look at the broker: at start, and once a minute while it is away (by default, the
        #: real broker's when batches go to it)
        self.probe = probe if probe is not None else _probe if publish is _publish else None
        #: asked before a domain's due entries are claimed (mailflow/pipeline/shaping.py)
        self.held = held
        self.spool = Spool(cfg.queue_path()).ensure()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        # what the last complete listing of pending/ saw (see quiet())
        self._listed_mtime_ns: int | None = None
        #: the due entries of the last listing, by file name: a backlog that stays due is
        #: listed again at every scan, and parsing its names each time cost more than the rest
        #: of the scan (only due ones are kept: a deferred backlog holds no memory for this)
        self._due_names: dict[str, EntryName] = {}
        self._next_due_ms = 0
        self._listed_at_ms = 0
        self._thread: threading.Thread | None = None
        #: the entries and bytes of the live claims, by domain
        self.in_flight = InFlight(self.spool)
        #: the site each domain was last found to share with others (the lookups say)
        self.sites = Sites(self.spool.root)
        self._sites_expired_at = time.monotonic()
        #: the claims this manager fed (feed.py), counted again every RECOUNT_EVERY
        self._fed: set[str] = set()
        #: how many entries each open claim held when its directory had the mtime kept
        self._sizes: dict[str, tuple[int, int]] = {}
        self._recounted_at = time.monotonic()
        self._expired_at = -EXPIRE_EVERY  #: when claims were last looked at for lapsed leases
        #: entries whose countdown retry is armed: left to it until due + grace
        self._armed = countdowns.Armed(self.spool)
        #: since when the broker refuses what we publish, and when that was last said
        self._broker_down_since: float | None = None
        self._said_paused = False
        #: the last scan held some destination's mail for its batch in flight, and what
        #: active/'s mtime was before it listed the claims (see held_back())
        self._holding = False
        self._active_seen_ns: int | None = None
        #: loops of the manager's thread so far (a test waits for one to have passed)
        self.scans = 0
        self._broker_said_at = 0.0

    def _broker_unreachable(self, exc: Exception) -> None:
        """One WARNING when the broker cannot be reached or stops taking batches, then one a
        minute while it lasts: mail is still accepted meanwhile (the queue is the record)."""
        now = time.monotonic()
        if self._broker_down_since is None:
            self._broker_down_since = now
        elif now - self._broker_said_at < BROKER_SAY_EVERY:
            return
        self._broker_said_at = now
        log.warning("the broker %s cannot be reached (%s: %s) for %.0f s now: mail is still accepted "
                    "and kept in the queue, tried again every %d s (said once a minute while it "
                    "lasts)", maybe_sanitize_url(app.conf.broker_url), type(exc).__name__, exc,
                    now - self._broker_down_since, BROKER_RETRY_MS // 1000)

    def _paused(self, disabled: bool) -> bool:
        """outbound.ini's ``disabled``: said once when delivery stops, once when it resumes."""
        if disabled != self._said_paused:
            self._said_paused = disabled
            if disabled:
                log.warning("delivery paused (outbound.ini disabled = true): mail is accepted and "
                            "kept in %s until it is set back", self.spool.root)
            else:
                log.info("delivery resumed (outbound.ini disabled = false)")
        return disabled

    def _broker_back(self) -> None:
        if self._broker_down_since is not None:
            log.warning("the broker can be reached again after %.0f s",
                        time.monotonic() - self._broker_down_since)
            self._broker_down_since = None

    def _look_at_broker(self) -> None:
        """At start, and once a minute while it is away: an empty queue publishes nothing, so
        without a look of its own an unreachable broker would go unsaid until mail arrives."""
        if self.probe is None:
            return
        try:
            self.probe()
        except Exception as exc:
            self._broker_unreachable(exc)
        else:
            self._broker_back()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> QueueManager:
        submission.after_queue.append(self._queued)
        RUNNING.append(self)
        self._thread = threading.Thread(target=self._run, daemon=True, name="mailflow-qmgr")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self in RUNNING:
            RUNNING.remove(self)
        if self._thread is not None:
            self._thread.join(10)
        if self._queued in submission.after_queue:
            submission.after_queue.remove(self._queued)

    def nudge(self) -> None:
        self._wake.set()

    def _queued(self, spool: Spool, names: list[EntryName]) -> None:
        self._wake.set()

    def _has_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(Path(self.spool.root) / ".qmgr.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        log.info("queue manager for %s runs in pid %d", self.spool.root, os.getpid())
        return True

    def _pending_moved(self) -> bool:
        """pending/ changed since it was last listed (by anyone: it is the queue's contract)."""
        return self._lock_fd is not None and self._pending_mtime_ns() != self._listed_mtime_ns

    def _run(self) -> None:
        last_scan = 0.0
        looked: float | None = None
        while not self._stop.is_set():
            if self._has_lock() and (looked is None or (self._broker_down_since is not None and
                                                        time.monotonic() - looked >= BROKER_SAY_EVERY)):
                looked = time.monotonic()
                self._look_at_broker()
            woke = self._wake.wait(POLL_INTERVAL)
            if not (woke or self._pending_moved() or self.held_back()
                    or time.monotonic() - last_scan >= SCAN_INTERVAL):
                continue
            last_scan = time.monotonic()
            # coalesce: what is queued during this pause joins the same batches
            self._stop.wait(SCAN_COALESCE)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._has_lock():
                    self.expire_lapsed()
                    if not self._paused(self.cfg.outbound.disabled):
                        self.scan()
            except Exception:
                log.exception("queue scan failed")
            self.scans += 1

    # -- the work ----------------------------------------------------------------------

    def expire_lapsed(self) -> int:
        """Give back the entries of claims whose lease ran out, looking at most every
        ``EXPIRE_EVERY`` seconds; return how many went back."""
        if time.monotonic() - self._expired_at < EXPIRE_EVERY:
            return 0
        self._expired_at = time.monotonic()
        feed.sweep(self.spool)  # the markers of claims whose transmit died
        return self.spool.expire(LEASE_SECONDS, spare=lending.spare(self.spool, LEASE_SECONDS))

    def _pending_mtime_ns(self) -> int | None:
        return self._mtime_ns(self.spool.pending)

    @staticmethod
    def _mtime_ns(directory: Path) -> int | None:
        try:
            return os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return None

    def held_back(self) -> bool:
        """The last scan held a busy destination's mail for its batch in flight, and a claim has
        ended since (a claim's directory leaving ``active/`` changes its mtime): scan now, so
        that the held mail follows its batch within ``POLL_INTERVAL``, not at the next
        ``SCAN_INTERVAL`` (which still catches a claim that ended while the scan ran)."""
        return self._holding and self._mtime_ns(self.spool.active) != self._active_seen_ns

    def quiet(self, now: int, mtime_ns: int | None) -> bool:
        """True when the last listing of pending/ still holds: no entry can be due."""
        return (mtime_ns is not None and mtime_ns == self._listed_mtime_ns
                and time.time_ns() - mtime_ns > MTIME_SETTLE_NS
                and now < self._next_due_ms and now - self._listed_at_ms < FULL_SCAN_MS)

    def due(self) -> dict[str, list[EntryName]]:
        """Due entries by domain, oldest schedule first."""
        now = now_ms()
        mtime = self._pending_mtime_ns()  # before listing: a later change must not look seen
        by_domain: dict[str, list[EntryName]] = defaultdict(list)
        if self.quiet(now, mtime):
            return by_domain
        next_due = now + FULL_SCAN_MS
        armed = self._armed.until(now)
        known, self._due_names = self._due_names, {}
        for name in self.spool.names(PENDING, known):
            if name.next_attempt_ms <= now:
                self._due_names[str(name)] = name
                until = armed.get(str(name)) if armed else None
                if until is not None and until > now:  # its countdown comes first
                    next_due = min(next_due, until)
                    continue
                by_domain[name.domain].append(name)
            else:
                next_due = min(next_due, name.next_attempt_ms)
        for names in by_domain.values():
            names.sort(key=ORDER)
        if by_domain:  # some may be left unclaimed (no room): look again next time
            next_due = now
        self._listed_mtime_ns, self._next_due_ms, self._listed_at_ms = mtime, next_due, now
        return by_domain

    def _within_bytes(self, names: list[EntryName], room: int, alone: bool) -> dict[EntryName, int]:
        """The first of ``names`` that fit in ``room`` bytes, with their sizes (one at least
        when ``alone``, nothing of its kind in flight: a message larger than the window must
        still go)."""
        out: dict[EntryName, int] = {}
        for name in names:
            try:
                size = os.stat(self.spool.path(name)).st_size
            except FileNotFoundError:
                continue
            if size > room and (out or not alone):
                break
            out[name] = size
            room -= size
        return out

    def scan(self) -> int:
        """Claim and dispatch what is due; return how many entries were claimed."""
        self._holding = False
        try:
            return self._scan()
        finally:  # after this scan's own claims: those are not a batch ending (see held_back())
            self._active_seen_ns = self._mtime_ns(self.spool.active)

    def _scan(self) -> int:
        self.in_flight.refresh()
        self._recount_fed()
        if time.monotonic() - self._sites_expired_at > SITES_EXPIRE_EVERY:
            self._sites_expired_at = time.monotonic()
            self.sites.expire()
        active = Counter(self.in_flight.entries)
        room = ACTIVE_MAX - sum(active.values())
        claimed = 0
        now = now_ms()
        failed = sorted((n for n in self.spool.names(FAILED) if n.next_attempt_ms <= now), key=ORDER)
        try:
            for start in range(0, min(len(failed), room), BATCH_MAX):
                claim, got = self.spool.claim(failed[start:start + BATCH_MAX], source=FAILED)
                if got:
                    room -= len(got)
                    claimed += len(got)
                    self._dispatch(BOUNCE, Batch(self.spool.identity, claim, tuple(got)), FAILED)
            due: dict[str, list[EntryName]] = {}
            for domain, names in self.due().items():
                wait, why = self.held(domain)
                if wait > 0:  # not claimed at all: due again when the rule allows
                    self._reschedule(names, now + int(wait * 1000), why)
                else:
                    due[domain] = names
            if due:  # a first-seen domain's mail its lookup gave back is claimed with its site's
                self.sites.recheck_unknown()
            claimed += self._claim_in_turn(due, active, room)
        except Unpublished:
            pass
        return claimed

    def _claim_in_turn(self, due: dict[str, list[EntryName]], active: Counter[str], room: int) -> int:
        """Claim one batch of each due destination in turn, the longest-waiting first, round and
        round until the window is full (Postfix's qmgr serves destinations round robin): one
        domain's backlog never keeps a one-message domain waiting behind it.  No destination
        takes more than its share of the window, so that fresh mail for a quiet domain finds
        room at the next scan however slowly a large backlog drains.

        A destination is a domain, or the *site* that domains were last found to share
        (mailflow/queue/sites.py): a long tail of domains behind the same MX hosts is claimed
        as one destination, in batches of several domains.  Each tenant's mail for a
        destination takes turns of its own (the tenant is tagged in the entry's id), so one
        tenant's backlog never keeps another's due mail waiting; the window's share is the
        destination's, whoever's mail fills it.

        Hold and fill: while a turn has a batch in flight, its due mail is claimed only by
        whole batches (``BATCH_MAX``); what is fewer waits in pending/ for that batch to end
        and then goes as one batch (Postfix's qmgr keeps a busy destination's new mail in
        its active queue the same way).  A batch whose lease has not been renewed for
        ``HOLD_STALE`` holds nothing: its worker may have died, and its entries wait for
        the lease to expire, new mail need not.  Claiming each scan's trickle apart made
        batches of one or two messages to every busy domain -- three tasks, a claim, a
        lookup and often a connection each -- which cost more CPU than the messages."""
        due = self._by_site(due)
        turn_of: dict[str, str] = {}  # window key -> turn, worked out once per scan
        active = self._by_site_counts(active, turn_of)
        held = self._by_site_counts(Counter(self.in_flight.bytes), turn_of)
        bytes_room = ACTIVE_BYTES_MAX - sum(held.values())
        share, bytes_share = int(ACTIVE_MAX * DESTINATION_SHARE), int(ACTIVE_BYTES_MAX * DESTINATION_SHARE)
        fills = Fills(self, turn_of, self._by_site_counts(self.in_flight.claims, turn_of))
        turns = deque(sorted(due, key=lambda destination: due[destination][0]))
        claimed = 0
        while turns and room > 0 and bytes_room > 0:
            turn = turns.popleft()  # a destination, or one tenant's mail for it
            destination = turn.rpartition(TENANT_SEP)[2]
            names = due[turn]
            holding = (len(names) < BATCH_MAX and destination != NEWCOMERS_TURN
                       and fills.live(turn))  # see held_back()
            opened = fills.open_claim(turn) if holding else None
            if holding and opened is None:
                self._holding = True
                continue
            into, most = opened if opened is not None else (None, BATCH_MAX)
            count = min(most, room, share - active[turn])
            fitting = self._within_bytes(names[:count], min(bytes_room, bytes_share - held[turn]),
                                         alone=not held) if count > 0 else {}
            if not fitting:  # this destination has its share of the window: the others go on
                continue
            del names[:len(fitting)]
            if into is not None:  # its batch in flight takes them as it sends (feed.py)
                moved = set(feed.feed(self.spool, into, list(fitting)))
                self._sizes.pop(into, None)  # its mtime may not have moved within the tick
                names[:0] = [n for n in fitting if n not in moved]  # held, as before
                self._holding = self._holding or len(moved) < len(fitting)
                fed = self._count_in(into, {n: size for n, size in fitting.items() if n in moved})
                self._fed.add(into)
                held[turn] += fed
                bytes_room -= fed
                room -= len(moved)
                active[turn] += len(moved)
                claimed += len(moved)
                continue
            claim, got = self.spool.claim(list(fitting))
            sizes = {str(n): size for n, size in fitting.items()}
            entries, flying, by_size = Counter[str](), Counter[str](), Counter[str]()
            for name in fitting:
                if str(name) in got:
                    entries[name.domain] += 1
                    flying[flight_key(name)] += 1
                    by_size[flight_key(name)] += sizes[str(name)]
            self.in_flight.add(claim, flying, by_size)
            size = sum(by_size.values())
            held[turn] += size
            bytes_room -= size
            if got:
                fills.claimed(turn)
                room -= len(got)
                active[turn] += len(got)
                claimed += len(got)
                self._dispatch(LOOKUP_MX, self._batch(claim, tuple(got), destination, entries), PENDING)
            if names:
                turns.append(turn)
        return claimed

    def entries_in(self, claim: str, mtime_ns: int) -> int:
        """How many entries ``claim`` holds, listed again only when its directory changed since
        (an entry delivered, deferred, fed or given back, a lease renewed): a busy
        destination's held mail asks at every scan, and listing each of its open claims ten
        times a second was a third of the queue manager's time with 200 destinations busy."""
        known = self._sizes.get(claim)
        if known is not None and known[0] == mtime_ns:
            return known[1]
        if len(self._sizes) > 2 * len(self.in_flight) + 64:  # forget the claims that ended
            self._sizes = {c: v for c, v in self._sizes.items() if c in self.in_flight}
        count = sum(1 for _ in self.spool.claim_names(claim))
        self._sizes[claim] = (mtime_ns, count)
        return count

    def _recount_fed(self) -> None:
        """The window counts what the fed claims hold now, not all they ever took."""
        if time.monotonic() - self._recounted_at < RECOUNT_EVERY:
            return
        self._recounted_at = time.monotonic()
        live = set(self.spool.claims())
        self._fed &= live
        for claim in self._fed:
            self.in_flight.recount(claim)

    def _count_in(self, claim: str, sizes: dict[EntryName, int]) -> int:
        """Entries fed into a claim in flight count in the window as its own; their bytes."""
        flying, by_size = Counter[str](), Counter[str]()
        for name, size in sizes.items():
            flying[flight_key(name)] += 1
            by_size[flight_key(name)] += size
        self.in_flight.grow(claim, flying, by_size)
        return sum(by_size.values())

    def _destination(self, domain: str) -> str:
        site = self.sites.of(domain, self._routed)
        return SITE_PREFIX + site if site else domain

    def _routed(self, domain: str) -> str | None:
        """The site of a domain that routes.ini or relay_host sends to fixed hosts: known
        before any lookup (a smarthost's mail is one site from the first message)."""
        route = self.cfg.route_for(domain)
        if route is None:
            return None
        port = self.cfg.outbound.mx_port
        return hosts_key((host, n, p or port) for n, (host, p) in enumerate(route.via))

    def _by_site(self, due: dict[str, list[EntryName]]) -> dict[str, list[EntryName]]:
        """Due entries by destination -- the domains of one site together, newcomers
        together (``_newcomers``), each tenant's apart (``<tag>|<destination>``), oldest
        first."""
        merged: dict[str, list[EntryName]] = defaultdict(list)
        newcomer = self._newcomers(due)
        for domain, names in due.items():
            destination = NEWCOMERS_TURN if domain in newcomer else self._destination(domain)
            for name in names:
                tag = name.tenant_tag
                merged[f"{tag}{TENANT_SEP}{destination}" if tag else destination].append(name)
        for names in merged.values():
            names.sort(key=ORDER)
        return merged

    def _newcomers(self, due: dict[str, list[EntryName]]) -> set[str]:
        """The due domains whose site is not known (no lookup has written it down, and no
        route names their hosts), with a few entries each and none in flight: a long tail's
        first messages.  They are claimed together, a batch of many domains for one lookup,
        which learns their sites and sends their mail on with its site's (the lookup step)."""
        flying = {key.rpartition(TENANT_SEP)[2] for key in self.in_flight.entries}
        return {domain for domain, names in due.items()
                if len(names) <= JOIN_MAX and domain not in flying and not domain.startswith("[")
                and self.sites.of(domain, self._routed) is None}

    def _by_site_counts(self, counts: Counter[str], turn_of: dict[str, str]) -> Counter[str]:
        """Window counts by turn: by destination, each tenant's apart (inflight.flight_key);
        ``turn_of`` keeps what each key's turn was found to be."""
        merged: Counter[str] = Counter()
        for key, n in counts.items():
            merged[self.turn(key, turn_of)] += n
        return merged

    def turn(self, key: str, turn_of: dict[str, str]) -> str:
        """The turn a window key (inflight.flight_key) counts under, kept in ``turn_of``."""
        turn = turn_of.get(key)
        if turn is None:
            tag, sep, domain = key.rpartition(TENANT_SEP)
            turn = turn_of[key] = f"{tag}{sep}{self._destination(domain)}"
        return turn

    def _batch(self, claim: str, names: tuple[str, ...], destination: str, domains: Counter[str]) -> Batch:
        """A domain's batch, or a site's when it holds entries of more than one domain."""
        if len(domains) == 1:
            return Batch(self.spool.identity, claim, names, next(iter(domains)))
        return Batch(self.spool.identity, claim, names, site=destination.removeprefix(SITE_PREFIX))

    def _reschedule(self, names: list[EntryName], due_ms: int, why: str) -> None:
        """Due entries of a held domain wait in pending/ until ``due_ms``, not counted as failures."""
        moved = []
        for name in names:
            try:
                os.rename(self.spool.path(name), self.spool.path(name.rescheduled(due_ms)))
            except FileNotFoundError:
                continue
            moved.append(name.rescheduled(due_ms))
        holds.record(self.spool.root, moved, due_ms, why)

    def _dispatch(self, task: str, batch: Batch, source: str) -> None:
        """Publish one batch; if the broker will not take it, its entries go back at once.

        Otherwise they would sit in their claim until its lease expired (minutes).
        """
        try:
            self.publish(task, batch)
            self._broker_back()
        except Exception as exc:
            due = now_ms() + BROKER_RETRY_MS
            directory = self.spool.claim_dir(batch.claim)
            for name in batch.names:
                parsed = EntryName.parse(name)
                if parsed is None:
                    continue
                try:
                    os.rename(directory / name, self.spool.path(parsed.rescheduled(due), source))
                except FileNotFoundError:
                    continue
            self.spool.finish(batch.claim)
            self._broker_unreachable(exc)
            raise Unpublished from exc
