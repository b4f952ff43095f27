"""``mailflow.acquire_connection``: a ready session to the first MX address that takes one.

The session stays in this worker process's pool under a lease, and
``mailflow.transmit`` is sent to this worker node's own direct queue to
redeem it (a socket cannot cross a task boundary; see docs/architecture.md).
When every address is at its connection limits the task does not wait in its
thread: it leaves a waiter in the pool, which sends it again to this node when
a slot frees (see mailflow/pool.py for why).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from celery.utils import worker_direct

from mailflow import app, config
from mailflow.batch import BROKER_RETRY_MS, accepted, give_back, holding, load, open_for, shown
from mailflow.client import Session
from mailflow.config import Config
from mailflow.delivery import crashed, fail_each
from mailflow.errors import DeliveryError
from mailflow.hmail import HMail
from mailflow.pool import POOL, SLOT_WAIT, NoSlot
from mailflow.spool import Spool, now_ms

log = logging.getLogger(__name__)


@app.task(name="mailflow.acquire_connection", bind=True, acks_late=True,
          reject_on_worker_lost=True, ignore_result=True)
def acquire_connection(self: Any, batch: dict[str, Any]) -> None:
    if accepted(batch, "mailflow.acquire_connection") is None:
        return
    cfg = config.current()
    spool = Spool(cfg.queue_path())
    node: str | None = self.request.hostname
    session = None
    with holding(spool, batch) as held:
        hmails = load(spool, batch) if held else []
        if hmails:
            session = _acquire(spool, batch, hmails, cfg, node)
    if session is None:
        spool.finish(batch["claim"])
        return
    _hand_on(spool, batch, session, node, cfg)


def _acquire(spool: Spool, batch: dict[str, Any], hmails: list[HMail], cfg: Config,
             node: str | None) -> Session | None:
    """A session for the batch, or None once every entry has its outcome or a waiter is set."""
    out = cfg.outbound
    try:
        # called eagerly there is no node to be woken on: wait in the thread, as a client would
        return open_for(batch, cfg, wait=0.0 if node else SLOT_WAIT)
    except NoSlot as exc:
        if node:
            _wait_for_slot(spool, batch, hmails, exc, node, cfg)
        else:
            fail_each(spool, hmails, exc, out)
    except DeliveryError as exc:
        fail_each(spool, hmails, exc, out)
    except Exception as exc:
        for hmail in hmails:
            crashed(spool, hmail, exc, out)
    return None


def _wait_for_slot(spool: Spool, batch: dict[str, Any], hmails: list[HMail], exc: NoSlot,
                   node: str, cfg: Config) -> None:
    """Come back when a slot frees; after SLOT_WAIT in all, defer the batch (4.4.5)."""
    since = batch.get("slot_wait_since")
    now = time.time()
    if not isinstance(since, int | float) or since > now:
        since = now
    if now - since >= SLOT_WAIT:
        fail_each(spool, hmails, exc, cfg.outbound)
        return
    again = {**batch, "slot_wait_since": since}
    POOL.wait_for_slot(exc.ips, partial(_send, "mailflow.acquire_connection", [again], node),
                       cfg.outbound)


def _send(task: str, args: list[Any], node: str) -> None:
    app.send_task(task, args=args, queue=worker_direct(node), argsrepr=shown(args[0]))


def _hand_on(spool: Spool, batch: dict[str, Any], session: Session, node: str | None,
             cfg: Config) -> None:
    """Lease the session to ``mailflow.transmit`` on this node; on failure, nothing stays held."""
    lease = POOL.lease(session)
    try:
        if node:
            _send("mailflow.transmit", [batch, lease], node)
        else:  # called eagerly (not from a worker): no node queue to route to
            app.tasks["mailflow.transmit"](batch, lease)
        return
    except Exception:
        log.exception("could not hand the batch for %s to transmit; due again shortly",
                      batch["domain"])
    leased = POOL.redeem(lease)
    if leased is not None:
        POOL.release(leased, cfg.outbound)
    with holding(spool, batch) as held:
        if held:
            give_back(spool, load(spool, batch), now_ms() + BROKER_RETRY_MS)
    spool.finish(batch["claim"])
