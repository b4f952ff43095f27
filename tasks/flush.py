"""``mailflow.flush_queue``: ``celery -A mailflow call mailflow.flush_queue [--args='["domain"]']``.

Any worker may get the call, and the queues are on their owners' hosts: it is
passed on to every worker by remote control, and each owner's worker flushes
its own queue (``mailflow_flush`` in mailflow/runtime/worker.py).  A second argument
names one owner (its queue identity).
"""

from __future__ import annotations

import logging

from mailflow.errors import NothingToDo
from mailflow.runtime import authentic
from mailflow.runtime.application import app
from mailflow.wire.payloads import FLUSH_QUEUE

log = logging.getLogger(__name__)

#: How long the owners have to answer.
REPLY_TIMEOUT = 5.0


@app.task(name=FLUSH_QUEUE, ignore_result=True)
def flush_queue(domain: str | None = None, owner: str | None = None) -> dict[str, int]:
    """Every deferred entry (or one domain's) of every owner (or one) is attempted now, once."""
    if not all(v is None or isinstance(v, str) for v in (domain, owner)):
        raise NothingToDo(f"domain and owner are text: {domain!r}, {owner!r}")
    arguments = authentic.signed("mailflow_flush", {"domain": domain, "owner": owner})
    replies = app.control.broadcast("mailflow_flush", arguments=arguments, reply=True, timeout=REPLY_TIMEOUT)
    flushed: dict[str, int] = {}
    for reply in replies or []:
        for answer in reply.values():
            done = answer.get("ok") or {}
            if done:
                flushed[done["owner"]] = done["flushed"]
    log.info("flushed %s", ", ".join(f"{o}: {n}" for o, n in sorted(flushed.items())) or "no queue")
    return flushed
