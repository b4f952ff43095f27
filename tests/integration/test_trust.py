"""The broker is outside the trust boundary: what an attacker who can publish to it can no
longer make mailflow do (issue 23, items 1-3).  Checked against 7ff0849, where every
forgery here was acted on.

The attacker is a process that reaches the same broker and has mailflow installed, but
not the owners' ``broker.key``: ``celery -A mailflow call`` with a config directory of
its own (so a key of its own), or a raw kombu publish with no MAC at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from kombu import Connection

from harness import brokers
from harness.instance import Instance
from harness.mxserver import MXServer
from mailflow.observation import proctitle
from mailflow.queue.identity import owner_queue
from mailflow.wire.payloads import LOOKUP_MX, RECORD_OUTCOMES, TRANSMIT, WEBHOOK
from tests.support.pipeline import PORT, Env, module_env

env = module_env("trust")


def attacker(env: Env) -> dict[str, str]:
    """The environment of a process on the broker with a config directory, and key, of its own."""
    config = env.inst.root / "attacker-config"
    if not config.exists():
        shutil.copytree(env.inst.config_dir, config, ignore=shutil.ignore_patterns("broker.key"))
    return env.inst.env(MAILFLOW_CONFIG=str(config))


def forge(env: Env, task: str, args: list[Any], queue: str | None = None) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "mailflow", "call", task, "--args", json.dumps(args)]
    argv += ["--queue", queue] if queue else []
    done = subprocess.run(argv, cwd=env.inst.root, env=attacker(env), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


def refusals(env: Env) -> int:
    counter = env.inst.root / ".mailflow" / ".counters" / "refused_tasks"
    return counter.stat().st_size if counter.exists() else 0


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (directories: -1)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(directory, name)] = -1
        for name in files:
            if name == proctitle.SHARED:  # the process titles' count, rewritten every few seconds
                continue
            path = os.path.join(directory, name)
            out[path] = os.stat(path).st_size
    return out


def queue_identity(env: Env) -> str:
    return (env.inst.queue_dir / ".identity").read_text().strip()


def test_a_forged_webhook_task_naming_a_directory_touches_nothing(env):
    victim = env.inst.root / "victim"
    (victim / "sub").mkdir(parents=True, exist_ok=True)
    (victim / "sub" / "file").write_text("keep me")
    env.wait(lambda: (env.inst.queue_dir / ".qmgr.lock").exists())  # the queue is settled
    before_queue, before_victim = snapshot(env.inst.queue_dir), snapshot(victim)
    refused = refusals(env)
    for name in (str(victim), "../../victim", "../victim"):
        forge(env, WEBHOOK, [name], queue=owner_queue(queue_identity(env)))
    env.wait(lambda: refusals(env) >= refused + 3)
    assert snapshot(victim) == before_victim
    assert snapshot(env.inst.queue_dir) == before_queue
    assert env.logged("refused task mailflow.webhook")


def test_a_forged_report_neither_removes_nor_bounces_queued_mail(env, mx):
    mx()  # nothing listens on 127.0.0.3: the message waits, deferred, with its id known
    uuid = env.send("u@held.test", notes={"mx": f"127.0.0.3:{PORT}"})
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    name = entry.filename
    claim = "0" * 32
    refused = refusals(env)
    for code in (250, 550):
        outcome = {"host": "mx", "ip": "127.0.0.2", "port": 25, "mode": "SMTP", "tls": False,
                   "auth": False, "rcpts": {"u@held.test": [code, "forged"]}}
        forge(env, RECORD_OUTCOMES, [{"owner": queue_identity(env), "claim": claim, "names": [name],
                             "domain": "held.test", "holder": "evil", "results": {name: outcome},
                             "back": []}], queue=owner_queue(queue_identity(env)))
    env.wait(lambda: refusals(env) >= refused + 2)
    assert [p.name for p in env.inst.entries("pending") if uuid in p.name] == [name]
    assert not env.inst.entries("failed")
    assert env.logged("refused task mailflow.record_outcomes")


def test_a_forged_parcel_never_reaches_the_mx(env, mx):
    server = mx()
    refused = refusals(env)
    letter = {"name": f"{10**12:013d}_0_{10**12:013d}_forged.1_victim.test",
              "mail_from": "a@b.test", "rcpt_to": ["u@victim.test"], "notes": {},
              "message": "U3ViamVjdDogeAoKeAo=", "num_failures": 0, "queue_time": 0}
    parcel = {"owner": "f" * 32, "claim": "1" * 32, "names": [letter["name"]], "domain": "victim.test",
              "mx": [{"exchange": "127.0.0.2", "port": PORT, "priority": 0}], "bind": None, "helo": None,
              "letters": [letter], "issued_ms": 0, "lease_ms": 300000, "wait_ms": 0}
    forge(env, "mailflow.acquire_connection", [parcel])
    forge(env, TRANSMIT, [parcel, None])
    env.wait(lambda: refusals(env) >= refused + 2)
    assert server.sessions == []


def test_a_message_with_no_mac_at_all_is_refused(env):
    """Published with kombu alone, as a script on a shared Redis would: no header at all."""
    refused = refusals(env)
    broker = env.inst.root / ".mailflow" / "broker"
    options = {"data_folder_in": str(broker / "queue"), "data_folder_out": str(broker / "queue"),
               "control_folder": str(broker / "control")}
    with Connection("filesystem://", transport_options=options) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish([[{"owner": queue_identity(env), "claim": "2" * 32, "names": []}], {}, {}],
                         routing_key=owner_queue(queue_identity(env)),
                         headers={"task": LOOKUP_MX, "id": "forged-1", "lang": "py", "argsrepr": "",
                                  "kwargsrepr": "", "retries": 0, "eta": None, "expires": None},
                         declare=[])
    env.wait(lambda: refusals(env) >= refused + 1)
    assert env.logged("refused task mailflow.lookup_mx[forged-1]")


def test_a_forged_flush_broadcast_changes_no_due_time(env, mx):
    mx()
    uuid = env.send("u@later.test", notes={"mx": f"127.0.0.3:{PORT}"})
    [entry] = env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    refused = refusals(env)
    script = ("from mailflow.runtime.application import app; "
              "app.control.broadcast('mailflow_flush', arguments={'domain': None, 'owner': None}, "
              "reply=False)")
    done = subprocess.run([sys.executable, "-c", script], cwd=env.inst.root, env=attacker(env),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    env.wait(lambda: refusals(env) >= refused + 1)
    assert [e.filename for e in env.entries("pending", uuid)] == [entry.filename]
    assert env.logged("refused broadcast mailflow_flush")


def test_mailflows_own_flush_is_accepted(env, mx):
    server = mx()
    env.configure(temp_fail_intervals="1h")
    uuid = env.send("u@flushme.test", notes={"mx": f"127.0.0.3:{PORT}"})
    env.wait(lambda: [e for e in env.entries("pending", uuid) if e.num_failures])
    other = MXServer("127.0.0.3", PORT).start()
    try:
        done = env.inst.celery("call", "mailflow.flush_queue")
        assert done.returncode == 0, done.stderr
        other.wait_for(1)
    finally:
        other.stop()
    assert server.deliveries == []


def test_the_stats_count_refusals(env):
    done = env.inst.mailflow("queue", "stats")
    assert done.returncode == 0, done.stderr
    fields = dict(f.split("=", 1) for f in done.stdout.decode().split())
    assert int(fields["refused_tasks"]) == refusals(env) > 0
    as_json = json.loads(env.inst.mailflow("queue", "stats", "--json").stdout)
    assert "refused_tasks" not in as_json


def test_a_worker_host_without_the_key_refuses_to_start(tmp_path):
    inst = Instance(tmp_path, broker_url=brokers.url_for("redis"))
    (inst.config_dir / "broker.key").unlink(missing_ok=True)
    inst.write_config("outbound.ini", f"queue_dir = {tmp_path / 'no-queue-here'}\n")
    done = inst.celery("worker", "--pool", "threads", "-c", "1", timeout=60)
    assert done.returncode != 0
    err = (done.stdout + done.stderr).decode()
    lines = [line for line in err.splitlines() if "broker.key" in line]
    assert lines and lines[0].startswith("mailflow: ") and "Traceback" not in err
