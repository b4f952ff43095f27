"""Traffic shaping (issue 16 item 1): two full nodes on one Redis broker sending to one domain
under max_connections = 2 and messages_per_minute = 60 never exceed either at the MX, lose
nothing and count nothing as failed; a 421 4.7.28 suspends the destination, then it resumes."""

from __future__ import annotations

import calendar
import json
import re
import shutil
import time
import uuid as uuidlib
from datetime import datetime

import pytest

from harness import brokers
from harness.instance import Instance
from harness.mxserver import MX_PORT, MXServer
from mailflow import config as configmod
from mailflow import outbound
from mailflow.codes import OK
from mailflow.config.shaping import load as load_rules
from mailflow.queue.spool import Spool
from mailflow.relay.shaping import Shaper
from tests.support.pipeline import make_env

SHAPED = "[domain:dest.test]\nmax_connections = 2\nmessages_per_minute = 60\n"
PER_NODE = 45


def send_from(inst: Instance, to: str, subject: str) -> None:
    configmod.load(inst.config_dir)
    code, text = outbound.send_email("a@sender.test", [to], f"Subject: {subject}\n\nhello\n")
    assert code is OK, text


@pytest.fixture
def nodes(tmp_path):
    url = brokers.url_for("redis")
    env, first = make_env(tmp_path / "a", url, concurrency=8)
    first.write_config("shaping.ini", SHAPED)
    second = Instance(tmp_path / "b", broker_url=url, copy_shipped=False)
    shutil.copytree(first.config_dir, second.config_dir, dirs_exist_ok=True)
    (second.config_dir / "outbound.ini").write_text(
        (first.config_dir / "outbound.ini").read_text().replace(str(first.queue_dir), str(second.queue_dir)))
    for inst, name in ((first, "deliver-a"), (second, "deliver-b")):  # node names differ
        Spool(inst.queue_dir).ensure()  # both own a queue from the start (as smtpd makes it)
        for proc in list(inst.procs):  # shaping.ini is read at start
            proc.stop()
            inst.procs.remove(proc)
        inst.start_worker(name, concurrency=8)
    yield env, first, second
    for inst in (first, second):
        inst.stop_all()
    env.dns.stop()


@pytest.fixture
def mx():
    """MX servers on 127.0.0.2 at the shared port, stopped after the test."""
    servers: list[MXServer] = []

    def make(**kw: object) -> MXServer:
        servers.append(MXServer("127.0.0.2", MX_PORT, **kw).start())  # type: ignore[arg-type]
        return servers[-1]
    yield make
    for server in servers:
        server.stop()


def test_two_nodes_share_the_connection_cap_and_the_rate_and_lose_nothing(nodes, mx):
    env, first, second = nodes
    server = mx(delay={"DATA": 0.05})
    tag = uuidlib.uuid4().hex[:8]
    subjects = []
    for inst, name in ((first, "a"), (second, "b")):
        for n in range(PER_NODE):
            subjects.append(f"{tag}-{name}{n}")
            send_from(inst, f"u{n}-{name}@dest.test", subjects[-1])
    server.wait_for(2 * PER_NODE, timeout=150)  # 60 in the first minute, the rest in the next
    got = [d for d in server.deliveries if tag.encode() in d.data]
    seen = [re.search(rb"Subject: (\S+)", d.data).group(1).decode() for d in got]  # type: ignore[union-attr]
    assert sorted(seen) == sorted(subjects)  # every one, once
    assert server.high_water <= 2  # both nodes together
    times = sorted(d.at for d in got)
    # the limiter counts a message when it starts; the MX when it is accepted a moment later
    busiest = max(sum(1 for t in times if start <= t < start + 59.0) for start in times)
    assert busiest <= 60, busiest
    assert times[-1] - times[0] >= 59.0  # the rate did hold some back
    logs = "".join(p.output() for inst in (first, second) for p in inst.procs)
    assert "deferred id=" not in logs and "fails=1" not in logs  # nothing counted as failed
    assert "shaping: " in logs  # held back, and said so

    def throttled() -> int:  # each process writes its counts every few seconds
        return sum(json.loads(i.mailflow("queue", "stats", "--json").stdout).get(
            "throttled:domain:dest.test", 0) for i in (first, second))
    env.wait(lambda: throttled() >= 1, timeout=20)


