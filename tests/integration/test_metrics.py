"""Prometheus metrics (issue 16 item 4): after a mixed run, the page parsed with
prometheus_client's own parser says what the MX and `queue stats` saw; promtool accepts it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
import uuid as uuidlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.dnsserver import free_port
from harness.instance import REPO
from tests.support.pipeline import Env, module_env


def _serve_metrics(e: Env) -> None:
    """metrics.ini is read at start: the worker is started again with it."""
    port = free_port()
    e.inst.write_config("metrics.ini", f"listen = 127.0.0.1:{port}\n")
    worker = e.inst.procs[0]
    worker.stop()
    e.inst.procs.remove(worker)
    e.inst.start_worker("deliver")
    e.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]


env = module_env("metrics", setup=_serve_metrics)


def scrape(env: Env) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(env.metrics_url, timeout=10) as response:  # type: ignore[attr-defined]
        page = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return page, values


def value(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def test_after_a_mixed_run_the_metrics_say_what_the_mx_and_queue_stats_saw(env, mx):
    tag = uuidlib.uuid4().hex[:8]
    later = [f"later{n}-{tag}@dest.test" for n in range(3)]
    gone = [f"gone{n}-{tag}@dest.test" for n in range(2)]
    server = mx(rcpt={**{a: "451 4.2.1 try later" for a in later},
                      **{a: "550 5.1.1 no such user" for a in gone}})
    for n in range(10):
        env.send(f"ok{n}-{tag}@dest.test")
    for address in later + gone:
        env.send(address)
    server.wait_for(12, timeout=60)  # 10, and the 2 bounces to sender.test's MX (the same server)
    env.wait(lambda: len(env.inst.entries("pending")) == 3)

    def settled():
        page, values = scrape(env)
        attempts = values.get(("mailflow_attempt_seconds_count", (("destination", "other"),)), 0)
        return (page, values) if value(values, "mailflow_delivery_seconds_count") == 12 and \
            attempts == 17 else None  # 15 sent and 2 bounces, one attempt each

    page, values = env.wait(settled, timeout=30)  # each process writes its figures every 5 s
    stats = json.loads(env.inst.mailflow("queue", "stats", "--json").stdout)
    delivered = value(values, "mailflow_messages_total", outcome="delivered", tenant="-")
    assert delivered == stats["delivered"] == 12
    assert len(server.deliveries) == 12
    assert value(values, "mailflow_messages_total", outcome="bounced", tenant="-") == stats["bounced"] == 2
    assert value(values, "mailflow_messages_total", outcome="queued", tenant="-") == 17  # 15 sent, 2 bounces
    assert value(values, "mailflow_messages_total", outcome="deferred", tenant="-") == 3
    assert value(values, "mailflow_messages_total", outcome="dropped", tenant="-") == stats["dropped"] == 0
    assert value(values, "mailflow_queue_entries", state="waiting") == stats["waiting"] == 3
    assert value(values, "mailflow_queue_entries", state="in_progress") == 0
    assert value(values, "mailflow_queue_oldest_age_seconds") > 0
    assert value(values, "mailflow_deliveries_total", tls_level="none") == 12
    assert value(values, "mailflow_webhook_backlog") == 0
    assert value(values, "mailflow_shaping_redis_fallbacks_total") == 0
    assert value(values, "mailflow_delivery_seconds_bucket", le="+Inf") == 12
    assert value(values, "mailflow_delivery_seconds_bucket", le="60.0") == 12
    assert value(values, "mailflow_connections", state="open") >= value(values, "mailflow_connections",
                                                                        state="idle")
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool (Debian's prometheus) is required under CI; tests/services.sh "
                        "installs it")
        return
    checked = subprocess.run([promtool, "check", "metrics"], input=page.encode(), capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_malformed_metrics_ini_is_file_line_and_exit_non_zero(make_instance):
    inst = make_instance()
    inst.write_config("metrics.ini", "listen = 127.0.0.1:notaport\n")
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0
    assert f"{inst.config_dir / 'metrics.ini'}:1: listen" in done.stderr.decode()


def test_the_grafana_dashboard_asks_only_for_metrics_the_page_has(env):
    page, _ = scrape(env)
    names = {f.name for f in text_string_to_metric_families(page)}
    exposed = names | {f"{n}_total" for n in names} | {f"{n}_bucket" for n in names}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "mailflow.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bmailflow_[a-z_]+", e)}
    assert used and used <= exposed, used - exposed
