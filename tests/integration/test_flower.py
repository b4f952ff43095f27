"""Flower with what the repo ships: the pipeline tasks by name and state, via its API and its page."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.dnsserver import free_port
from harness.instance import Instance
from harness.mxserver import MXServer
from harness.waiting import until
from tests.support.flower import flower_api, start_flower
from tests.support.pipeline import PORT, make_env

REPO = Path(__file__).resolve().parents[2]
AUTH = "admin:flower-secret"
PIPELINE = {"mailflow.lookup_mx", "mailflow.acquire_connection", "mailflow.transmit"}


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    env, inst = make_env(tmp_path_factory.mktemp("flower"), None)
    port = free_port()
    start_flower(inst, port, AUTH)  # hearing the worker's events before the mail goes
    server = MXServer("127.0.0.2", PORT, users={"relay": "mx-password-1"}).start()
    route = {"mx": {"exchange": "127.0.0.2", "port": PORT, "auth_user": "relay",
                    "auth_pass": "mx-password-1"}}
    for n in range(5):
        env.send(f"u{n}@flower.test", notes=route, body=f"Subject: s\n\nsecret body {n}\n")
    server.wait_for(5)
    yield port, env
    server.stop()
    inst.stop_all()
    env.dns.stop()


def api(port: int, path: str) -> Any:
    return flower_api("127.0.0.1", port, AUTH, path)


def test_api_shows_the_pipeline_tasks_succeeded_without_secrets(flower):
    port, env = flower
    def succeeded() -> set[str]:
        return {t["name"] for t in api(port, "/api/tasks").values() if t.get("state") == "SUCCESS"}

    until(lambda: succeeded() >= PIPELINE, 30, lambda: str(succeeded()))
    tasks = api(port, "/api/tasks")
    text = json.dumps(tasks)
    assert "mx-password-1" not in text and "secret body" not in text
    transmits = [t for t in tasks.values() if t["name"] == "mailflow.transmit"]
    assert all("flower.test" in t["args"] for t in transmits)  # args identify the entries
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=10)
    assert denied.value.code == 401
    denied.value.close()  # an HTTPError holds the answer open


def test_each_step_shows_what_became_of_the_mail_in_its_result(flower):
    """Issue 13, item 5: without a result backend, Flower's Result column says per task how
    many entries were delivered, deferred, failed, handed on -- counts only."""
    port, env = flower
    env.send("u@nxdomain.test")  # NXDOMAIN: failed at lookup, then bounced

    def results() -> list[dict[str, Any]]:
        return [{"name": t["name"], **ast.literal_eval(t["result"])}
                for t in api(port, "/api/tasks").values()
                if t.get("state") == "SUCCESS" and t.get("result") and t["result"].startswith("{")]

    def settled() -> list[dict[str, Any]] | None:
        got = results()
        nx = [r for r in got if r["name"] == "mailflow.lookup_mx" and r.get("domain") == "nxdomain.test"]
        bounced = [r for r in got if r["name"] == "mailflow.bounce" and r.get("bounced")]
        return got if nx and bounced else None

    got = env.wait(settled, 60)
    sent = [r for r in got if r["name"] == "mailflow.transmit" and r.get("domain") == "flower.test"]
    assert sum(r.get("delivered", 0) for r in sent) == 5
    [nx] = [r for r in got if r["name"] == "mailflow.lookup_mx" and r.get("domain") == "nxdomain.test"]
    assert nx.get("failed") == 1 and not nx.get("handed_on")
    handed = [r for r in got if r["name"] == "mailflow.lookup_mx" and r.get("domain") == "flower.test"]
    assert sum(r.get("handed_on", 0) for r in handed) == 5
    assert "@" not in json.dumps(got)  # counts, never an address


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_tasks_page_lists_a_delivered_task(flower, tmp_path):
    port, _ = flower
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and Chromium is not installed (tests/services.sh installs it)")
        pytest.skip("Chromium is not installed (Debian package chromium)")
    user, password = AUTH.split(":")
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom",
         f"http://{user}:{password}@127.0.0.1:{port}/tasks"],
        capture_output=True, text=True, timeout=120)
    assert "mailflow.transmit" in out.stdout, out.stderr[-2000:]
    assert "SUCCESS" in out.stdout


# ── mailflow flower: safe by default (issue 24 item 6) ──────────────────────────────────


def test_mailflow_flower_refuses_to_start_unprotected(tmp_path):
    inst = Instance(tmp_path / "mf")
    env = {k: v for k, v in inst.env().items() if k != "FLOWER_BASIC_AUTH"}
    for extra in ([], ["--unauthenticated", "--address", "0.0.0.0"]):
        done = subprocess.run([sys.executable, "-m", "mailflow", "flower", *extra], env=env, cwd=inst.root,
                              capture_output=True, timeout=60)
        err = done.stderr.decode().strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and err[0].startswith("mailflow flower: "), done.stderr


def test_mailflow_flower_binds_loopback_and_asks_for_the_password(tmp_path):
    inst = Instance(tmp_path / "mf")
    port = free_port()
    proc = inst.spawn("flower", [sys.executable, "-m", "mailflow", "flower", "--port", str(port)],
                      env=inst.env(FLOWER_BASIC_AUTH=AUTH))
    try:
        proc.wait_for_output(f"Visit me at http://127.0.0.1:{port}", timeout=60)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=10)
        assert exc.value.code == 401
        exc.value.close()  # an HTTPError holds the answer open
        assert isinstance(api(port, "/api/workers"), dict)
    finally:
        inst.stop_all()
