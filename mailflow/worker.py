"""Start-up of ``celery -A mailflow worker``: the same config and plugins as every process.

The config directory comes from ``$MAILFLOW_CONFIG`` (default ``./config``):
Celery's own ``--config`` option already means something else.

A worker whose host has the queue directory (``queue_dir``) is its owner's worker: it
consumes the owner's Celery queue (mailflow/queue/identity.py) and offers to run the
queue manager.  A worker without one is a *worker host*: it says so, takes
no owner's work, and starts serving as soon as a queue directory appears on its host
(an smtpd started after it, or the first ``send_email``).  On the embedded broker there
is one host only: its worker makes the queue directory, as every process there does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    celeryd_init,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from celery.worker.control import control_command, inspect_command

from mailflow import compat, config, logs, metrics, proctitle
from mailflow.application import app
from mailflow.config import environ, startup
from mailflow.config.loader import Config
from mailflow.config.settings import Tls
from mailflow.descriptors import raise_descriptor_limit
from mailflow.pipeline import shaping as route_shaping
from mailflow.queue import events, lending
from mailflow.queue import manager as qmgr
from mailflow.queue import tools as queuetools
from mailflow.queue.flush import flush
from mailflow.queue.identity import owner_queue
from mailflow.queue.spool import Spool
from mailflow.relay import dane
from mailflow.relay.fence import HOLDINGS
from mailflow.reports import tls as tls_reports
from mailflow.runtime import authentic
from mailflow.seal import KEY_FILE, key_exists, mac_key

log = logging.getLogger(__name__)

_qmgr: list[Any] = []
_stopping = threading.Event()
#: How often a worker host looks for a queue directory of its own.
QUEUE_WATCH_EVERY = 1.0


@celeryd_init.connect
def _json_from_the_start(instance: Any = None, **_kwargs: Any) -> None:
    """In JSON mode, JSON before Celery writes anything: no banner (not a log line, and a
    JSON log shipper would choke on it), warnings through logging, and the root handler
    set up now -- Celery keeps a handler it finds and only adds its own to a bare logger."""
    if logs.log_format() != "json":
        return
    if instance is not None:
        instance.quiet = True
    logs.setup("json")
    logging.captureWarnings(True)


#: Threads beyond concurrency_max, for the steps that deliver nothing themselves
#: (lookup_mx, acquire_connection, report, bounce, countdown firings).
OTHER_STEP_THREADS = 8


@celeryd_init.connect
def _threads_from_concurrency_max(conf: Any = None, options: dict[str, Any] | None = None,
                                  **_kwargs: Any) -> None:
    """A threads-pool worker node gets a thread for each delivery ``concurrency_max``
    allows, unless ``--concurrency`` says otherwise: each transmit holds a thread for its
    batch, and with 16 threads a node never reached more than 16 slow receivers at once
    whatever outbound.ini promised (issue 14; docs/architecture.md, "Slow receivers")."""
    # loaded by worker_init, which Celery sends first (a broken config has stopped it)
    most = config.current().outbound.concurrency_max
    raise_descriptor_limit(most + 256, f"concurrency_max = {most}")
    if conf is None or (options or {}).get("concurrency") or conf.worker_pool != "threads":
        return
    conf.worker_concurrency = most + OTHER_STEP_THREADS


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: Any = None, **_kwargs: Any) -> None:
    """``MAILFLOW_LOG_FORMAT`` (``mailflow --log-format``) for Celery's handlers too."""
    if logger is not None:
        logs.format_handlers(logger)


@worker_init.connect
def _load_config(**_kwargs: Any) -> None:
    # SystemExit passes through Celery's signal dispatch (it catches Exception
    # only), so a broken config stops the worker with a non-zero status.
    environ.check_or_exit()
    compat.check_or_exit()
    cfg = startup.load_or_exit(os.environ.get("MAILFLOW_CONFIG"))
    _key_or_exit(cfg)


