"""``mailflow.flush_queue``: ``celery -A mailflow call mailflow.flush_queue [--args='["domain"]']``."""

from __future__ import annotations

from mailflow import app, config
from mailflow.flush import flush
from mailflow.spool import Spool


@app.task(name="mailflow.flush_queue", ignore_result=True)
def flush_queue(domain: str | None = None) -> int:
    """Every deferred entry (or one domain's) is attempted now, once."""
    return flush(Spool(config.current().queue_path()), domain)
