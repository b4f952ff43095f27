"""``mailflow.webhook``: POST one kept delivery event to its endpoint (mailflow/webhooks/)."""

from __future__ import annotations

from celery.exceptions import Ignore

from mailflow import config
from mailflow.errors import NothingToDo
from mailflow.runtime.application import app
from mailflow.webhooks.sender import deliver
from mailflow.wire.payloads import WEBHOOK


@app.task(name=WEBHOOK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def webhook(batch: str) -> dict[str, int]:
    """The event files are the record: a lost or repeated task costs at most one more POST
    of an event, with the same webhook-id, which receivers drop."""
    try:
        return deliver(config.current(), batch)
    except NothingToDo:
        raise Ignore() from None
