"""``acquire_connection`` and ``transmit`` for a parcel, on a host that is not its owner.

This host has no copy of the owner's queue: the parcel carries the envelopes
and messages, and what becomes of each entry goes back to the owner as
``mailflow.record_outcomes`` tasks (:class:`RemoteLedger`), recorded there
(mailflow/queue/remote_outcomes.py).  The claim is held through the broker
(mailflow/relay/fence.py): no message starts past the fence; what was not
attempted is handed back.

A parcel taken by a worker of its owner's own host is done the direct way,
from the queue directory (mailflow/pipeline/acquire.py, transmit.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from mailflow.config.loader import Config
from mailflow.errors import DeliveryError, Reply, Throttled, local_reply
from mailflow.observation import tally
from mailflow.pipeline.acquire import payload_from, session_for, still_waiting
from mailflow.pipeline.transmit import Courier
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay.fence import HOLDINGS, Holding
from mailflow.relay.pool import POOL, SLOT_WAIT, NoSlot
from mailflow.wire.dsnparams import Dsn
from mailflow.wire.lease import clock
from mailflow.wire.payloads import Batch, Letter, Outcome, Parcel, RemoteOutcomes
from mailflow.wire.seal import SealError

log = logging.getLogger(__name__)

#: A holder reports what it has done at least this often (seconds), and at the end:
#: what a host that dies had done but not reported is at most this much work.
REPORT_EVERY = 1.0

Reporter = Callable[[RemoteOutcomes], None]
HandOn = Callable[[Parcel, str], None]
Again = Callable[[Parcel], None]


def owner_here(data: dict[str, Any], cfg: Config) -> bool:
    """Whether this host has the queue directory the payload's batch belongs to."""
    spool = Spool(cfg.queue_path())
    return spool.exists() and spool.identity == data.get("owner")


def parcel_from(data: dict[str, Any], cfg: Config, task: str, report: Reporter, holder: str) -> Parcel:
    """The parcel a task was given; NothingToDo when it is malformed (a log line), or after
    reporting its entries deferred when its get_mx password cannot be opened on this host."""
    def defer_all(batch: Batch, exc: SealError) -> None:
        letters = [Letter.from_json(x) for x in data.get("letters") or []]
        reply = local_reply("4.3.0", f"internal error: SealError: {exc}")
        report(RemoteOutcomes(batch=batch, holder=holder,
                      results={x.name: Outcome(results=dict.fromkeys(x.rcpt_to, reply)) for x in letters}))
    return payload_from(Parcel.from_json, data, cfg, task, defer_all)


class RemoteLedger:
    """A parcel's letters; outcomes gathered and reported to the owner, at least every
    REPORT_EVERY seconds.  A report the broker will not take stops the courier (the fence)."""

    def __init__(self, parcel: Parcel, holding: Holding, report: Reporter, holder: str):
        self.parcel, self.holding, self.report, self.holder = parcel, holding, report, holder
        self.domain = parcel.route.domain
        self.results: dict[str, Outcome] = {}
        self.back: list[str] = []
        self.back_due_ms = 0  #: when what is handed back is due (0: now), a shaping rule's wait
        self.back_why = ""  #: the rule that held it back (``shaping:domain:x``)
        self.reported: set[str] = set()  #: names already in a report the broker took
        self.cut_off = False
        self._last_report = clock()

    def items(self) -> list[Letter]:
        return list(self.parcel.letters)

    def envelope(self, item: Letter) -> tuple[str, list[str], bytes]:
        return item.mail_from, list(item.rcpt_to), item.message

    def requires_tls(self, item: Letter) -> bool:
        return item.requiretls

    def dsn(self, item: Letter) -> Dsn | None:
        """What the client asked to be told, as the owner lent it (the owner writes mailflow's
        own notices; the next hop is asked for its)."""
        return item.dsn

    def still_here(self, item: Letter) -> bool:
        return self._open(item.name)

    def _open(self, name: str) -> bool:
        """Neither attempted nor handed back yet."""
        return name not in self.results and name not in self.back and name not in self.reported

    def may_start(self) -> bool:
        return not self.cut_off and self.holding.may_start()

    def record(self, item: Letter, outcome: Outcome) -> None:
        self.results[item.name] = outcome
        tally.count(outcome.keyword())
        if clock() - self._last_report >= REPORT_EVERY:
            self.send(final=False)

    def fail_all(self, item: Letter, reply: Reply, outcome: Outcome) -> None:
        outcome.results = dict.fromkeys(item.rcpt_to, reply)
        self.record(item, outcome)

    def fail_each(self, items: list[Letter], exc: DeliveryError) -> None:
        for item in items:
            self.fail_all(item, exc.reply, Outcome(host=exc.host or "-", ip=exc.ip or "-"))

    def crashed(self, item: Letter, exc: BaseException, outcome: Outcome | None = None) -> None:
        log.error("unexpected error delivering %s: %s: %s (deferred)", item.name,
                  type(exc).__name__, exc, exc_info=exc)
        self.fail_all(item, local_reply("4.3.0", f"internal error: {type(exc).__name__}: {exc}"),
                      outcome or Outcome())

    def give_back(self, items: list[Letter], due_ms: int | None = None, why: str = "") -> int:
        names = [x.name for x in items if self._open(x.name)]
        self.back += names
        if due_ms:
            self.back_due_ms = max(self.back_due_ms, due_ms)
        if why:
            self.back_why = why
        tally.count("handed_back", len(names))
        return len(names)

    def open_feed(self) -> bool:
        return False  # a parcel is what it carries: the queue is on its owner's host

    def more(self) -> list[Letter]:
        return []

    def close_feed(self) -> None:
        pass

    def send(self, final: bool) -> None:
        """RemoteOutcomes what is not yet reported; on the final report, hand back the rest."""
        if final:
            self.give_back(list(self.parcel.letters))
        if not (self.results or self.back or final):
            return
        report = RemoteOutcomes(batch=self.parcel.batch, holder=self.holder, results=dict(self.results),
                        back=tuple(self.back), back_due_ms=self.back_due_ms,
                        back_why=self.back_why)
        try:
            self.report(report)
        except Exception as exc:
            self.cut_off = True
            log.error("could not report %d outcomes of claim %s to %s (%s): no new message starts; "
                      "%s", len(self.results), self.parcel.batch.claim, self.parcel.batch.owner, exc,
                      "they come back when its lease expires, delivered ones as possible duplicates"
                      if final else "trying again at the end of the batch")
            return
        self._last_report = clock()
        self.reported.update(self.results, self.back)
        self.results.clear()
        self.back.clear()
        self.back_due_ms = 0
        self.back_why = ""


