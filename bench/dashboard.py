"""The Grafana dashboard (deploy/grafana/mailflow.json) drawn from a real run, for the README.

Grafana itself does not run here: it is under the AGPL, which this project does not take
on, and no registry this machine reaches has it.  So this draws what Grafana would from the
same JSON: each panel's PromQL, asked of a real Prometheus (Debian's ``prometheus``) that
scraped a real mailflow run every second, laid out on the dashboard's 24-column grid as
line charts with their titles, units and legends, and photographed by headless Chromium.
The run is a few minutes of mixed mail -- deliveries at a rate that rises and falls,
deferrals, bounces, a shaping rule that throttles one domain, STARTTLS on one MX, a webhook
receiver -- so that every panel has something to show.

    python -m bench.dashboard [--minutes 4] [--out docs/dashboard.png]

tests/integration/test_dashboard.py runs the same pieces briefly: every panel's query
must answer from real metrics, and the page must be drawn.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "mailflow.json"
#: Grafana's own palette, in the order it gives series their colours.
COLOURS = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0")
ROW_PX = 30  #: Grafana's grid: a gridPos height unit
WIDTH_PX = 1600


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@contextmanager
def prometheus(target: str, port: int, interval: str = "1s") -> Iterator[str]:
    """Debian's Prometheus scraping ``target`` (host:port) every ``interval``; yields its URL."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian package prometheus)")
    with tempfile.TemporaryDirectory(prefix="mailflow-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
                          f"scrape_configs:\n  - job_name: mailflow\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                        break
                except OSError as exc:
                    if isinstance(exc, urllib.error.HTTPError):
                        exc.close()  # it holds the answer (503 while starting) open
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        raise RuntimeError(f"prometheus did not start: {err[-2000:]}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stderr:
                proc.stderr.close()


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]


@dataclass
class Panel:
    title: str
    unit: str
    grid: dict[str, int]
    targets: list[dict[str, str]]


def panels(dashboard: dict[str, Any]) -> list[Panel]:
    return [Panel(p.get("title", ""), p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"),
                  p["gridPos"], p.get("targets", [])) for p in dashboard["panels"]]


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """Prometheus's answer to one PromQL range query (its ``data.result``); an error raises."""
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{query}", timeout=30) as answer:
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body}")
    return list(body["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    out = template or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return out or "value"


def series_of(base: str, panel: Panel, start: float, end: float, step: float) -> list[Series]:
    found = []
    for target in panel.targets:
        for result in query_range(base, target["expr"], start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"] if math.isfinite(float(v))]
            found.append(Series(legend(target.get("legendFormat", ""), result["metric"]), points))
    return found


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if 0 < abs(value) < 1 else f"{value:.3g} s"
    suffix = " ops/s" if unit == "ops" else ""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}K{suffix}"
    return f"{value:.3g}{suffix}"


def chart(series: list[Series], unit: str, start: float, end: float, width: int, height: int) -> str:
    """One timeseries panel's plot, as Grafana draws it: lines on a dark ground, a y axis in
    the panel's unit, times along the bottom."""
    left, right, top, bottom = 64, 12, 8, 22
    w, h = width - left - right, height - top - bottom
    top_value = max((v for s in series for _, v in s.points), default=0.0)
    top_value = top_value * 1.1 if top_value > 0 else 1.0

    def x(t: float) -> float:
        return left + (t - start) / max(end - start, 1e-9) * w

    def y(v: float) -> float:
        return top + h - v / top_value * h
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):
        value = top_value * i / 4
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#2c3235"/><text x="{left - 6}" y="{y(value) + 4:.1f}" fill="#9fa7b3" '
                     f'font-size="11" text-anchor="end">{html.escape(fmt(value, unit))}</text>')
    for i in range(6):
        t = start + (end - start) * i / 5
        label = datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")
        anchor = "end" if i == 5 else "middle"  # the last one inside the panel, not cut off
        parts.append(f'<text x="{x(t):.1f}" y="{height - 6}" fill="#9fa7b3" font-size="11" '
                     f'text-anchor="{anchor}">{label}</text>')
    for n, s in enumerate(series):
        if not s.points:
            continue
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def page(dashboard: dict[str, Any], base: str, start: float, end: float, step: float = 5.0) -> str:
    """The whole dashboard as one HTML page on Grafana's grid (24 columns, 30 px rows)."""
    cell = WIDTH_PX / 24
    boxes = []
    rows = 0
    for panel in panels(dashboard):
        g = panel.grid
        rows = max(rows, g["y"] + g["h"])
        width, height = int(g["w"] * cell) - 8, g["h"] * ROW_PX - 8
        found = series_of(base, panel, start, end, step)
        legend_html = "".join(
            f'<span class="key"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>'
            f'{html.escape(s.name)}</span>' for i, s in enumerate(found))
        boxes.append(
            f'<div class="panel" style="left:{g["x"] * cell + 4:.0f}px;top:{g["y"] * ROW_PX + 4}px;'
            f'width:{width}px;height:{height}px"><div class="title">{html.escape(panel.title)}</div>'
            f'{chart(found, panel.unit, start, end, width - 16, height - 56)}'
            f'<div class="legend">{legend_html or "No data"}</div></div>')
    when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M") + " to " + \
        datetime.fromtimestamp(end, UTC).strftime("%H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #111217; font-family: Inter, Helvetica, Arial, sans-serif; color: #ccccdc; }}
