"""``mailflow.transmit``: every message of the batch over one session, outcomes recorded."""

from __future__ import annotations

import logging
import smtplib
import time
from typing import Any

from mailflow import app, config
from mailflow.batch import holding, load
from mailflow.client import EndOfDataTimeout, Session
from mailflow.delivery import Attempt, fail_all, record
from mailflow.errors import DeliveryError, local_reply
from mailflow.hmail import HMail
from mailflow.pool import POOL
from mailflow.spool import Spool, now_ms
from tasks.connect import fail_batch, open_for

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
    cfg = config.current()
    out = cfg.outbound
    spool = Spool(cfg.queue_path())
    session = POOL.redeem(lease)
    with holding(spool, batch) as held:
        if held:
            session = _transmit(spool, batch, session, out)
    if session is not None:
        POOL.release(session, out)
    spool.finish(batch["claim"])


def _transmit(spool: Spool, batch: dict[str, Any], session: Session | None,
              out: Any) -> Session | None:
    hmails = load(spool, batch)
    started = time.monotonic()
    for index, hmail in enumerate(hmails):
        if not hmail.path.exists():  # handled meanwhile (e.g. deleted by an operator)
            continue
        if time.monotonic() - started > BATCH_TIME_BUDGET:
            for rest in hmails[index:]:
                if rest.path.exists():
                    spool.release(rest.path, rest.name.rescheduled(now_ms()))
            log.info("batch for %s out of time: %d entries due again", batch["domain"],
                     len(hmails) - index)
            break
        if session is None:
            try:
                session = open_for(batch)
            except DeliveryError as exc:
                fail_batch(spool, {**batch, "names": [h.filename for h in hmails[index:]]}, exc)
                return None
        session = _send_one(spool, hmail, session, batch, out)
        if session is not None and out.pool_timeout == 0:
            POOL.release(session, out)  # no pooling: QUIT after every message
            session = None
    return session


def _send_one(spool: Spool, hmail: HMail, session: Session, batch: dict[str, Any],
              out: Any) -> Session | None:
    """Send one entry; return the session to go on with (None when it broke)."""
    message = hmail.message()
    rcpts = [r.address for r in hmail.todo.rcpt_to]
    for retry in (False, True):
        attempt = attempt_of(session)
        try:
            results = session.send(hmail.todo.mail_from.address, rcpts, message, out)
        except EndOfDataTimeout:
            POOL.discard(session)
            fail_all(spool, hmail, local_reply("4.4.2", "timeout waiting for the reply to the "
                                               "end of data"), attempt, out)
            return None
        except (smtplib.SMTPException, OSError) as exc:
            POOL.discard(session)
            fresh = session.messages <= 1 and not retry
            if retry or fresh:
                fail_all(spool, hmail, local_reply("4.4.2", f"connection to {attempt.host} "
                                                   f"broke: {exc}"), attempt, out)
                return None
            # a pooled connection the remote end closed: replace it, do not fail the message
            try:
                session = open_for(batch)
            except DeliveryError as err:
                fail_all(spool, hmail, err.reply, attempt, out)
                return None
            continue
        attempt.results = {r.address: r.reply for r in results}
        record(spool, hmail, attempt, out)
        return session
    return session