def _key_or_exit(cfg: Config) -> None:
    """A worker host must have its owners' ``broker.key``: with a key of its own making it
    would refuse every message they publish, and they every report it sends.  An owner's
    worker makes the key when there is none (the first process of a new install)."""
    if _local_spool() is None and not key_exists(cfg.directory):
        print(f"mailflow: {cfg.directory / KEY_FILE} is missing: a worker host needs the broker.key "
              "of the queue owners that share its broker (copy it from one of them)",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    mac_key(cfg.directory)  # made now by an owner, not by its first publish


#: How often (s) a worker looks for a finished day's TLS reports to send.
TLS_REPORT_CHECK = 3600.0


def _send_tls_reports() -> None:
    """Once an hour, the finished days' TLS reports (one process per host sends them)."""
    while True:
        cfg = config.current()
        if cfg.tls_outbound.tls_report:
            try:
                tls_reports.send_due_locked(cfg)
            except Exception:
                log.exception("sending TLS reports failed; trying again in an hour")
        time.sleep(TLS_REPORT_CHECK)


#: How often (s) an owner's workers send the due webhook events on their way.
WEBHOOK_DISPATCH = 1.0


def _dispatch_webhook_events() -> None:
    """Once a second, the due events of this host's queue go out in batches (one worker does)."""
    while True:
        time.sleep(WEBHOOK_DISPATCH)
        cfg = config.current()
        if not cfg.webhooks or _local_spool() is None:
            continue
        try:
            events.dispatch(cfg.queue_path())
        except Exception:
            log.exception("webhook dispatch failed; again in %d s", WEBHOOK_DISPATCH)


def _say_whether_dane_validates(tls: Tls) -> None:
    """DANE trusts the resolver's AD bit: one that does not validate makes every zone look
    insecure, so DANE would silently never apply.  Said once at start, either way."""
    if not tls.dane or tls.dane_resolver is None:
        return
    where = f"{tls.dane_resolver[0]}:{tls.dane_resolver[1]}"
    if dane.validates(tls.dane_resolver):
        log.info("DANE: the resolver %s validates DNSSEC (the root's SOA came with the AD bit)", where)
    else:
        log.warning("DANE: the resolver %s does not validate DNSSEC (no AD bit on the root's SOA): "
                    "every TLSA answer will look insecure and DANE will not apply", where)


def _local_spool() -> Spool | None:
    """This host's queue directory, when it has one (made here on the embedded broker)."""
    spool = Spool(config.current().queue_path())
    if environ.broker_url().startswith("filesystem://"):
        return spool.ensure()
    return spool if spool.exists() else None


@celeryd_after_setup.connect
def _consume_the_owner_queue(sender: str = "", instance: Any = None, **_kwargs: Any) -> None:
    """Before the consumer starts: the owner's queue, when this host has the queue directory."""
    spool = _local_spool()
    if spool is None:
        log.warning("no queue directory at %s: this worker serves no owner until one appears "
                    "(a worker host); the delivery steps of a queue run on the host that has it",
                    config.current().queue_path())
        return
    if instance is not None:
        instance.app.amqp.queues.select_add(owner_queue(spool.identity))
    log.info("serving the queue %s at %s", spool.identity, spool.root)


@worker_ready.connect
def _start_queue_manager(sender: Any = None, **_kwargs: Any) -> None:
    """Every worker of an owner offers to run its queue manager; a worker host waits for a queue."""
    proctitle.start("worker", config.current())
    _say_whether_dane_validates(config.current().tls_outbound)
    threading.Thread(target=_send_tls_reports, daemon=True, name="mailflow-tls-reports").start()
    threading.Thread(target=_dispatch_webhook_events, daemon=True, name="mailflow-webhooks").start()
    threading.Thread(target=metrics.serve_forever, daemon=True, name="mailflow-metrics-http").start()
    _start_renewing(getattr(sender, "hostname", None))
    if _local_spool() is not None:
        _qmgr.append(qmgr.QueueManager(config.current(), held=route_shaping.held).start())
        return
    node = getattr(sender, "hostname", None)
    threading.Thread(target=_wait_for_a_queue, args=(node,), daemon=True,
                     name="mailflow-queue-watch").start()


def _wait_for_a_queue(node: str | None) -> None:
    while not _stopping.wait(QUEUE_WATCH_EVERY):
        spool = _local_spool()
        if spool is None:
            continue
        log.info("a queue directory appeared at %s: serving the queue %s", spool.root,
                 spool.identity)
        app.control.add_consumer(owner_queue(spool.identity), reply=False,
                                 destination=[node] if node else None)
        _qmgr.append(qmgr.QueueManager(config.current(), held=route_shaping.held).start())
        return


def _start_renewing(node: str | None) -> None:
    """Renew the claims held here, say whether this is a worker host, hear the broker
    (mailflow/relay/fence.py); not on the embedded broker, which has one host only."""
    if node is None or environ.broker_url().startswith("filesystem://"):
        return

    def describe() -> dict[str, Any]:
        return {"node": node, "worker_host": _local_spool() is None}

    def broadcast(arguments: dict[str, Any]) -> None:
        app.control.broadcast("mailflow_renew", arguments=authentic.signed("mailflow_renew", arguments),
                              reply=False)

    HOLDINGS.start(broadcast, describe)


@control_command(args=[("node", str), ("worker_host", bool), ("claims", dict)],
                 signature="node worker_host claims")
def mailflow_renew(state: Any, node: str = "", worker_host: bool = False,
                   claims: dict[str, list[str]] | None = None, **signed: Any) -> dict[str, Any]:
    """A worker's periodic broadcast: renew the claims it holds of this host's queue; note a
    worker host; and, when it is this worker's own, that this host hears the broker.
    Only a fresh one with mailflow's MAC: a forged or replayed renewal could keep a dead
    holder's claims from ever coming back."""
    if not authentic.broadcast_accepted("mailflow_renew", {
            "node": node, "worker_host": worker_host, "claims": claims, **signed}):
        return {"error": "refused"}
    if worker_host and node:
        HOLDINGS.seen(node)
    spool = _local_spool()
    if spool is None:
        return {"ok": {}}
    mine = (claims or {}).get(spool.identity) if isinstance(claims, dict) else None
    renewed = lending.renew(spool, [c for c in mine if isinstance(c, str)]) if isinstance(mine, list) else 0
    if node and node == state.hostname:
        lending.heard(spool, node)
    return {"ok": {"renewed": renewed}}


@control_command(args=[("domain", str), ("owner", str)], signature="[domain] [owner]")
def mailflow_flush(state: Any, domain: str | None = None, owner: str | None = None,
                   **signed: Any) -> dict[str, Any]:
    """Flush this host's queue (or nothing, if it has none or is not ``owner``); only when
    the broadcast carries mailflow's MAC (``mailflow.flush_queue`` signs it)."""
    if not authentic.broadcast_accepted("mailflow_flush", {"domain": domain, "owner": owner, **signed}):
        return {"error": "refused"}
    spool = _local_spool()
    if spool is None or (owner and owner != spool.identity):
        return {"ok": {}}
    return {"ok": {"owner": spool.identity, "flushed": flush(spool, domain or None)}}


@inspect_command()
def mailflow_stats(state: Any) -> dict[str, Any]:
    """This host's queue statistics, by its identity (``mailflow queue stats --cluster``)."""
    spool = _local_spool()
    return {"owner": spool.identity, "stats": queuetools.stats(spool)} if spool else {}


@worker_shutdown.connect
def _stop_queue_manager(**_kwargs: Any) -> None:
    _stopping.set()
    HOLDINGS.stop()
    while _qmgr:
        _qmgr.pop().stop()
