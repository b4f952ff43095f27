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
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mailflow import config
from mailflow.config.loader import Config
from mailflow.queue import counters, events
from mailflow.queue import tools as queuetools
from mailflow.queue.spool import Spool
from mailflow.relay.pool import POOL
from mailflow.relay.shaping import shaper_for
from mailflow.runtime import authentic
from mailflow.sampler import ATTEMPT_BUCKETS, BUCKETS, SAMPLER, samples, tls_counter

log = logging.getLogger(__name__)

#: Upper bounds (s) of the delivery-time buckets: queue to delivered, retries included.
TLS_LEVELS = ("none", "opportunistic", "verified", "mta-sts", "dane")
OUTCOMES = ("queued", "delivered", "deferred", "bounced", "dropped")
#: counter files for the outcomes that the queue tools' own counters do not hold
OUTCOME_COUNTERS = {"queued": "queued_total", "deferred": "deferred_total"}
BIND_RETRY = 30.0


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

    def collect(self) -> Iterator[Any]:
        spool = Spool(self.cfg.queue_path())
        root = spool.root
        stats, oldest = queuetools.census(spool) if spool.exists() else ({}, None)
        totals = CounterMetricFamily("mailflow_messages", "Queue entries by what became of them",
                                     labels=["outcome"])
        for outcome in OUTCOMES:
            totals.add_metric([outcome], counters.read(root, OUTCOME_COUNTERS.get(outcome, outcome)))
        yield totals
        entries = GaugeMetricFamily("mailflow_queue_entries", "Entries in the queue now, by state",
                                    labels=["state"])
        for state in ("queued", "in_progress", "waiting"):
            entries.add_metric([state], stats.get(state, 0))
        yield entries
        yield GaugeMetricFamily("mailflow_queue_oldest_age_seconds", "Age of the oldest entry",
                                value=queuetools.age_of(oldest))
        tls = CounterMetricFamily("mailflow_deliveries", "Delivered entries by TLS level",
                                  labels=["tls_level"])
        for level in TLS_LEVELS:
            tls.add_metric([level], counters.read(root, tls_counter(level)))
        yield tls
        yield GaugeMetricFamily("mailflow_webhook_backlog", "Webhook events not yet accepted",
                                value=events.backlog(root))
        yield CounterMetricFamily("mailflow_refused_tasks", "Broker messages refused: no valid MAC",
                                  value=authentic.refused())
        yield from self._sampled()
        suspended = GaugeMetricFamily("mailflow_shaping_suspended_seconds",
                                      "Seconds left of a shaping rule's suspension", labels=["rule"])
        if self.cfg.shaping:
            shaper = shaper_for(self.cfg.shared_redis())
            for rule in self.cfg.shaping:
                if rule.suspend_on:
                    suspended.add_metric([rule.name], shaper.suspended(rule))
        yield suspended

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
        histogram = HistogramMetricFamily(
            "mailflow_delivery_seconds", "Time from queueing to delivery",
            buckets=[(floatToGoString(b), n) for b, n in zip(BUCKETS, buckets, strict=True)]
            + [("+Inf", count)],
            sum_value=total)
        yield histogram
        connections = GaugeMetricFamily("mailflow_connections", "Outbound SMTP connections",
                                        labels=["state"])
        connections.add_metric(["open"], open_now)
        connections.add_metric(["idle"], idle_now)
        yield connections
        family = CounterMetricFamily("mailflow_shaping_throttled",
                                     "Times a shaping rule held mail back (a batch, a connection or a "
                                     "message)", labels=["rule"])
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
        family_a = HistogramMetricFamily("mailflow_attempt_seconds",
                                         "One delivery attempt, by destination (shaping rule or other)",
                                         labels=["destination"])
        for destination, row in sorted(attempts.items()):
            family_a.add_metric([destination], [(floatToGoString(b), row[i]) for i, b in
                                                enumerate(ATTEMPT_BUCKETS)] + [("+Inf", row[-2])],
                                sum_value=row[-1])
        yield family_a
        yield CounterMetricFamily("mailflow_shaping_redis_fallbacks",
                                  "Shaping decisions made on this host alone while Redis did not answer",
                                  value=sum(int((s.get("counts") or {}).get("shaping_fallback", 0))
                                            for s in found))


def registry(cfg: Config) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HostCollector(cfg))
    return reg


def serve_forever() -> None:
    """Bind the host's endpoint, or keep trying while another process holds it."""
    SAMPLER.gauges["open"] = lambda: POOL.open_connections
    SAMPLER.gauges["idle"] = lambda: POOL.idle_connections
    SAMPLER.start()
    announced = False
    while True:
        cfg = config.current()
        listen = cfg.metrics.listen
        if listen is None:
            return
        try:
            start_http_server(listen[1], addr=listen[0], registry=registry(cfg))
            log.info("metrics on http://%s:%d/metrics", *listen)
            return
        except OSError as exc:
            if not announced:
                log.info("metrics: %s:%d is served by another process (%s); standing by", *listen,
                         exc.strerror or exc)
                announced = True
        time.sleep(BIND_RETRY)