header {{ padding: 12px 16px; font-size: 18px; }} header small {{ color: #9fa7b3; font-size: 13px; }}
.grid {{ position: relative; height: {rows * ROW_PX + 8}px; width: {WIDTH_PX}px; }}
.panel {{ position: absolute; background: #181b1f; border: 1px solid #2c3235; border-radius: 2px;
  padding: 6px 8px; box-sizing: border-box; overflow: hidden; }}
.title {{ font-size: 13px; font-weight: 500; margin-bottom: 4px; }}
.legend {{ font-size: 11px; margin-top: 2px; }}
.key {{ margin-right: 12px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 14px; height: 4px; margin-right: 4px; vertical-align: middle; }}
</style></head><body><header>{html.escape(dashboard.get("title", ""))}
<small>&nbsp; {when}, Prometheus scraping a real run</small></header>
<div class="grid">{"".join(boxes)}</div></body></html>"""


def screenshot(html_text: str, png: Path, height: int) -> None:
    """The page photographed by headless Chromium (Debian's ``chromium``)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="mailflow-shot-") as tmp:
        source = Path(tmp) / "dashboard.html"
        source.write_text(html_text)
        png.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={WIDTH_PX},{height}",
                        f"--screenshot={png}", source.as_uri()],
                       check=True, capture_output=True, timeout=120)


def height_of(dashboard: dict[str, Any]) -> int:
    return max(p.grid["y"] + p.grid["h"] for p in panels(dashboard)) * ROW_PX + 60


def mixed_run(seconds: float, send: Callable[[str], None], *, rate: float = 4.0) -> int:
    """Mail for ``seconds``: deliveries at a rate that rises and falls around ``rate`` a
    second, one in ten deferred, one in twenty-five bounced, and a domain kept under a
    shaping rule; the number queued."""
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic() - started) < seconds:
        target = rate * now * (1 + 0.6 * math.sin(now / 25))
        while sent < target:
            n = sent
            if n % 25 == 7:
                send(f"gone{n}@dest.test")
            elif n % 10 == 3:
                send(f"later{n}@dest.test")
            elif n % 4 == 1:
                send(f"shaped{n}@equal.test")
            else:
                send(f"ok{n}@dest.test")
            sent += 1
        time.sleep(0.05)
    return sent


@contextmanager
def world(root: Path, shaped_per_minute: int = 40) -> Iterator[tuple[str, Callable[[str], None]]]:
    """The tests' world on Redis (tests/support/pipeline.py): the test DNS zone, an MX on
    127.0.0.2 and one with STARTTLS on 127.0.0.3, a worker serving metrics.ini, a webhook
    receiver and a shaping rule; yields the metrics endpoint (host:port) and a function that
    queues one message to an address (``later…`` deferred twice, ``gone…`` refused)."""
    import trustme

    from harness import brokers
    from harness.dnsserver import free_port
    from harness.httpsserver import Answer, HTTPSServer
    from harness.mxserver import MX_PORT, MXServer, tls_context
    from tests.support.pipeline import make_env

    ca = trustme.CA()
    metrics_port = free_port()
    receiver = HTTPSServer("127.0.0.1", free_port()).start()
    receiver.routes["127.0.0.1"] = [Answer("ok")]
    plain = MXServer("127.0.0.2", MX_PORT).start()
    tls = MXServer("127.0.0.3", MX_PORT, tls_context=tls_context(ca)).start()
    env, inst = make_env(root, brokers.url_for("redis"),
                         base={"temp_fail_intervals": "20s, 40s, 1m", "enable_tls": "true"})
    try:
        ca.cert_pem.write_to_path(str(inst.config_dir / "ca.pem"))
        inst.write_config("tls.ini", "[outbound]\nca = ca.pem\n")
        inst.write_config("metrics.ini", f"listen = 127.0.0.1:{metrics_port}\n")
        inst.write_config("shaping.ini", f"[domain:equal.test]\nmessages_per_minute = {shaped_per_minute}\n")
        inst.write_config("webhooks.ini", f"[app]\nurl = http://127.0.0.1:{receiver.port}/hook\n"
                                          "events = delivered, deferred, bounced\n")
        worker = inst.procs[0]  # these files are read at start
        worker.stop()
        inst.procs.remove(worker)
        inst.start_worker("dashboard")

        def send(address: str) -> None:
            if address.startswith("later"):
                with plain.script.lock:
                    plain.script.rcpt[address] = ["451 4.2.1 mailbox busy", "451 4.2.1 mailbox busy"]
            elif address.startswith("gone"):
                with plain.script.lock:
                    plain.script.rcpt[address] = "550 5.1.1 no such user"
            env.send(address)
        yield f"127.0.0.1:{metrics_port}", send
    finally:
        inst.stop_all()
        env.dns.stop()
        plain.stop()
        tls.stop()
        receiver.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    from harness.dnsserver import free_port

    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory(prefix="mailflow-dashboard-") as tmp, \
            world(Path(tmp)) as (metrics_target, send), prometheus(metrics_target, free_port()) as base:
        start = time.time()
        queued = mixed_run(args.minutes * 60, send)
        time.sleep(20)  # the last retries and webhook events, and a few more scrapes
        end = time.time()
        text = page(dashboard, base, start, end)
    screenshot(text, args.out, height_of(dashboard))
    print(f"{queued} messages queued over {args.minutes:g} min; {args.out} written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
