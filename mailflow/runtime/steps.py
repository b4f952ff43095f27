"""The worker's long-lived parts, one Celery bootstep each (Celery's own answer to "a
component that starts with the worker and stops with it, in order").

They start before the consumer takes its first task and stop, in the reverse order, after
it has stopped taking tasks on a warm shutdown; each waits on an event, never in a sleep,
so the stop takes a second, not an hour (mailflow/runtime/services.py).

========================  =====================================================================
``QueueSteps``            the queue manager of an owner host; on a worker host, the watch
                          for a queue directory to appear
``Renewal``               the broadcast that renews claims held for other hosts' queues
``Webhooks``              the due webhook events of this host's queue, every second
``TlsReports``            the finished days' TLS reports, every hour
``Observation``           the metrics endpoint and sampler, the process title, the DANE check
``ConfigWatch``           the live config files (outbound.ini, tls.ini, routes.ini) looked at
                          every second, so a change is taken up and logged without traffic
``ProcessParts``          what any delivery leaves running: the lease renewer, the pool's
                          reaper and its idle sessions -- stopped last
========================  =====================================================================
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from mailflow import config
from mailflow.config import RELOAD_CHECK_INTERVAL, environ
from mailflow.config.settings import Tls
from mailflow.observation import metrics, proctitle
from mailflow.pipeline import shaping as route_shaping
from mailflow.queue import claims, events
from mailflow.queue import manager as qmgr
from mailflow.queue.identity import owner_queue
from mailflow.queue.spool import Spool
from mailflow.relay import dane
from mailflow.relay.fence import HOLDINGS
from mailflow.relay.pool import POOL
from mailflow.reports import tls as tls_reports
from mailflow.runtime import authentic
from mailflow.runtime.application import app
from mailflow.runtime.eventbatch import EventBatches
from mailflow.runtime.services import Ticker

log = logging.getLogger(__name__)

#: How often a worker host looks for a queue directory of its own.
QUEUE_WATCH_EVERY = 1.0
#: How often (s) an owner's workers send the due webhook events on their way.
WEBHOOK_DISPATCH = 1.0
#: How often (s) a worker looks for a finished day's TLS reports to send.
TLS_REPORT_CHECK = 3600.0


def local_spool() -> Spool | None:
    """This host's queue directory, when it has one (made here on the embedded broker)."""
    spool = Spool(config.current().queue_path())
    if environ.broker_url().startswith("filesystem://"):
        return spool.ensure()
    return spool if spool.exists() else None


def embedded() -> bool:
    return environ.broker_url().startswith("filesystem://")


class Part(bootsteps.StartStopStep):
    """A worker part: started before the consumer, stopped after it (warm or cold)."""

    requires: tuple[Any, ...] = ("celery.worker.components:Pool",)

    def terminate(self, parent: Any) -> None:  # a cold shutdown stops it the same way
        self.stop(parent)


class QueueSteps(Part):
    """An owner's workers each offer to run its queue manager (one holds the queue's lock);
    a worker host waits for a queue directory of its own, then serves it."""

    label = "mailflow queue"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.manager: qmgr.QueueManager | None = None
        self.node: str | None = None
        self.watch = Ticker("queue-watch", self._look_for_a_queue, QUEUE_WATCH_EVERY, first=False)

    def start(self, parent: Any) -> None:
        self.node = getattr(parent, "hostname", None)
        if local_spool() is not None:
            self.manager = qmgr.QueueManager(config.current(), held=route_shaping.held).start()
        else:
            self.watch.start()

    def _look_for_a_queue(self) -> bool:
        spool = local_spool()
        if spool is None:
            return True
        log.info("a queue directory appeared at %s: serving the queue %s", spool.root, spool.identity)
        app.control.add_consumer(owner_queue(spool.identity), reply=False,
                                 destination=[self.node] if self.node else None)
        self.manager = qmgr.QueueManager(config.current(), held=route_shaping.held).start()
        return False

    def stop(self, parent: Any) -> None:
        self.watch.stop()
        if self.manager is not None:
            self.manager.stop()
            self.manager = None


