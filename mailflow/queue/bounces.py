"""Bounces: a delivery status notification for each failed/ entry, queued like any mail.

The ``bounce`` hook may answer that none is sent; mail from the null sender is
never bounced (a double bounce is dropped with a log line); a bounce that
cannot be made goes back to failed/ on the retry schedule, then is dropped.
The report itself is built by :mod:`mailflow.queue.dsn`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from mailflow import config, hooks, logs
from mailflow.address import Address
from mailflow.codes import CONT
from mailflow.config.settings import Outbound
from mailflow.config.tenants import labels
from mailflow.errors import Reply
from mailflow.message import dot_unstuff
from mailflow.observation import tally
from mailflow.queue import counters, events, submission
from mailflow.queue.claims import gone, here, holding, load
from mailflow.queue.dsn import DELAY_TEMPLATE, SUCCESS_TEMPLATE, build
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import FAILED, Spool, now_ms
from mailflow.queue.todo import ToDo
from mailflow.wire.dsnparams import Dsn
from mailflow.wire.payloads import Batch, Outcome

log = logging.getLogger(__name__)


class BounceError(Exception):
    """What the ``bounce`` hook sees: the reason, with ``mx``, ``bounced_rcpt``, ``deferred_rcpt``."""

    def __init__(self, text: str, *, mx: str | None, bounced_rcpt: list[str],
                 deferred_rcpt: list[str]):
        super().__init__(text)
        self.mx = mx
        self.bounced_rcpt = bounced_rcpt
        self.deferred_rcpt = deferred_rcpt


def bounce_each(spool: Spool, batch: Batch) -> None:
    """A bounce for every entry of a claim of failed/ entries (the ``mailflow.bounce`` step)."""
    here(spool, batch)
    with holding(spool, batch) as held:
        if held:
            for hmail in load(spool, batch):
                try:
                    bounce_one(hmail)
                except Exception as exc:
                    not_now(spool, hmail, exc)
    spool.finish(batch.claim)
    if not held:
        raise gone(batch)


def not_now(spool: Spool, hmail: HMail, exc: Exception) -> None:
    """The bounce could not be made or queued: back to failed/ to try again later.

    It follows temp_fail_intervals like a deferral (the queue manager claims a
    failed/ entry only when due); once they are used up it is dropped with a log
    line, as a bounce that cannot be delivered is.
    """
    cfg = config.current()
    fails = hmail.num_failures + 1
    intervals = cfg.outbound.temp_fail_intervals
    log.error("could not make the bounce for %s: %s: %s", hmail.todo.uuid, type(exc).__name__, exc,
              exc_info=exc)
    if fails > len(intervals):
        logs.event("dropped", id=hmail.todo.uuid, reason=f"no bounce could be made: {exc}")
        events.message_event(cfg, "dropped", hmail.todo, [r.address for r in hmail.todo.rcpt_to],
                             response=f"no bounce could be made: {exc}", num_failures=fails)
        hmail.path.unlink(missing_ok=True)
        counters.add_outcome(spool.root, "dropped", hmail.todo.notes)
        tally.count("dropped")
        return
    due = now_ms() + intervals[fails - 1] * 1000
    try:
        os.rename(hmail.path, spool.path(hmail.name.rescheduled(due, fails), FAILED))
    except FileNotFoundError:
        pass


def bounce_one(hmail: HMail) -> None:
    cfg = config.current()
    todo = hmail.todo
    statuses = todo.record.get("rcpt_status", {})
    reason = str(todo.record.get("reason") or "delivery failed")
    first: dict[str, Any] = next(iter(statuses.values()), {})
    if todo.mail_from.is_null:
        # RFC 3464/5321: never bounce a bounce (a double bounce is dropped with a log line)
        logs.event("dropped", id=todo.uuid, reason=f"null sender, no bounce: {reason}")
        events.message_event(cfg, "dropped", todo, [r.address for r in todo.rcpt_to],
                             response=f"null sender, no bounce: {reason}")
        hmail.path.unlink(missing_ok=True)
        counters.add_outcome(cfg.queue_path(), "dropped", todo.notes)
        tally.count("dropped")
        return
    error = BounceError(reason, mx=first.get("remote_mta"),
                        bounced_rcpt=[r.address for r in todo.rcpt_to], deferred_rcpt=[])
    extra: dict[str, Any] = {"class": todo.record.get("last_class") or "Uncategorized"}
    answer = hooks.decide(hooks.bounce, raised=CONT, hmail=hmail, error=error, **extra)
    if answer.code is not CONT:
        logs.event("dropped", id=todo.uuid, reason=f"bounce hook: {answer.value or answer.code.name}")
        hmail.path.unlink(missing_ok=True)
        counters.add_outcome(cfg.queue_path(), "dropped", todo.notes)
        tally.count("dropped")
        return
    asked = Dsn.from_notes(todo.notes)
    notified = [r.address for r in todo.rcpt_to if asked is None or asked.rcpt(r.address).wants("FAILURE")]
    if not notified:  # RFC 3461: NOTIFY=NEVER (or without FAILURE) -- the sender asked for none
        logs.event("dropped", id=todo.uuid, reason=f"NOTIFY: no failure notice asked for: {reason}")
        hmail.path.unlink(missing_ok=True)
        counters.add_outcome(cfg.queue_path(), "bounced", todo.notes)
        tally.count("bounced")
        return
    original = dot_unstuff(hmail.message())
    dsn = build(hmail, original, me=cfg.me, template=cfg.bounce_template,
                max_body=cfg.outbound.max_bounce_body, rcpts=notified)
    queued = submission.queue_message(Address.null(), [todo.mail_from], dsn,
                                    notes={"bounce_for": todo.uuid, **labels(todo.notes)}, cfg=cfg)
    logs.event("bounced", id=todo.uuid, to=todo.mail_from.address, status=first.get("status", "5.0.0"),
               reason=reason, bounce_id=queued.uuid)
    hmail.path.unlink(missing_ok=True)
    counters.add_outcome(cfg.queue_path(), "bounced", todo.notes)
    tally.count("bounced")


def delay_notice(hmail: HMail, todo: ToDo, settings: Outbound) -> ToDo:
    """An entry deferred once more: when it has waited ``delay_warning`` and its sender has not
    been told yet, one delay notice (RFC 3464, ``Action: delayed``) for the recipients that
    asked for one (NOTIFY with DELAY) or gave no NOTIFY; ``todo`` marked as warned."""
    waited_ms = now_ms() - todo.queue_time
    if (not settings.delay_warning or waited_ms < settings.delay_warning * 1000
            or todo.record.get("warned") or todo.mail_from.is_null):
        return todo
    cfg = config.current()
    asked = Dsn.from_notes(todo.notes)
    rcpts = [r.address for r in todo.rcpt_to if asked is None or asked.rcpt(r.address).wants("DELAY")]
    warned = replace(todo, record={**todo.record, "warned": True})
    if not rcpts:
        return warned
    notice = build(HMail(hmail.path, todo, hmail.num_failures), dot_unstuff(hmail.message()), me=cfg.me,
                   template=DELAY_TEMPLATE, max_body=cfg.outbound.max_bounce_body, rcpts=rcpts,
                   action="delayed")
    queued = submission.queue_message(Address.null(), [todo.mail_from], notice,
                                      notes={"delay_for": todo.uuid, **labels(todo.notes)}, cfg=cfg)
    logs.event("delayed", id=todo.uuid, to=todo.mail_from.address, waited=round(waited_ms / 1000),
               notice_id=queued.uuid)
    return warned


def success_notice(hmail: HMail, delivered: dict[str, Reply], outcome: Outcome) -> None:
    """Recipients delivered that asked to be told (NOTIFY with SUCCESS), when the next hop did
    not take the duty over (it offered no DSN): one notice, ``Action: relayed`` -- or
    ``delivered`` when LMTP was the final delivery."""
    todo = hmail.todo
    asked = Dsn.from_notes(todo.notes)
    if asked is None or outcome.dsn_taken or todo.mail_from.is_null:
        return
    rcpts = [a for a in delivered if asked.rcpt(a).wants("SUCCESS")]
    if not rcpts:
        return
    cfg = config.current()
    statuses = {a: {"status": delivered[a].enhanced if delivered[a].enhanced[0] == "2" else "2.0.0",
                    "code": delivered[a].code, "text": delivered[a].text, "remote_mta": outcome.host}
                for a in rcpts}
    action = "delivered" if outcome.mode == "LMTP" else "relayed"
    notice = build(hmail, dot_unstuff(hmail.message()), me=cfg.me, template=SUCCESS_TEMPLATE,
                   max_body=cfg.outbound.max_bounce_body, rcpts=rcpts, action=action, statuses=statuses)
    queued = submission.queue_message(Address.null(), [todo.mail_from], notice,
                                      notes={"success_for": todo.uuid, **labels(todo.notes)}, cfg=cfg)
    logs.event("notified", id=todo.uuid, to=todo.mail_from.address, action=action,
               rcpts=",".join(rcpts), notice_id=queued.uuid)
