"""deploy/grafana/mailflow.json against real metrics: a real Prometheus (Debian's) scrapes a
short mixed run, every panel's query answers with data, and the page is drawn and
photographed (bench/dashboard.py, which makes the README's screenshot the same way)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from bench import dashboard
from harness.dnsserver import free_port

NEEDED = {"prometheus": dashboard.prometheus_binary(),
          "chromium": shutil.which("chromium") or shutil.which("chromium-browser")}
MISSING = [name for name, found in NEEDED.items() if not found]
pytestmark = pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"),
                                reason=f"not installed: {', '.join(MISSING)} (Debian packages)")


def test_every_panel_of_the_dashboard_answers_from_a_real_run_and_is_drawn(tmp_path):
    assert not MISSING, f"CI must have {', '.join(MISSING)} (tests/services.sh installs them)"
    board = json.loads(dashboard.DASHBOARD.read_text())
    with dashboard.world(tmp_path / "run", shaped_per_minute=10) as (target, send), \
            dashboard.prometheus(target, free_port()) as base:
        start = time.time()
        queued = dashboard.mixed_run(25, send, rate=4.0)
        by_panel: dict[str, int] = {}

        def every_panel_has_data() -> bool:
            end = time.time()
            for panel in dashboard.panels(board):
                by_panel[panel.title] = sum(
                    len(s.points) for s in dashboard.series_of(base, panel, start, end, 2.0))
            return all(by_panel.values())
        deadline = time.monotonic() + 90
        while not every_panel_has_data():  # rates need two scrapes after the first event
            assert time.monotonic() < deadline, f"panels without data: {by_panel}"
            time.sleep(1)
        text = dashboard.page(board, base, start, time.time(), step=2.0)
    assert queued >= 80
    assert text.count('class="panel"') == len(board["panels"]) and "No data" not in text
    png = tmp_path / "dashboard.png"
    dashboard.screenshot(text, png, dashboard.height_of(board))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
