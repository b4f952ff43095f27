"""``mailflow.flush_queue``: ``celery -A mailflow call mailflow.flush_queue [--args='["domain"]']``."""

from __future__ import annotations

import logging

from mailflow import config
from mailflow.application import app
from mailflow.payloads import FLUSH_QUEUE
from mailflow.queue.flush import flush
from mailflow.queue.spool import Spool

log = logging.getLogger(__name__)


@app.task(name=FLUSH_QUEUE, ignore_result=True)
def flush_queue(domain: str | None = None) -> int:
    """Every deferred entry (or one domain's) is attempted now, once."""
    if domain is not None and not isinstance(domain, str):
        log.error("%s refused a domain that is not text: %r", FLUSH_QUEUE, domain)
        return 0
    return flush(Spool(config.current().queue_path()), domain)
