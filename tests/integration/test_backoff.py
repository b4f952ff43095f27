"""Adaptive backoff across hosts (issue 28 item 3): two full nodes on one Redis; a 421 4.7.28
that the MX gives one of them halves the rate *both* may send to that site, ``queue stats``
and the metrics say so, and once the quiet period passes the normal rate holds again."""

from __future__ import annotations

import json
import shutil
import uuid as uuidlib

import pytest
from prometheus_client import generate_latest

from harness import brokers
from harness.instance import Instance
from harness.mxserver import MX_PORT, MXServer
from mailflow import config as configmod
from mailflow.observation.metrics import registry
from mailflow.queue.spool import Spool
from tests.support.pipeline import PORT, Env, make_env

#: the normal rate over the site, halved to 15 by a backoff; a quiet period short enough to wait
SHAPED = "[mx:dest.test]\nmessages_per_minute = 30\n"
ACTIONS = "[actions]\nbackoff_for = 6s\n"
AFTER = 25  #: sent by the node that never got the 421


@pytest.fixture
def nodes(tmp_path):
    url = brokers.url_for("redis")
    env, first = make_env(tmp_path / "a", url, concurrency=8,
                          files={"shaping.ini": SHAPED, "classify.ini": ACTIONS})
    second = Instance(tmp_path / "b", broker_url=url, copy_shipped=False)
    shutil.copytree(first.config_dir, second.config_dir, dirs_exist_ok=True)
    (second.config_dir / "outbound.ini").write_text(
        (first.config_dir / "outbound.ini").read_text().replace(str(first.queue_dir), str(second.queue_dir)))
    Spool(second.queue_dir).ensure()
    second.start_worker("deliver-b", concurrency=8)
    yield env, first, second
    for inst in (first, second):
        inst.stop_all()
    env.dns.stop()


@pytest.fixture
def tag():
    return uuidlib.uuid4().hex[:8]


@pytest.fixture
def server(tag):
    found = MXServer("127.0.0.2", MX_PORT, rcpt={
        f"first-{tag}@dest.test": "421 4.7.28 Our system has detected an unusual rate of mail"}).start()
    yield found
    found.stop()


def _stats(inst: Instance) -> dict[str, int]:
    return json.loads(inst.mailflow("queue", "stats", "--json").stdout)


def test_a_slow_down_reply_to_one_host_halves_the_rate_of_all_then_it_is_restored(nodes, server, tag,
                                                                                  monkeypatch):
    env, first, second = nodes
    monkeypatch.setenv("MAILFLOW_BROKER_URL", second.broker_url)  # the metrics read the shared store
    env.send(f"first-{tag}@dest.test")
    env.wait(lambda: env.logged("backoff: default sending to dest.test at 5 connections and 15 "
                                "messages a minute"), 60)
    # the other host sees it in its queue stats, and the metrics say half the normal rate
    left = _stats(second).get("backoff:dest.test/default")
    assert left is not None and 0 < left <= 6
    configmod.load(second.config_dir)
    scraped = generate_latest(registry(configmod.current())).decode()
    assert 'mailflow_backoff{site="dest.test",source="default"} 0.5' in scraped

    other = Env(second, env.dns)  # the host that never got the 421 sends AFTER
    ids = [other.send(f"u{n}-{tag}@dest.test") for n in range(AFTER)]
    ours = lambda: [d for d in server.deliveries if any(tag in r and r.startswith("u") for r in d.rcpt_to)]  # noqa: E731
    env.wait(lambda: len(ours()) >= 15, 60)
    # the rest wait in its queue, held by the backoff's rule, not failed
    held = other.wait(lambda: [h for i in ids for h in other.entries("pending", i)]
                      if sum(len(other.entries("pending", i)) for i in ids) == AFTER - 15 else None, 30)
    rows = {r["id"]: r for r in json.loads(second.mailflow("queue", "list", "--json").stdout)}
    assert all("backoff:dest.test/default" in (rows[h.name.id]["held"] or "") for h in held)
    assert all(h.num_failures == 0 for h in held)
    assert len(ours()) == 15  # a limit, not a slowing: no more went within the window

    # the quiet period passes: the normal limits hold again, on every host
    env.wait(lambda: "backoff:dest.test/default" not in _stats(second), 30)
    scraped = generate_latest(registry(configmod.current())).decode()
    assert "mailflow_backoff{" not in scraped
    assert second.mailflow("flush").returncode == 0
    env.wait(lambda: len(ours()) == AFTER, 90)  # 15 + 10 + the first: within the normal 30
    assert not other.logged("fails=1")


def test_a_greeting_refused_for_too_many_connections_backs_off_and_spam_blocks_suspend(tmp_path, tag):
    """mailflow's own view of a refusal at the greeting (no message was sent) backs off too; two
    SpamBlock replies within the window suspend the site for the source, then it resumes."""
    env, inst = make_env(tmp_path / "one", None, files={"classify.ini": (
        "[actions]\nbackoff_for = 1h\nsuspend_after = 2 in 10m\nsuspend_for = 4s\n")})
    busy = MXServer("127.0.0.3", PORT, script={
        "banner": "421 Too many concurrent SMTP connections from this IP address; please try again later."
    }).start()
    spammy = MXServer("127.0.0.2", PORT, rcpt={
        f"s{n}-{tag}@dest.test": "554 5.7.1 Rejected: 192.0.2.10 is a known spam source" for n in range(2)
    }).start()
    try:
        env.send(f"u-{tag}@busy.test", notes={"mx": f"127.0.0.3:{PORT}"})
        env.wait(lambda: env.logged("backoff: default sending to 127.0.0.3 at 5 connections"), 60)
        stats = json.loads(inst.mailflow("queue", "stats", "--json").stdout)
        assert stats["backoff:127.0.0.3/default"] > 3000

        first = env.send(f"s0-{tag}@dest.test")
        env.wait(lambda: env.logged(f"failed id={first}"), 60)
        assert not env.logged("suspended from sending")  # one is not yet two
        env.send(f"s1-{tag}@dest.test")
        env.wait(lambda: env.logged("backoff: default suspended from sending to dest.test for 4 s "
                                    "after 2 SpamBlock replies"), 60)
        later = env.send(f"ok-{tag}@dest.test")
        rows = env.wait(lambda: [r for r in json.loads(inst.mailflow("queue", "list", "--json").stdout)
                                 if r["id"].startswith(later) and r["held"]], 30)
        assert "backoff:dest.test/default" in rows[0]["held"]
        env.wait(lambda: [d for d in spammy.deliveries if d.rcpt_to == [f"ok-{tag}@dest.test"]], 30)
        assert not env.logged(f"deferred id={later}")  # held, then sent: never a failure
    finally:
        busy.stop()
        spammy.stop()
        inst.stop_all()
        env.dns.stop()
