"""The ``mailflow.transmit`` step: every message of a route over one session, outcomes recorded."""

from __future__ import annotations

import logging
import smtplib
import time

from mailflow import config
from mailflow.config.loader import Config
from mailflow.errors import DeliveryError, local_reply
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
    courier = Courier(config.current(), route, POOL.collect(ticket))
    try:
        here(courier.spool, route.batch)
        with holding(courier.spool, route.batch) as held:
            if held:
                courier.run()
        courier.spool.finish(route.batch.claim)
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


class Courier:
    """One batch's messages over one session; the session is always let go in the end.

    Whatever happens -- a broken connection, a full disk while recording an outcome,
    an exception nobody planned for -- the session goes back to the pool or is
    discarded, so its connection slot is never lost.
    """

    def __init__(self, cfg: Config, route: Route, session: Session | None):
        self.cfg, self.settings, self.route = cfg, cfg.outbound, route
        self.spool = Spool(cfg.queue_path())
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
        hmails = load(self.spool, self.route.batch)
        started = time.monotonic()
        for index, hmail in enumerate(hmails):
            if not hmail.path.exists():  # handled meanwhile (e.g. deleted by an operator)
                continue
            if time.monotonic() - started > BATCH_TIME_BUDGET:
                back = give_back(self.spool, hmails[index:], now_ms())
                log.info("batch for %s out of time: %d entries due again", self.route.domain, back)
                return
            if not self._ready(hmails[index:]):
                return
            try:
                self._send_one(hmail)
            except Exception as exc:  # the session's state is unknown: never reuse it
                outcome = outcome_of(self.session) if self.session is not None else None
                self.discard()
                crashed(self.spool, hmail, exc, self.settings, outcome)

    def _ready(self, rest: list[HMail]) -> bool:
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
            back = give_back(self.spool, rest, now_ms())
            log.info("no free connection slot for %s: %d entries due again", self.route.domain, back)
        except DeliveryError as exc:
            fail_each(self.spool, rest, exc, self.settings)
        except Exception as exc:
            for hmail in rest:
                crashed(self.spool, hmail, exc, self.settings)
        return False

    def _send_one(self, hmail: HMail) -> None:
        """Send one entry and record its outcome; the session is None afterwards if it broke."""
        message = hmail.message()
        rcpts = [r.address for r in hmail.todo.rcpt_to]
        for retry in (False, True):
            session = self.session
            assert session is not None
            outcome = outcome_of(session)
            try:
                results = session.send(hmail.todo.mail_from.address, rcpts, message, self.settings)
            except EndOfDataTimeout:
                self.discard()
                fail_all(self.spool, hmail, local_reply(
                    "4.4.2", "timeout waiting for the reply to the end of data"), outcome, self.settings)
                return
            except (smtplib.SMTPException, OSError) as exc:
                self.discard()
                if retry or session.messages <= 1:
                    fail_all(self.spool, hmail, local_reply(
                        "4.4.2", f"connection to {outcome.host} broke: {exc}"), outcome, self.settings)
                    return
                # a pooled connection the remote end closed: replace it, do not fail the message
                try:
                    self.session = session_for(self.route, self.cfg)
                except DeliveryError as err:
                    fail_all(self.spool, hmail, err.reply, outcome, self.settings)
                    return
                continue
            outcome.results = {r.address: r.reply for r in results}
            record(self.spool, hmail, outcome, self.settings)
            return