def acquire_parcel(parcel: Parcel, cfg: Config, hand_on: HandOn, again: Again | None,
                   report: Reporter, holder: str) -> None:
    """A session for the parcel, parked for its transmit; or the letters' outcomes reported."""
    holding = HOLDINGS.take(parcel, hop=True)
    if holding is None:
        _too_late(parcel, report, holder)
        return
    ledger = RemoteLedger(parcel, holding, report, holder)
    letters = list(parcel.letters)
    try:
        session = session_for(parcel.route, cfg, wait=0.0 if again else SLOT_WAIT)
    except Throttled as exc:  # back to the owner, due when the rule allows
        ledger.give_back(letters, now_ms() + int(exc.wait * 1000), exc.held_by)
        _done(parcel, ledger)
        return
    except NoSlot as exc:
        waiting = still_waiting(parcel.route) if again is not None else None
        if again is not None and waiting is not None:
            POOL.wait_for_slot(exc.ips, lambda grant: again(dataclasses.replace(
                parcel, route=waiting.granted(grant))), cfg.outbound, turn=parcel.route.turn)
            return
        ledger.fail_each(letters, exc)
        _done(parcel, ledger)
        return
    except DeliveryError as exc:
        ledger.fail_each(letters, exc)
        _done(parcel, ledger)
        return
    except Exception as exc:
        for letter in letters:
            ledger.crashed(letter, exc)
        _done(parcel, ledger)
        return
    ticket = POOL.park(session)
    try:
        hand_on(parcel, ticket)
        tally.count("handed_on", len(parcel.batch.names))
        return
    except Exception:
        log.exception("could not hand the parcel for %s to transmit; handed back", parcel.route.domain)
    parked = POOL.collect(ticket)
    if parked is not None:
        POOL.release(parked, cfg.outbound)
    _done(parcel, ledger)


def transmit_parcel(parcel: Parcel, ticket: str | None, cfg: Config, report: Reporter,
                    holder: str) -> None:
    """Every letter of the parcel over the session parked under ``ticket`` (or a new one)."""
    session = POOL.collect(ticket)
    holding = HOLDINGS.take(parcel, hop=False)
    if holding is None:
        if session is not None:
            POOL.release(session, cfg.outbound)
        _too_late(parcel, report, holder)
        return
    if not parcel.letters:  # they came with acquire_connection and stayed on this worker
        if not holding.letters:
            if session is not None:
                POOL.release(session, cfg.outbound)
            HOLDINGS.let_go(parcel)
            _too_late(parcel, report, holder, "its letters are no longer on this worker")
            return
        parcel = dataclasses.replace(parcel, letters=holding.letters)
    ledger = RemoteLedger(parcel, holding, report, holder)
    courier = Courier(cfg, parcel.route, session, ledger)
    try:
        courier.run()
    finally:
        courier.let_go()
        _done(parcel, ledger)


def _done(parcel: Parcel, ledger: RemoteLedger) -> None:
    ledger.send(final=True)
    HOLDINGS.let_go(parcel)


def _too_late(parcel: Parcel, report: Reporter, holder: str,
              why: str = "it came after its fence") -> None:
    """The parcel cannot be started: its fence passed (it waited in the broker too long), or
    its letters are gone (the worker restarted between its steps)."""
    log.warning("parcel of claim %s for %s: %s; %d entries handed back unsent",
                parcel.batch.claim, parcel.route.domain, why, len(parcel.batch.names))
    try:
        report(RemoteOutcomes(batch=parcel.batch, holder=holder, back=parcel.batch.names))
    except Exception as exc:
        log.error("could not hand back claim %s (%s): it returns when its lease expires",
                  parcel.batch.claim, exc)
