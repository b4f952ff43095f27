"""State anchored to the config directory, not the working directory (issue 24 item 4):
``mailflow send``, ``mailflow queue`` and ``celery -A mailflow call mailflow.flush_queue``
run from another directory with only ``MAILFLOW_CONFIG`` reach the same instance -- its
queue, its embedded broker.  At 7ff0849 the call from elsewhere printed a task id, exited 0
and nothing happened: it had published to a broker of its own under the working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.dnsserver import free_port
from harness.instance import Instance
from harness.mxserver import MXServer
from harness.waiting import until


def elsewhere_env(inst: Instance) -> dict[str, str]:
    """The instance's environment but for the state directory: only MAILFLOW_CONFIG says where."""
    return {k: v for k, v in inst.env().items() if k != "MAILFLOW_STATE_DIR"}


def test_commands_from_another_directory_reach_the_instance_of_their_config(tmp_path):
    port = free_port("127.0.0.3")
    inst = Instance(tmp_path / "mf", config={  # the default queue_dir: relative, "queue"
        "outbound.ini": "enable_tls = false\ntemp_fail_intervals = 1h\n",
        "routes.ini": f"[*]\nvia = 127.0.0.3:{port}\n", "me": "mailflow.test\n"})
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = elsewhere_env(inst)

    def run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, *argv], cwd=other, env=env, input=stdin,
                              capture_output=True, timeout=60)

    try:
        inst.start_worker("anchored", env={"MAILFLOW_STATE_DIR": ""})  # the default state directory
        sent = run("-m", "mailflow", "send", "-f", "a@sender.test", "u@far.test",
                   stdin=b"Subject: anchored\n\nx\n")
        assert sent.returncode == 0, sent.stderr
        assert list((inst.root / "queue").rglob("*far.test"))  # the instance's queue, beside config/
        assert not (other / "queue").exists() and not (other / ".mailflow").exists()

        def waiting() -> list[dict]:
            listed = run("-m", "mailflow", "queue", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            return [r for r in json.loads(listed.stdout) if r["state"] == "waiting" and r["num_failures"]]

        until(waiting, 60, inst.dump_logs)  # nothing listens at 127.0.0.3 yet: deferred for an hour
        # the attempt line names the address tried, though nothing answered there (it said
        # host=- ip=- port=0 at 7ff0849; issue 24 item 8)
        assert f"host=127.0.0.3 ip=127.0.0.3 port={port}" in inst.procs[0].output()
        server = MXServer("127.0.0.3", port).start()
        try:
            called = run("-m", "celery", "-A", "mailflow", "call", "mailflow.flush_queue")
            assert called.returncode == 0, called.stderr
            [delivery] = server.wait_for(1, timeout=60)
            assert delivery.rcpt_to == ["u@far.test"]
        finally:
            server.stop()
        assert not (other / ".mailflow").exists()
    finally:
        inst.stop_all()


def test_a_config_directory_that_does_not_exist_or_is_empty_stops_the_start(tmp_path):
    """At 7ff0849 a --config typo ran on built-in defaults and refused all mail."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLOW_", "CELERY_"))}
    for where, why in ((tmp_path / "nope", "no such config directory"), (empty, "not a config directory")):
        for argv in (["-m", "mailflow", "smtpd", "--config", str(where)],
                     ["-m", "mailflow", "queue", "stats", "--config", str(where)]):
            done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True,
                                  timeout=60)
            err = done.stderr.decode().strip().splitlines()
            assert done.returncode == 2 and len(err) == 1 and why in err[0], (argv, done.stderr)
        worker = subprocess.run([sys.executable, "-m", "celery", "-A", "mailflow", "worker", "--pool",
                                 "solo"], cwd=tmp_path, env={**env, "MAILFLOW_CONFIG": str(where)},
                                capture_output=True, timeout=60)
        assert worker.returncode != 0 and why in worker.stderr.decode()


def test_a_command_that_needs_an_unreachable_broker_fails_in_one_line(tmp_path):
    """At 7ff0849 ``queue stats --cluster`` printed an 80-line traceback (issue 24 item 5)."""
    inst = Instance(tmp_path / "mf", broker_url="redis://127.0.0.1:1/0")
    done = inst.mailflow("queue", "stats", "--cluster", timeout=120)
    err = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert err[0].startswith("mailflow: cannot reach the broker redis://127.0.0.1:1/0")


def test_the_listener_says_once_that_the_broker_cannot_be_reached_and_still_takes_mail(tmp_path):
    """Issue 24 item 5: ``mailflow smtpd`` with an unreachable broker says so in one WARNING at
    start (an empty queue publishes nothing, so nothing else would), and a message is still
    answered 250 and kept in the queue."""
    import smtplib

    port = free_port()
    inst = Instance(tmp_path / "mf", broker_url="redis://127.0.0.1:1/0",
                    config={"smtp.ini": f"listen = 127.0.0.1:{port}\n"})
    try:
        proc = inst.start_smtpd()
        line = proc.wait_for_output("cannot be reached", timeout=60)
        assert "WARNING" in line and "redis://127.0.0.1:1/0" in line and "still accepted" in line
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@sender.test", ["b@dest.test"], b"Subject: kept\r\n\r\nx\r\n")
        assert any(b"Subject: kept" in p.read_bytes() for p in inst.entries())
        assert proc.output().count("cannot be reached") == 1  # not once per scan
    finally:
        inst.stop_all()
