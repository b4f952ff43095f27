"""Prometheus metrics, one endpoint per host, right across all of its processes.

Most figures are read at scrape time from what every process already shares on the
host: the queue directory (entries by state, the oldest one's age, the webhook backlog)
and the append-only counters in ``queue/.counters/`` (totals by outcome and by TLS
level).  What lives only in a process -- the delivery-time histogram and the pool's
open and idle connections -- each process writes to ``<state>/metrics/<pid>-<token>.json``
every few seconds; the endpoint adds the histograms of every file (totals survive the
process) and the connection gauges of the processes still alive.

One worker of the host binds ``metrics.ini``'s ``listen``; the others try again every
half minute, so the endpoint moves to a survivor when its process ends.  The page is
rendered by prometheus_client from these figures (a custom collector), so its format
is the library's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mailflow import config
from mailflow.config.loader import Config
from mailflow.observation.sampler import ATTEMPT_BUCKETS, BUCKETS, SAMPLER, samples, tls_counter
from mailflow.pipeline.shaping import in_force
from mailflow.queue import counters, events
from mailflow.queue import tools as queuetools
from mailflow.queue.spool import Spool
from mailflow.relay.pool import POOL
from mailflow.relay.shaping import shaper_for
from mailflow.runtime import authentic
from mailflow.runtime.services import Ticker

log = logging.getLogger(__name__)

#: Upper bounds (s) of the delivery-time buckets: queue to delivered, retries included.
TLS_LEVELS = ("none", "opportunistic", "verified", "mta-sts", "dane")
OUTCOMES = ("queued", "delivered", "deferred", "bounced", "dropped")
#: counter files for the outcomes that the queue tools' own counters do not hold
OUTCOME_COUNTERS = {"queued": "queued_total", "deferred": "deferred_total"}
BIND_RETRY = 30.0
QUEUE_STATES = ("queued", "in_progress", "waiting")
CONNECTION_STATES = ("open", "idle")


@dataclass(frozen=True)
class Metric:
    """One family the endpoint serves: the registry the collector and the reference share."""

    name: str
    family: type  #: prometheus_client's Counter-, Gauge- or HistogramMetricFamily
    help: str
    labels: tuple[str, ...] = ()
    #: what the label takes, in words (the reference lists it)
    label_values: str = ""

    def new(self, **kwargs: Any) -> Any:
        """An empty family of this metric; ``kwargs``: value= for one without labels."""
        return self.family(self.name, self.help, labels=list(self.labels) or None, **kwargs)


METRICS = {m.name: m for m in (
    Metric("mailflow_messages", CounterMetricFamily, "Queue entries by what became of them",
           ("outcome", "tenant"), f"{', '.join(OUTCOMES)}; tenant: a tenant tenants.ini "
           "lists, other (any other tenant), - (no tenant)"),
    Metric("mailflow_replies", CounterMetricFamily, "Failed attempts' replies by class and destination",
           ("class", "destination"), "class: a reply class (mailflow classify); destination: the "
           "shaping rule the destination falls under, or other"),
    Metric("mailflow_queue_entries", GaugeMetricFamily, "Entries in the queue now, by state",
           ("state",), ", ".join(QUEUE_STATES)),
    Metric("mailflow_queue_oldest_age_seconds", GaugeMetricFamily, "Age of the oldest entry"),
    Metric("mailflow_deliveries", CounterMetricFamily, "Delivered entries by TLS level",
           ("tls_level",), ", ".join(TLS_LEVELS)),
    Metric("mailflow_webhook_backlog", GaugeMetricFamily, "Webhook events not yet accepted"),
    Metric("mailflow_refused_tasks", CounterMetricFamily, "Broker messages refused: no valid MAC"),
    Metric("mailflow_delivery_seconds", HistogramMetricFamily,
           "Time from queueing to delivery (retries included)"),
    Metric("mailflow_connections", GaugeMetricFamily, "Outbound SMTP connections",
           ("state",), ", ".join(CONNECTION_STATES)),
    Metric("mailflow_shaping_throttled", CounterMetricFamily,
           "Times a shaping rule held mail back (a batch, a connection or a message)",
           ("rule",), "the rule's section name, domain:example.com"),
    Metric("mailflow_attempt_seconds", HistogramMetricFamily,
           "One delivery attempt, by destination (shaping rule or other)",
           ("destination",), "the shaping rule the destination falls under, or other"),
    Metric("mailflow_shaping_redis_fallbacks", CounterMetricFamily,
           "Shaping decisions made on this host alone while Redis did not answer"),
    Metric("mailflow_shaping_suspended_seconds", GaugeMetricFamily,
           "Seconds left of a shaping rule's suspension", ("rule",),
           "the rule's section name, for rules with suspend_on"),
    Metric("mailflow_backoff", GaugeMetricFamily,
           "Share of its normal rate a source may send to a site that asked it to slow down "
           "(0 while suspended); only sites in backoff are listed", ("site", "source"),
           "site: the MX hosts' registrable domain; source: the egress source's name, its "
           "address, or default"),
)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class HostCollector(Collector):
    """The host's figures, read afresh at each scrape."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def _messages(self, root: Path) -> Any:
        """Outcomes by tenant: those tenants.ini lists by name, the rest as ``other`` (a client
        naming tenants cannot grow the series without bound), ``-`` for mail of none."""
        totals = METRICS["mailflow_messages"].new()
        counted = counters.tenants(root)
        for outcome in OUTCOMES:
            name = OUTCOME_COUNTERS.get(outcome, outcome)
            by_label: dict[str, int] = {"-": 0, **dict.fromkeys(self.cfg.tenants.by_name, 0), "other": 0}
            for tenant in counted:
                label = counters.NO_TENANT if tenant == counters.NO_TENANT else self.cfg.tenants.label(tenant)
                by_label[label] += counters.read_tenant(root, tenant, name)
            for label, value in by_label.items():
                totals.add_metric([outcome, label], value)
        return totals

    def collect(self) -> Iterator[Any]:
        spool = Spool(self.cfg.queue_path())
        root = spool.root
        stats, oldest = queuetools.census(spool) if spool.exists() else ({}, None)
        yield self._messages(root)
        replies = METRICS["mailflow_replies"].new()
        for (cls, destination), value in sorted(counters.replies(root).items()):
            replies.add_metric([cls, destination], value)
        yield replies
        entries = METRICS["mailflow_queue_entries"].new()
        for state in QUEUE_STATES:
            entries.add_metric([state], stats.get(state, 0))
        yield entries
        yield METRICS["mailflow_queue_oldest_age_seconds"].new(value=queuetools.age_of(oldest))
        tls = METRICS["mailflow_deliveries"].new()
        for level in TLS_LEVELS:
            tls.add_metric([level], counters.read(root, tls_counter(level)))
        yield tls
        yield METRICS["mailflow_webhook_backlog"].new(value=events.backlog(root))
        yield METRICS["mailflow_refused_tasks"].new(value=authentic.refused())
        yield from self._sampled()
        suspended = METRICS["mailflow_shaping_suspended_seconds"].new()
        if self.cfg.shaping:
            shaper = shaper_for(self.cfg.shared_redis())
            for rule in self.cfg.shaping:
                if rule.suspend_on:
                    suspended.add_metric([rule.name], shaper.suspended(rule))
        yield suspended
        backoff = METRICS["mailflow_backoff"].new()
        for key, (_, share) in in_force(self.cfg).items():
            backoff.add_metric(list(key.rsplit("/", 1)), share)
        yield backoff

    def _sampled(self) -> Iterator[Any]:
        found = samples()
        buckets = [0] * len(BUCKETS)
        count, total = 0, 0.0
        open_now = idle_now = 0
        throttled: dict[str, int] = {}
        for sample in found:
            for name, n in (sample.get("counts") or {}).items():
                if name.startswith("throttled:"):
                    rule = name.split(":", 1)[1]
                    throttled[rule] = throttled.get(rule, 0) + int(n)
            for i, n in enumerate(sample.get("buckets", [])[: len(BUCKETS)]):
                buckets[i] += int(n)
            count += int(sample.get("count", 0))
            total += float(sample.get("sum", 0.0))
            if _alive(int(sample.get("pid", 0))):
                open_now += int(sample.get("open", 0))
                idle_now += int(sample.get("idle", 0))
        histogram = METRICS["mailflow_delivery_seconds"].new(
            buckets=[(floatToGoString(b), n) for b, n in zip(BUCKETS, buckets, strict=True)]
            + [("+Inf", count)],
            sum_value=total)
        yield histogram
        connections = METRICS["mailflow_connections"].new()
        connections.add_metric(["open"], open_now)
        connections.add_metric(["idle"], idle_now)
        yield connections
        family = METRICS["mailflow_shaping_throttled"].new()
        for rule, n in sorted(throttled.items()):
            family.add_metric([rule], n)
        yield family
        attempts: dict[str, list[float]] = {}
        for sample in found:
            for destination, row in (sample.get("attempts") or {}).items():
                if len(row) != len(ATTEMPT_BUCKETS) + 2:
                    continue
                total_row = attempts.setdefault(destination, [0.0] * len(row))
                for i, v in enumerate(row):
                    total_row[i] += float(v)
        family_a = METRICS["mailflow_attempt_seconds"].new()
        for destination, row in sorted(attempts.items()):
            family_a.add_metric([destination], [(floatToGoString(b), row[i]) for i, b in
                                                enumerate(ATTEMPT_BUCKETS)] + [("+Inf", row[-2])],
                                sum_value=row[-1])
        yield family_a
        fallbacks = sum(int((s.get("counts") or {}).get("shaping_fallback", 0)) for s in found)
        yield METRICS["mailflow_shaping_redis_fallbacks"].new(value=fallbacks)


def registry(cfg: Config) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HostCollector(cfg))
    return reg


class Endpoint:
    """The host's ``/metrics``: bound by this process, or tried again every half minute while
    another process of the host holds it; the sampler's file written meanwhile."""

    def __init__(self) -> None:
        self._server: Any = None
        self._announced = False
        self._binder = Ticker("metrics-bind", self._bind, BIND_RETRY)

    def start(self) -> Endpoint:
        SAMPLER.gauges["open"] = lambda: POOL.open_connections
        SAMPLER.gauges["idle"] = lambda: POOL.idle_connections
        SAMPLER.start()
        self._binder.start()
        return self

    def _bind(self) -> bool:
        """False once there is nothing more to try: bound, or no endpoint configured."""
        cfg = config.current()
        listen = cfg.metrics.listen
        if listen is None:
            return False
        try:
            self._server, _ = start_http_server(listen[1], addr=listen[0], registry=registry(cfg))
        except OSError as exc:
            if not self._announced:
                log.info("metrics: %s:%d is served by another process (%s); standing by", *listen,
                         exc.strerror or exc)
                self._announced = True
            return True
        log.info("metrics on http://%s:%d/metrics", *listen)
        return False

    def stop(self) -> None:
        self._binder.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        SAMPLER.stop()
