"""``mailflow.bounce``: a delivery status notification for each failed entry, queued like any mail."""

from __future__ import annotations

import logging
from typing import Any

from mailflow import app, config, counters, hooks, logs, outbound
from mailflow.address import Address
from mailflow.batch import holding, load
from mailflow.bounce import build
from mailflow.codes import CONT
from mailflow.hmail import HMail
from mailflow.message import dot_unstuff
from mailflow.spool import Spool

log = logging.getLogger(__name__)


class BounceError(Exception):
    """What the ``bounce`` hook sees: the reason, with ``mx``, ``bounced_rcpt``, ``deferred_rcpt``."""

    def __init__(self, text: str, *, mx: str | None, bounced_rcpt: list[str],
                 deferred_rcpt: list[str]):
        super().__init__(text)
        self.mx = mx
        self.bounced_rcpt = bounced_rcpt
        self.deferred_rcpt = deferred_rcpt


@app.task(name="mailflow.bounce", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def bounce(batch: dict[str, Any]) -> None:
    spool = Spool(config.current().queue_path())
    with holding(spool, batch) as held:
        if held:
            for hmail in load(spool, batch):
                bounce_one(hmail)
    spool.finish(batch["claim"])


def bounce_one(hmail: HMail) -> None:
    cfg = config.current()
    todo = hmail.todo
    statuses = todo.state.get("rcpt_status", {})
    reason = str(todo.state.get("reason") or "delivery failed")
    first: dict[str, Any] = next(iter(statuses.values()), {})
    if todo.mail_from.is_null:
        # RFC 3464/5321: never bounce a bounce (a double bounce is dropped with a log line)
        logs.event("dropped", id=todo.uuid, reason=f"null sender, no bounce: {reason}")
        hmail.path.unlink(missing_ok=True)
        counters.add(cfg.queue_path(), "dropped")
        return
    error = BounceError(reason, mx=first.get("remote_mta"),
                        bounced_rcpt=[r.address for r in todo.rcpt_to], deferred_rcpt=[])
    answer = hooks.decide(hooks.bounce, raised=CONT, hmail=hmail, error=error)
    if answer.code is not CONT:
        logs.event("dropped", id=todo.uuid, reason=f"bounce hook: {answer.value or answer.code.name}")
        hmail.path.unlink(missing_ok=True)
        counters.add(cfg.queue_path(), "dropped")
        return
    original = dot_unstuff(hmail.message())
    dsn = build(hmail, original, me=cfg.me, template=cfg.bounce_template,
                max_body=cfg.outbound.max_bounce_body)
    try:
        queued = outbound.queue_message(Address.null(), [todo.mail_from], dsn,
                                        notes={"bounce_for": todo.uuid}, cfg=cfg)
    except outbound.QueueError as exc:
        log.error("could not queue the bounce for %s (kept for another try): %s", todo.uuid, exc)
        raise
    logs.event("bounced", id=todo.uuid, to=todo.mail_from.address, status=first.get("status", "5.0.0"),
               reason=reason, bounce_id=queued.uuid)
    hmail.path.unlink(missing_ok=True)
    counters.add(cfg.queue_path(), "bounced")