class Renewal(Part):
    """Renew the claims held here, say whether this is a worker host, hear the broker
    (mailflow/relay/fence.py); not on the embedded broker, which has one host only."""

    label = "mailflow renewal"

    def start(self, parent: Any) -> None:
        node = getattr(parent, "hostname", None)
        if node is None or embedded():
            return

        def describe() -> dict[str, Any]:
            return {"node": node, "worker_host": local_spool() is None}

        def broadcast(arguments: dict[str, Any]) -> None:
            app.control.broadcast("mailflow_renew",
                                  arguments=authentic.signed("mailflow_renew", arguments), reply=False)

        HOLDINGS.start(broadcast, describe)

    def stop(self, parent: Any) -> None:
        HOLDINGS.stop()


def _dispatch_webhook_events() -> None:
    """The due events of this host's queue go out in batches (one worker of the host does)."""
    cfg = config.current()
    if cfg.webhooks and local_spool() is not None:
        events.dispatch(cfg.queue_path())


class Webhooks(Part):
    label = "mailflow webhooks"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.ticker = Ticker("webhooks", _dispatch_webhook_events, WEBHOOK_DISPATCH, first=False)

    def start(self, parent: Any) -> None:
        self.ticker.start()

    def stop(self, parent: Any) -> None:
        self.ticker.stop()


def _send_tls_reports() -> None:
    """The finished days' TLS reports (one process per host sends them)."""
    cfg = config.current()
    if cfg.tls_outbound.tls_report:
        tls_reports.send_due_locked(cfg)


class TlsReports(Part):
    label = "mailflow TLS reports"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.ticker = Ticker("tls-reports", _send_tls_reports, TLS_REPORT_CHECK)

    def start(self, parent: Any) -> None:
        self.ticker.start()

    def stop(self, parent: Any) -> None:
        self.ticker.stop()


def say_whether_dane_validates(tls: Tls) -> None:
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


class Observation(Part):
    label = "mailflow observation"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.endpoint = metrics.Endpoint()
        self.title: Ticker | None = None

    def start(self, parent: Any) -> None:
        self.title = proctitle.start("worker", config.current())
        say_whether_dane_validates(config.current().tls_outbound)
        self.endpoint.start()

    def stop(self, parent: Any) -> None:
        self.endpoint.stop()
        if self.title is not None:
            self.title.stop()


def watch_config() -> Ticker:
    """A look at the live config files once a reload interval: a change is taken up -- and
    logged -- within seconds even when no mail comes to ask for the settings."""
    return Ticker("config-watch", lambda: config.current().reload_if_changed(), RELOAD_CHECK_INTERVAL,
                  first=False)


class ConfigWatch(Part):
    label = "mailflow config watch"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.ticker = watch_config()

    def start(self, parent: Any) -> None:
        self.ticker.start()

    def stop(self, parent: Any) -> None:
        self.ticker.stop()


class ProcessParts(Part):
    """What deliveries leave running in this process: stopped after every other part."""

    label = "mailflow process parts"

    def start(self, parent: Any) -> None:
        """Nothing: these start with the first delivery that needs them."""

    def stop(self, parent: Any) -> None:
        claims.RENEWER.stop()
        POOL.stop()


#: In start order (each after the one before it); they stop in the reverse order.
STEPS = (ProcessParts, ConfigWatch, Observation, TlsReports, Webhooks, Renewal, QueueSteps)


def install() -> None:
    """Add the parts to the worker's blueprint, each requiring the one before it."""
    previous: type[Part] | None = None
    for step in STEPS:
        if previous is not None:
            step.requires = (previous,)
        app.steps["worker"].add(step)
        previous = step
    app.steps["consumer"].add(EventBatches)
