"""Several hosts on one broker, each task done where it can be done (issue 12, first part).

The owner runs `mailflow run` in one directory; a "worker host" runs `celery -A
mailflow worker` from another directory with its own copy of the config and no queue
directory -- the setup in which, before, the second worker swallowed the owner's
batches and reported them SUCCESS while nothing was delivered.
"""

from __future__ import annotations

import json
import smtplib
import sys
from typing import Any

import pytest

from harness import brokers
from harness.dnsserver import DNSServer, free_port
from harness.instance import Instance
from harness.mxserver import MX_PORT, MXServer
from harness.waiting import until


def outbound_ini(inst: Instance, dns: DNSServer, **extra: Any) -> None:
    keys = {"nameservers": f"127.0.0.1:{dns.port}", "mx_port": MX_PORT, "local_mx_ok": "true",
            "enable_tls": "false", "temp_fail_intervals": "1h", **extra}
    inst.write_config("outbound.ini", "".join(f"{k} = {v}\n" for k, v in keys.items()))


@pytest.fixture(params=["redis"])
def cluster(make_instance, request):
    url = brokers.url_for(request.param)
    dns = DNSServer({"far.test": {"MX": [(10, "mx.far.test")]}, "mx.far.test": {"A": ["127.0.0.2"]}})
    dns.start()
    port = free_port()
    owner: Instance = make_instance(url, name="owner",
                                    config={"smtp.ini": f"listen = 127.0.0.1:{port}\n",
                                            "me": "owner.test\n"})
    host: Instance = make_instance(url, name="workerhost", config={"me": "workerhost.test\n"})
    for inst in (owner, host):
        outbound_ini(inst, dns)
    run = owner.spawn("run", owner.mailflow_argv("run"), env=owner.env(MAILFLOW_BATCH_MAX="5"))
    run.wait_for_output(" ready.", timeout=60)
    remote = host.start_worker("b")
    run.wait_for_output(f"worker host {remote.node} is here", timeout=30)
    yield owner, host, run, remote, port
    dns.stop()


def submit(port: int, n: int, domain: str = "far.test") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(n):
            s.sendmail("a@sender.test", [f"u{i}@{domain}"], b"Subject: s\r\n\r\nx\r\n")


@pytest.mark.parametrize("cluster", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_host_delivers_the_owners_mail_and_each_message_goes_once(cluster):
    owner, host, run, remote, port = cluster
    remote.wait_for_output("serves no owner", timeout=10)
    assert not (host.root / "queue").exists()
    with MXServer("127.0.0.2", MX_PORT) as mx:
        submit(port, 200)
        got = mx.wait_for(200, timeout=90)
        assert sorted(r for d in got for r in d.rcpt_to) == sorted(f"u{i}@far.test" for i in range(200))
        until(lambda: not owner.all_files(), 30, "for the owner's queue to empty")
        assert len(mx.deliveries) == 200  # none twice
    by = {s.ehlo for s in mx.sessions if s.deliveries}
    assert by == {"owner.test", "workerhost.test"}, by  # both hosts delivered some
    # the owner's queue-touching steps never went to the worker host
    assert "Task mailflow.lookup_mx[" not in remote.output()
    assert "Task mailflow.record_outcomes[" not in remote.output()
    stats = owner.mailflow("queue", "stats", "--json")
    assert json.loads(stats.stdout)["delivered"] == 200


def test_a_step_sent_to_a_host_without_the_queue_ends_ignored_not_success(cluster):
    owner, host, run, remote, port = cluster
    identity = (owner.queue_dir / ".identity").read_text().strip()
    batch = {"owner": identity, "claim": "0" * 32, "names": [], "domain": "far.test"}
    queue = f"{remote.node}.dq2"  # the worker host's own queue (Celery's worker_direct)
    done = host.celery("call", "mailflow.lookup_mx", "--args", json.dumps([batch]), "--queue", queue)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.decode().strip()
    out = remote.wait_for_output(f"mailflow.lookup_mx[{task_id}] ignored", timeout=30)
    assert f"mailflow.lookup_mx[{task_id}] did nothing: batch of queue {identity}, and this host " \
           "has no queue directory" in out
    assert f"mailflow.lookup_mx[{task_id}] succeeded" not in out


def test_flush_from_any_host_reaches_the_owner_and_stats_come_from_every_owner(cluster):
    owner, host, run, remote, port = cluster
    with MXServer("127.0.0.2", MX_PORT, script={"DOT": ["451 4.3.0 later"]}) as mx:
        submit(port, 1)
        until(lambda: [p for p in (owner.queue_dir / "pending").iterdir() if p.name.split("_")[1] == "1"],
              60, "for the deferral")
        done = host.celery("call", "mailflow.flush_queue")  # published from the worker host's side
        assert done.returncode == 0, done.stderr
        [d] = mx.wait_for(1, timeout=30)
        assert d.rcpt_to == ["u0@far.test"]
    identity = (owner.queue_dir / ".identity").read_text().strip()
    stats = host.run([sys.executable, "-m", "mailflow", "queue", "stats", "--cluster", "--json"])
    assert stats.returncode == 0, stats.stderr
    numbers = json.loads(stats.stdout)
    assert list(numbers["owners"]) == [identity]  # only queue owners appear
    assert numbers["owners"][identity]["delivered"] >= 1
    assert numbers["total"] == numbers["owners"][identity]


def test_a_worker_started_before_its_queue_exists_serves_it_once_it_does(make_instance):
    url = brokers.url_for("redis")
    dns = DNSServer({"far.test": {"MX": [(10, "mx.far.test")]}, "mx.far.test": {"A": ["127.0.0.2"]}})
    dns.start()
    try:
        inst: Instance = make_instance(url, name="late")
        outbound_ini(inst, dns)
        worker = inst.start_worker("w")
        worker.wait_for_output("serves no owner", timeout=10)
        with MXServer("127.0.0.2", MX_PORT) as mx:
            out = inst.mailflow("send", "-f", "a@sender.test", "u@far.test", input=b"Subject: s\n\nx\n")
            assert out.returncode == 0, out.stderr  # the first message makes the queue directory
            worker.wait_for_output("a queue directory appeared", timeout=30)
            mx.wait_for(1, timeout=60)
    finally:
        dns.stop()