def test_a_421_4_7_28_suspends_the_destination_then_it_resumes(tmp_path, mx):
    env, inst = make_env(tmp_path / "one", None)
    try:
        inst.write_config("shaping.ini", "[mx:dest.test]\nsuspend_on = 4.7.28\nsuspend_for = 5s\n")
        # shaping.ini's suspension alone: the same reply's backoff (test_backoff.py) would slow
        # the three after it further
        inst.write_config("classify.ini", "[actions]\nbackoff =\n")
        worker = inst.procs[0]
        worker.stop()
        inst.procs.remove(worker)
        inst.start_worker("deliver")
        tag = uuidlib.uuid4().hex[:8]
        server = mx(rcpt={f"first-{tag}@dest.test": "421 4.7.28 rate limited, try later"})
        env.send(f"first-{tag}@dest.test")
        env.wait(lambda: env.logged("shaping: mx:dest.test suspended for 5 s"))
        for n in range(3):
            env.send(f"u{n}-{tag}@dest.test")
        line = next(line for p in inst.procs for line in p.output().splitlines()
                    if "shaping: mx:dest.test suspended" in line)
        suspended_at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        resumed = env.wait(lambda: [d for d in server.deliveries if any(tag in r for r in d.rcpt_to)]
                           if len(server.deliveries) >= 3 else None, timeout=30)
        assert resumed and min(d.at for d in resumed) >= suspended_at + 5 - 0.05
        assert sorted(r for d in resumed for r in d.rcpt_to) == [f"u{n}-{tag}@dest.test" for n in range(3)]
        assert not env.logged("fails=1 rcpts=1/0/0")  # the three waited, not counted as failures
    finally:
        inst.stop_all()
        env.dns.stop()


def test_queue_stats_shows_a_suspended_destination(make_instance, monkeypatch):
    inst = make_instance()
    inst.write_config("shaping.ini", "[mx:x.test]\nsuspend_on = 4.7.28\n")
    monkeypatch.setenv("MAILFLOW_STATE_DIR", str(inst.root / ".mailflow"))  # the instance's store
    [rule] = load_rules(inst.config_dir / "shaping.ini")
    Shaper(None).suspend(rule)  # as a 421 4.7.28 would: for suspend_for, 10 min by default
    stats = json.loads(inst.mailflow("queue", "stats", "--json").stdout)
    assert 590 <= stats["suspended:mx:x.test"] <= 600


def test_a_malformed_shaping_ini_is_file_line_and_exit_non_zero(make_instance):
    inst = make_instance()
    inst.write_config("shaping.ini", "[domain:a.test]\nmax_connections = 2\n[gmail]\nmax_connections = 2\n")
    done = inst.mailflow("queue", "stats")
    assert done.returncode != 0
    wanted = ("shaping.ini:3: [gmail]: a rule is [domain:NAME], [mx:SUFFIX], [source:IP or NAME] "
              "or [tenant:NAME]")
    assert wanted in done.stderr.decode()


@pytest.mark.parametrize("rule", ["domain:dest.test", "mx:dest.test"])
def test_queue_list_says_which_rule_holds_an_entry_and_until_when(tmp_path, monkeypatch, rule):
    """A held entry is not a failure and says so: ``held=shaping:RULE until …Z``, fails=0.
    A [domain:] rule holds the entries before they are claimed (the queue manager); an [mx:]
    rule once the MX is known, when the batch asks for a connection."""
    env, inst = make_env(tmp_path / "one", None)
    try:
        inst.write_config("shaping.ini", f"[{rule}]\nsuspend_on = 4.7.28\nsuspend_for = 10m\n")
        worker = inst.procs[0]
        worker.stop()
        inst.procs.remove(worker)
        monkeypatch.setenv("MAILFLOW_STATE_DIR", str(inst.root / ".mailflow"))  # the instance's store
        [loaded] = load_rules(inst.config_dir / "shaping.ini")
        Shaper(None).suspend(loaded)
        inst.start_worker("deliver")
        ident = env.send("held@dest.test")

        def listed() -> str | None:
            out = inst.mailflow("queue", "list").stdout.decode()
            return next((line for line in out.splitlines() if ident in line and " waiting " in line
                         and "held=" in line), None)
        line = env.wait(listed, timeout=30)
        assert f"held=shaping:{rule} until " in line and "fails=0" in line, line
        nxt = re.search(r" next=(\S+)", line).group(1)  # type: ignore[union-attr]
        assert line.split(" until ")[1].split()[0] == nxt
        due = calendar.timegm(time.strptime(nxt, "%Y-%m-%dT%H:%M:%SZ"))
        assert 500 < due - time.time() <= 601  # the suspension's end, not a retry schedule's
        [row] = [r for r in json.loads(inst.mailflow("queue", "list", "--json").stdout)
                 if r["id"].startswith(ident)]
        assert row["held"] == f"shaping:{rule}" and row["num_failures"] == 0
    finally:
        inst.stop_all()
        env.dns.stop()
