"""``metrics.md``: every family the Prometheus endpoint serves."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mailflow.observation.metrics import METRICS
from mailflow.reference.markdown import GENERATED, code, table

INTRO = """\
# Metrics

One endpoint per host (`metrics.ini` `listen`, e.g. `127.0.0.1:9464`, path `/metrics`),
served by whichever worker of the host binds it first; it reports the whole host -- every
listener and worker process -- and moves to a survivor when that worker stops. Counters
are kept on disk, so they survive restarts. `deploy/grafana/mailflow.json` is a dashboard
of these.

"""


def _type(family: type) -> str:
    if family is CounterMetricFamily:
        return "counter"
    if family is GaugeMetricFamily:
        return "gauge"
    return "histogram"


def page() -> str:
    rows = [(code(m.name + ("_total" if _type(m.family) == "counter" else "")), _type(m.family),
             ", ".join(code(label) for label in m.labels),
             m.help + (f" ({m.labels[0]}: {m.label_values})" if m.label_values else ""))
            for m in METRICS.values()]
    return GENERATED + INTRO + table(("Name", "Type", "Labels", "Meaning"), rows)
