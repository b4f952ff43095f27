"""Scale-out across real hosts: network namespaces, a broker on one of them (issue 12).

Each host is a network namespace this test makes (harness/netns.py) with its own
working directory, state and config: ``broker`` runs Redis on its veth address,
``mx`` the destination MX and the DNS, ``owner`` a full node (``mailflow smtpd``
and a worker that consumes only the owner's queue, ``-X celery``), ``w1`` and
``w2`` worker hosts (``celery -A mailflow worker``, no queue directory).  Only
addresses inside those namespaces are targets.  The lease is short
(``MAILFLOW_LEASE_SECONDS``), so that what waits for leases stays quick.
"""

from __future__ import annotations

import collections
import json
import os
import smtplib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import netns
from harness.dnsserver import DNSServer
from harness.instance import Instance, Proc
from harness.mxserver import MXServer
from harness.netns import Host, Net
from harness.waiting import until
from tests.support.flower import flower_api, start_flower

REPO = Path(__file__).resolve().parents[2]
FLOWER_AUTH = "admin:lab"
LEASE = 6.0
FENCE = LEASE / 2
SMTP_PORT = 2587
MX_PORT = 2525
BATCH = 10


@dataclass
class Lab:
    net: Net
    hosts: dict[str, Host]
    url: str
    dns: DNSServer
    make: Any

    def instance(self, name: str, **config: str) -> Instance:
        host = self.hosts[name]
        files = {"me": f"{name}.test\n", **config}
        inst: Instance = self.make(self.url, name=name, config=files, wrap=host.wrap)
        keys = {"nameservers": f"{self.hosts['mx'].ip}:{self.dns.port}", "mx_port": MX_PORT,
                "local_mx_ok": "true", "enable_tls": "false", "temp_fail_intervals": "5s,5s,5s,5s,5s"}
        inst.write_config("outbound.ini", "".join(f"{k} = {v}\n" for k, v in keys.items()))
        return inst

    def mx(self, **options: Any) -> MXServer:
        with self.hosts["mx"].entered():
            return MXServer(self.hosts["mx"].ip, MX_PORT, **options).start()


