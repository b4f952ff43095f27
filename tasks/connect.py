"""``mailflow.acquire_connection``: a ready session to the first MX address that takes one.

The session stays in this worker process's pool under a lease, and
``mailflow.transmit`` is sent to this worker node's own direct queue to
redeem it (a socket cannot cross a task boundary; see docs/architecture.md).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils import worker_direct

from mailflow import app, config
from mailflow.batch import holding, load, mx_from_json, shown, source_for
from mailflow.client import Session
from mailflow.delivery import Attempt, fail_all
from mailflow.errors import DeliveryError
from mailflow.mx import targets
from mailflow.pool import POOL
from mailflow.spool import Spool

log = logging.getLogger(__name__)


def open_for(batch: dict[str, Any]) -> Session:
    """Resolve the batch's MX addresses and get a session from the pool (raises DeliveryError)."""
    cfg = config.current()
    out = cfg.outbound
    found = targets([mx_from_json(m) for m in batch["mx"]], out)
    bind, helo = source_for(found[0], batch, cfg)
    return POOL.acquire(found, helo=helo, bind=bind, out=out, tls=cfg.tls_outbound,
                        domain=batch["domain"])


def fail_batch(spool: Spool, batch: dict[str, Any], exc: DeliveryError) -> None:
    """The same failure for every entry of the batch (no address took a session)."""
    out = config.current().outbound
    for hmail in load(spool, batch):
        fail_all(spool, hmail, exc.reply, Attempt(host=exc.host or "-", ip=exc.ip or "-"), out)


@app.task(name="mailflow.acquire_connection", bind=True, acks_late=True,
          reject_on_worker_lost=True, ignore_result=True)
def acquire_connection(self: Any, batch: dict[str, Any]) -> None:
    from tasks.transmit import transmit

    spool = Spool(config.current().queue_path())
    with holding(spool, batch) as held:
        if not held or not load(spool, batch):
            spool.finish(batch["claim"])
            return
        try:
            session = open_for(batch)
        except DeliveryError as exc:
            fail_batch(spool, batch, exc)
            spool.finish(batch["claim"])
            return
    lease = POOL.lease(session)
    node = self.request.hostname
    if node:
        transmit.apply_async(args=[batch, lease], queue=worker_direct(node),
                             argsrepr=shown(batch)[:-1] + f", {lease!r}]")
    else:  # called eagerly (not from a worker): no node queue to route to
        transmit(batch, lease)
