"""The ``mailflow.transmit`` step: every message of a route over one session, outcomes recorded."""

from __future__ import annotations

import logging
import smtplib
import time
from typing import Any, Protocol

from mailflow import config
from mailflow.config.loader import Config
from mailflow.config.settings import Outbound
from mailflow.errors import DeliveryError, Reply, local_reply
from mailflow.payloads import Outcome, Route
from mailflow.pipeline.acquire import session_for
from mailflow.queue.claims import give_back, gone, here, holding, load
from mailflow.queue.hmail import HMail
from mailflow.queue.outcomes import crashed, fail_all, fail_each, record
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay.client import EndOfDataTimeout, NextAddress, Session
from mailflow.relay.pool import POOL, NoSlot

log = logging.getLogger(__name__)

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


def outcome_of(session: Session) -> Outcome:
    return Outcome(host=session.host, ip=session.target.ip, port=session.target.port,
                   mode="LMTP" if session.key.lmtp else "SMTP", secured=session.secured,
                   authenticated=session.authenticated)


class Ledger(Protocol):
    """Where a courier's entries come from and its outcomes go.

    :class:`LocalLedger` is the queue directory on this host; a holder on another host
    keeps one that reports to the owner (mailflow/pipeline/parcels.py).  Items are
    whatever the ledger hands out (an HMail here, a Letter there).
    """

    domain: str

    def items(self) -> list[Any]: ...
    def envelope(self, item: Any) -> tuple[str, list[str], bytes]: ...
    def still_here(self, item: Any) -> bool: ...
    def may_start(self) -> bool: ...
    def record(self, item: Any, outcome: Outcome) -> None: ...
    def fail_all(self, item: Any, reply: Reply, outcome: Outcome) -> None: ...
    def fail_each(self, items: list[Any], exc: DeliveryError) -> None: ...
    def crashed(self, item: Any, exc: BaseException, outcome: Outcome | None = None) -> None: ...
    def give_back(self, items: list[Any]) -> int: ...


class LocalLedger:
    """The entries of a claim in this host's queue directory; outcomes recorded there."""

    def __init__(self, spool: Spool, route: Route, settings: Outbound):
        self.spool, self.route, self.settings = spool, route, settings
        self.domain = route.domain

    def items(self) -> list[HMail]:
        return load(self.spool, self.route.batch)

    def envelope(self, item: HMail) -> tuple[str, list[str], bytes]:
        return item.todo.mail_from.address, [r.address for r in item.todo.rcpt_to], item.message()

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

    def give_back(self, items: list[HMail]) -> int:
        return give_back(self.spool, items, now_ms())


class Courier:
    """One batch's messages over one session; the session is always let go in the end.

    Whatever happens -- a broken connection, a full disk while recording an outcome,
    an exception nobody planned for -- the session goes back to the pool or is
    discarded, so its connection slot is never lost.
    """

    def __init__(self, cfg: Config, route: Route, session: Session | None, ledger: Ledger):
        self.cfg, self.settings, self.route = cfg, cfg.outbound, route
        self.ledger = ledger
        self.session = session

    def let_go(self) -> None:
        if self.session is not None:
            POOL.release(self.session, self.settings)
            self.session = None

    def discard(self) -> None:
        if self.session is not None:
            POOL.discard(self.session)
            self.session = None

    def run(self) -> None:
        items = self.ledger.items()
        started = time.monotonic()
        for index, item in enumerate(items):
            if not self.ledger.still_here(item):
                continue
            if time.monotonic() - started > BATCH_TIME_BUDGET:
                back = self.ledger.give_back(items[index:])
                log.info("batch for %s out of time: %d entries due again", self.route.domain, back)
                return
            if not self.ledger.may_start():
                back = self.ledger.give_back(items[index:])
                log.warning("batch for %s stopped at its lease's fence: %d entries handed back",
                            self.route.domain, back)
                return
            if not self._ready(items[index:]):
                return
            try:
                self._send_one(item)
            except Exception as exc:  # the session's state is unknown: never reuse it
                outcome = outcome_of(self.session) if self.session is not None else None
                self.discard()
                self.ledger.crashed(item, exc, outcome)

    def _ready(self, rest: list[Any]) -> bool:
        """A session for the next message; False when the rest of the batch was dealt with."""
        if self.session is not None and self.settings.pool_timeout == 0 and self.session.messages:
            try:  # no pooling: a fresh connection per message, in the same slot
                self.session = POOL.reopen(self.session, settings=self.settings, tls=self.cfg.tls_outbound,
                                           domain=self.route.domain)
            except NextAddress:
                self.session = None
        if self.session is not None:
            return True
        try:
            self.session = session_for(self.route, self.cfg)
            return True
        except NoSlot:  # never wait for a slot in a worker thread: the queue manager brings them back
            back = self.ledger.give_back(rest)
            log.info("no free connection slot for %s: %d entries due again", self.route.domain, back)
        except DeliveryError as exc:
            self.ledger.fail_each(rest, exc)
        except Exception as exc:
            for item in rest:
                self.ledger.crashed(item, exc)
        return False

    def _send_one(self, item: Any) -> None:
        """Send one entry and record its outcome; the session is None afterwards if it broke."""
        mail_from, rcpts, message = self.ledger.envelope(item)
        for retry in (False, True):
            session = self.session
            assert session is not None
            outcome = outcome_of(session)
            try:
                results = session.send(mail_from, rcpts, message, self.settings)
            except EndOfDataTimeout:
                self.discard()
                self.ledger.fail_all(item, local_reply(
                    "4.4.2", "timeout waiting for the reply to the end of data"), outcome)
                return
            except (smtplib.SMTPException, OSError) as exc:
                self.discard()
                if retry or session.messages <= 1:
                    self.ledger.fail_all(item, local_reply(
                        "4.4.2", f"connection to {outcome.host} broke: {exc}"), outcome)
                    return
                # a pooled connection the remote end closed: replace it, do not fail the message
                try:
                    self.session = session_for(self.route, self.cfg)
                except DeliveryError as err:
                    self.ledger.fail_all(item, err.reply, outcome)
                    return
                continue
            outcome.results = {r.address: r.reply for r in results}
            self.ledger.record(item, outcome)
            return
