"""``mailflow.transmit``: every message of the batch over one session, outcomes recorded."""

from __future__ import annotations

import logging
import smtplib
import time
from typing import Any

from mailflow import app, config
from mailflow.batch import accepted, give_back, holding, load, open_for
from mailflow.client import EndOfDataTimeout, NextAddress, Session
from mailflow.config import Config
from mailflow.delivery import Attempt, crashed, fail_all, fail_each, record
from mailflow.errors import DeliveryError, local_reply
from mailflow.hmail import HMail
from mailflow.pool import POOL, NoSlot
from mailflow.spool import Spool, now_ms

log = logging.getLogger(__name__)

#: A batch stops taking new messages after this long and hands the rest back, due now.
#: It keeps every task far below Redis's visibility timeout and RabbitMQ's
#: consumer_timeout (30 min): one message's own RFC 5321 timeouts stay under 25 min.
BATCH_TIME_BUDGET = 300.0


def attempt_of(session: Session) -> Attempt:
    return Attempt(host=session.host, ip=session.target.ip, port=session.target.port,
                   mode="LMTP" if session.key.lmtp else "SMTP", secured=session.secured,
                   authenticated=session.authenticated)


@app.task(name="mailflow.transmit", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def transmit(batch: dict[str, Any], lease: str | None = None) -> None:
    courier = Courier(config.current(), batch, POOL.redeem(lease if isinstance(lease, str) else None))
    try:
        if accepted(batch, "mailflow.transmit") is None:
            return
        with holding(courier.spool, batch) as held:
            if held:
                courier.run()
        courier.spool.finish(batch["claim"])
    finally:
        courier.let_go()


class Courier:
    """One batch's messages over one session; the session is always let go in the end.

    Whatever happens -- a broken connection, a full disk while recording an outcome,
    an exception nobody planned for -- the session goes back to the pool or is
    discarded, so its connection slot is never lost.
    """

    def __init__(self, cfg: Config, batch: dict[str, Any], session: Session | None):
        self.cfg, self.out, self.batch = cfg, cfg.outbound, batch
        self.spool = Spool(cfg.queue_path())
        self.session = session

    def let_go(self) -> None:
        if self.session is not None:
            POOL.release(self.session, self.out)
            self.session = None

    def discard(self) -> None:
        if self.session is not None:
            POOL.discard(self.session)
            self.session = None

    def run(self) -> None:
        hmails = load(self.spool, self.batch)
        started = time.monotonic()
        for index, hmail in enumerate(hmails):
            if not hmail.path.exists():  # handled meanwhile (e.g. deleted by an operator)
                continue
            if time.monotonic() - started > BATCH_TIME_BUDGET:
                back = give_back(self.spool, hmails[index:], now_ms())
                log.info("batch for %s out of time: %d entries due again", self.batch["domain"], back)
                return
            if not self._ready(hmails[index:]):
                return
            try:
                self._send_one(hmail)
            except Exception as exc:  # the session's state is unknown: never reuse it
                attempt = attempt_of(self.session) if self.session is not None else None
                self.discard()
                crashed(self.spool, hmail, exc, self.out, attempt)

    def _ready(self, rest: list[HMail]) -> bool:
        """A session for the next message; False when the rest of the batch was dealt with."""
        if self.session is not None and self.out.pool_timeout == 0 and self.session.messages:
            try:  # no pooling: a fresh connection per message, in the same slot
                self.session = POOL.reopen(self.session, out=self.out, tls=self.cfg.tls_outbound,
                                           domain=self.batch["domain"])
            except NextAddress:
                self.session = None
        if self.session is not None:
            return True
        try:
            self.session = open_for(self.batch, self.cfg)
            return True
        except NoSlot:  # never wait for a slot in a worker thread: the queue manager brings them back
            back = give_back(self.spool, rest, now_ms())
            log.info("no free connection slot for %s: %d entries due again", self.batch["domain"], back)
        except DeliveryError as exc:
            fail_each(self.spool, rest, exc, self.out)
        except Exception as exc:
            for hmail in rest:
                crashed(self.spool, hmail, exc, self.out)
        return False

    def _send_one(self, hmail: HMail) -> None:
        """Send one entry and record its outcome; the session is None afterwards if it broke."""
        message = hmail.message()
        rcpts = [r.address for r in hmail.todo.rcpt_to]
        for retry in (False, True):
            session = self.session
            assert session is not None
            attempt = attempt_of(session)
            try:
                results = session.send(hmail.todo.mail_from.address, rcpts, message, self.out)
            except EndOfDataTimeout:
                self.discard()
                fail_all(self.spool, hmail, local_reply(
                    "4.4.2", "timeout waiting for the reply to the end of data"), attempt, self.out)
                return
            except (smtplib.SMTPException, OSError) as exc:
                self.discard()
                if retry or session.messages <= 1:
                    fail_all(self.spool, hmail, local_reply(
                        "4.4.2", f"connection to {attempt.host} broke: {exc}"), attempt, self.out)
                    return
                # a pooled connection the remote end closed: replace it, do not fail the message
                try:
                    self.session = open_for(self.batch, self.cfg)
                except DeliveryError as err:
                    fail_all(self.spool, hmail, err.reply, attempt, self.out)
                    return
                continue
            attempt.results = {r.address: r.reply for r in results}
            record(self.spool, hmail, attempt, self.out)
            return