def ci_or_skip(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {why}")
    pytest.skip(why)


@pytest.fixture
def lab(make_instance, monkeypatch):
    why = netns.available()
    if why:
        ci_or_skip(why)
    monkeypatch.setenv("MAILFLOW_LEASE_SECONDS", str(LEASE))
    monkeypatch.setenv("MAILFLOW_BATCH_MAX", str(BATCH))
    net = Net()
    redis = None
    dns = None
    try:
        hosts = {name: net.add(name) for name in ("broker", "mx", "owner", "w1", "w2", "node2")}
        broker = hosts["broker"]
        redis = subprocess.Popen(broker.wrap(["redis-server", "--bind", broker.ip, "--port", "6379",
                                              "--save", "", "--appendonly", "no",
                                              "--protected-mode", "no"]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with broker.entered():
            until(lambda: _reachable(broker.ip, 6379), 20, "for Redis in the broker namespace")
        with hosts["mx"].entered():
            dns = DNSServer({"far.test": {"MX": [(10, "mx.far.test")]},
                             "mx.far.test": {"A": [hosts["mx"].ip]}}, host=hosts["mx"].ip).start()
        yield Lab(net, hosts, f"redis://{broker.ip}:6379/0", dns, make_instance)
    finally:
        if dns is not None:
            dns.stop()
        if redis is not None:
            redis.kill()
            redis.wait(10)
        net.close()


def _reachable(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


def start_owner(lab: Lab, name: str = "owner", *, consume_shared: bool = False, **config: str
                ) -> tuple[Instance, list[Proc]]:
    ip = lab.hosts[name].ip
    inst = lab.instance(name, **{"smtp.ini": f"listen = {ip}:{SMTP_PORT}\n",
                                 "relay_acl_allow": f"{ip}/32\n", **config})
    return inst, start_owner_procs(inst, consume_shared=consume_shared)


def start_owner_procs(inst: Instance, *, consume_shared: bool = False) -> list[Proc]:
    smtpd = inst.start_smtpd(timeout=60)
    # a node name of its own, as on a host of its own (the namespaces share one hostname)
    worker = inst.start_worker(f"own-{inst.root.name}", extra=[] if consume_shared else ["-X", "celery"])
    return [smtpd, worker]


def start_worker_host(lab: Lab, name: str) -> tuple[Instance, Proc]:
    inst = lab.instance(name)
    worker = inst.start_worker(name, concurrency=4)
    worker.wait_for_output("serves no owner", timeout=10)
    return inst, worker


def owner_and_two_worker_hosts(lab: Lab) -> tuple[Instance, list[Proc], Proc, Proc]:
    """The usual cluster: an owner whose worker serves only its own queue, w1 and w2."""
    owner, procs = start_owner(lab)
    _, w1 = start_worker_host(lab, "w1")
    _, w2 = start_worker_host(lab, "w2")
    owner_sees_worker_hosts(procs[1], w1, w2)
    return owner, procs, w1, w2


def submit(lab: Lab, host: str, rcpts: list[str], body: bytes = b"Subject: s\r\n\r\nx\r\n") -> None:
    h = lab.hosts[host]
    with h.entered(), smtplib.SMTP(h.ip, SMTP_PORT, timeout=60) as s:
        for rcpt in rcpts:
            s.sendmail("a@sender.test", [rcpt], body)


def delivered(mx: MXServer) -> collections.Counter[str]:
    return collections.Counter(r for d in mx.deliveries for r in d.rcpt_to)


def by_host(lab: Lab, mx: MXServer) -> collections.Counter[str]:
    names = {h.ip: n for n, h in lab.hosts.items()}
    return collections.Counter(names.get(s.peer[0], s.peer[0]) for s in mx.sessions for _ in s.deliveries)


def owner_sees_worker_hosts(proc: Proc, *workers: Proc) -> None:
    for worker in workers:
        proc.wait_for_output(f"worker host {worker.node} is here", timeout=30)


def stats(inst: Instance) -> dict[str, int]:
    done = inst.mailflow("queue", "stats", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_worker_hosts_deliver_2000_messages_each_exactly_once(lab):
    owner, procs, w1, w2 = owner_and_two_worker_hosts(lab)
    start_flower(owner, 5555, FLOWER_AUTH, address=lab.hosts["owner"].ip,
                 within=lab.hosts["owner"].entered)  # hearing the workers before mail goes
    mx = lab.mx()
    try:
        rcpts = [f"u{i}@far.test" for i in range(2000)]
        submit(lab, "owner", rcpts)
        mx.wait_for(2000, timeout=300)
        until(lambda: stats(owner)["delivered"] == 2000, 60, "for the owner to record 2,000 deliveries")
        got = delivered(mx)
        assert sorted(got) == sorted(rcpts) and set(got.values()) == {1}
        hosts = by_host(lab, mx)
        assert hosts["w1"] > 0 and hosts["w2"] > 0 and "owner" not in hosts, hosts
        assert not owner.all_files()
        # a step that finds nothing to do: its claim is gone
        identity = (owner.queue_dir / ".identity").read_text().strip()
        batch = {"owner": identity, "claim": "0" * 32, "names": [], "domain": "far.test"}
        gone = owner.celery("call", "mailflow.lookup_mx", "--queue", f"mailflow.owner.{identity}",
                            "--args", json.dumps([batch]))
        assert gone.returncode == 0, gone.stderr
        nothing = gone.stdout.decode().strip()
        # Flower shows the pipeline on both worker hosts, and no SUCCESS for the step that did nothing
        until(lambda: flower_tasks(lab).get(nothing, {}).get("state") == "IGNORED", 30,
              "for Flower to show the step that did nothing as IGNORED")
        tasks = flower_tasks(lab)
        for node in (w1.node, w2.node):
            ran = {t["name"] for t in tasks.values()
                   if t.get("worker") == node and t.get("state") == "SUCCESS"}
            assert ran == {"mailflow.acquire_connection", "mailflow.transmit"}, (node, ran)
        owners = {t["name"] for t in tasks.values() if t.get("worker") == procs[1].node}
        assert {"mailflow.lookup_mx", "mailflow.record_outcomes"} <= owners
    finally:
        mx.stop(no_assert=True)


def flower_tasks(lab: Lab) -> dict[str, Any]:
    tasks: dict[str, Any] = flower_api(lab.hosts["owner"].ip, 5555, FLOWER_AUTH,
                                       "/api/tasks?limit=100000", within=lab.hosts["owner"].entered)
    return tasks


def test_kill_9_of_a_worker_host_mid_run_loses_nothing(lab):
    owner, procs, w1, w2 = owner_and_two_worker_hosts(lab)
    mx = lab.mx(delay={"DOT": 0.05})
    try:
        rcpts = [f"k{i}@far.test" for i in range(400)]
        submit(lab, "owner", rcpts)
        # w1 delivering, and one of its reports applied by the owner (it reports once a
        # second: killed before its first, w1's work would all be sent again by w2, and
        # the owner's log would rightly name w2 alone)
        until(lambda: by_host(lab, mx)["w1"] >= 20 and "via=w1-" in procs[1].output(), 120,
              "for w1 to be delivering and reporting")
        assert lab.hosts["w1"].kill_all() >= 1
        # its claims come back a lease after their last renewal (those it had not renewed
        # yet: the parcel wait and a lease); w2 then sends them
        until(lambda: set(delivered(mx)) == set(rcpts), LEASE + 60 + 60, "for every message, after w1 died")
        until(lambda: not owner.all_files(), 60, "for the owner's queue to empty")
        twice = sum(n - 1 for n in delivered(mx).values())
        # what w1 held when it died: at most one batch per worker thread
        assert twice <= 4 * BATCH, twice
        # the owner's attempt lines name the host that sent: w2 took over
        assert "via=w2-" in procs[1].output()
    finally:
        mx.stop(no_assert=True)


def test_a_worker_host_cut_off_from_the_broker_stops_at_its_fence(lab):
    owner, procs, w1, w2 = owner_and_two_worker_hosts(lab)
    mx = lab.mx(delay={"DOT": 0.2})  # w1's batches last long enough to be cut mid-way
    w1_host = lab.hosts["w1"]
    try:
        rcpts = [f"c{i}@far.test" for i in range(300)]
        submit(lab, "owner", rcpts)
        until(lambda: by_host(lab, mx)["w1"] >= 5, 120, "for w1 to be delivering")
        w1_host.cut_from(lab.hosts["broker"])
        cut_at = time.time()
        until(lambda: set(delivered(mx)) == set(rcpts), 3 * LEASE + 180, "for every message")
        until(lambda: time.time() > cut_at + 3 * LEASE, 3 * LEASE + 5, "for three leases")
        late = [d for s in mx.sessions if s.peer[0] == w1_host.ip for d in s.deliveries
                if d.at > cut_at + FENCE + 1.0]  # one message under way at the fence may end
        assert late == [], f"w1 delivered {len(late)} messages after its fence"
        w1_host.mend_to(lab.hosts["broker"])
        until(lambda: not owner.all_files(), 120, "for the owner's queue to empty")
        assert set(delivered(mx)) == set(rcpts)
    finally:
        mx.stop(no_assert=True)


def test_the_owner_restarted_with_remote_batches_in_flight(lab):
    owner, procs, w1, w2 = owner_and_two_worker_hosts(lab)
    mx = lab.mx(delay={"DOT": 0.05})
    try:
        rcpts = [f"r{i}@far.test" for i in range(300)]
        submit(lab, "owner", rcpts)
        until(lambda: len(mx.deliveries) >= 30, 120, "for the worker hosts to be delivering")
        for proc in procs:  # a restart: systemctl stop, then start
            proc.stop()
        procs = start_owner_procs(owner)
        until(lambda: set(delivered(mx)) == set(rcpts), 180, "for every message")
        until(lambda: not owner.all_files(), 60, "for the owner's queue to empty")
        got = delivered(mx)
        assert set(got.values()) == {1}, [r for r, n in got.items() if n > 1]
        assert stats(owner)["delivered"] == 300
    finally:
        mx.stop(no_assert=True)


def test_a_message_over_the_payload_cap_is_delivered_by_the_owner(lab, monkeypatch):
    monkeypatch.setenv("MAILFLOW_PAYLOAD_MAX", "20000")
    owner, procs = start_owner(lab)
    _, w1 = start_worker_host(lab, "w1")
    owner_sees_worker_hosts(procs[1], w1)
    mx = lab.mx()
    try:
        submit(lab, "owner", ["big@far.test"], b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 600)
        submit(lab, "owner", ["small@far.test"])
        mx.wait_for(2, timeout=60)
        names = {h.ip: n for n, h in lab.hosts.items()}
        sent_by = {r: names[s.peer[0]] for s in mx.sessions for d in s.deliveries for r in d.rcpt_to}
        assert sent_by == {"big@far.test": "owner", "small@far.test": "w1"}
        big = [d for d in mx.deliveries if d.rcpt_to == ["big@far.test"]][0]
        assert len(big.data) > 45_000
    finally:
        mx.stop(no_assert=True)


def test_two_full_nodes_on_one_broker_deliver_everything_once(lab):
    a, a_procs = start_owner(lab, "owner", consume_shared=True)
    b, b_procs = start_owner(lab, "node2", consume_shared=True)
    _, w1 = start_worker_host(lab, "w1")
    owner_sees_worker_hosts(a_procs[1], w1)
    owner_sees_worker_hosts(b_procs[1], w1)
    mx = lab.mx()
    try:
        to_a = [f"a{i}@far.test" for i in range(200)]
        to_b = [f"b{i}@far.test" for i in range(200)]
        submit(lab, "owner", to_a)
        submit(lab, "node2", to_b)
        mx.wait_for(400, timeout=180)
        until(lambda: not a.all_files() and not b.all_files(), 60, "for both queues to empty")
        got = delivered(mx)
        assert sorted(got) == sorted(to_a + to_b) and set(got.values()) == {1}
        assert stats(a)["delivered"] == 200 and stats(b)["delivered"] == 200
    finally:
        mx.stop(no_assert=True)
