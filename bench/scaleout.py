"""Scenario 6: scale-out -- what each role costs per message, and whether hosts add up.

Roles run as separate process trees on this machine, each in a cgroup of its own
(cgroup v1 ``cpu``/``cpuacct``, or v2), so each one's CPU is measured, and capped
where the check needs it:

- *owner*: ``mailflow smtpd`` and one worker that consumes only the owner's queue
  (``-X celery``): submission, claims, lookup_mx, recording reports;
- *worker host*: ``celery -A mailflow worker`` in a directory of its own, no queue:
  acquire_connection and transmit from parcels;
- *broker*: a Redis server of the benchmark's own (its CPU from the cgroup, its bytes
  from ``INFO stats``).

Costs: N messages injected by smtp-source (20 sessions) into the owner with one worker
host, delivered to a sink; CPU ms per message per role, broker bytes per message.
From them, the capacity model: with the owner on one core and each worker host on a
quarter of one, how many worker hosts one owner can feed.

Check of the model: owner capped at one core, worker hosts at a quarter each, a
receiver that holds every reply 50 ms; messages delivered per second with one worker
host, then with two.  Needs root (cgroups); prints why when it cannot run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from bench import tools
from bench.relay import route_plugin, workdir
from harness.dnsserver import free_port
from harness.instance import Instance, Proc

KIB = 1024


class CGroup:
    """A CPU cgroup (v1 ``cpu`` + ``cpuacct``, else v2) that processes are started in."""

    V1 = Path("/sys/fs/cgroup/cpu")
    V1_ACCT = Path("/sys/fs/cgroup/cpuacct")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, name: str, cores: float | None = None):
        self.name = f"mailflow-bench-{os.getpid()}-{name}"
        self.v1 = (self.V1 / "cpu.cfs_quota_us").exists()
        if self.v1:
            self.dirs = [self.V1 / self.name, self.V1_ACCT / self.name]
        else:
            self.dirs = [self.V2 / self.name]
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        if cores is not None:
            period = 100_000
            if self.v1:
                (self.dirs[0] / "cpu.cfs_period_us").write_text(str(period))
                (self.dirs[0] / "cpu.cfs_quota_us").write_text(str(int(cores * period)))
            else:
                (self.dirs[0] / "cpu.max").write_text(f"{int(cores * period)} {period}")

    @classmethod
    def available(cls) -> str | None:
        if os.geteuid() != 0:
            return "cgroups need root"
        if not (cls.V1 / "cpu.cfs_quota_us").exists() and "cpu" not in _v2_controllers(cls.V2):
            return "no cgroup CPU controller here"
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup (and all it forks)."""
        procs = " ".join(str(d / "cgroup.procs") for d in self.dirs)
        script = f'for f in {procs}; do echo $$ > "$f"; done; exec "$@"'
        return ["sh", "-c", script, "sh", *argv]

    def cpu_ns(self) -> int:
        if self.v1:
            return int((self.dirs[1] / "cpuacct.usage").read_text())
        for line in (self.dirs[0] / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1000
        return 0

    def remove(self) -> None:
        for d in self.dirs:
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _v2_controllers(root: Path) -> str:
    try:
        return (root / "cgroup.controllers").read_text()
    except OSError:
        return ""


class Cluster:
    """A broker, an owner and worker hosts, each in its cgroup; a sink on 127.0.0.2."""

    def __init__(self, tmp: Path, *, owner_cores: float | None, host_cores: float | None,
                 hosts: int, delay: float = 0.0):
        self.tmp = tmp
        self.groups: list[CGroup] = []
        self.broker_group = self._group("broker")
        port = free_port()
        self.redis_proc = subprocess.Popen(
            self.broker_group.wrap(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                    "--save", "", "--appendonly", "no"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis = redis.Redis(port=port)
        _wait(lambda: self._redis_up(), 20, "Redis")
        url = f"redis://127.0.0.1:{port}/0"
        postfix = tools.have_postfix_tools() and not delay
        self.sink = tools.Sink("127.0.0.2", free_port("127.0.0.2"), postfix=postfix, delay=delay)
        self.smtp_port = free_port()
        self.owner_group = self._group("owner", owner_cores)
        self.owner = Instance(tmp / "owner", broker_url=url, wrap=self.owner_group.wrap, config={
            "smtp.ini": f"listen = 127.0.0.1:{self.smtp_port}\nnodes = 1\n",
            "outbound.ini": f"enable_tls = false\nqueue_dir = {tmp}/owner/queue\n",
            "plugins": "bench_route\n", "me": "owner.bench\n"})
        self.owner.write_config("bench_route.py", route_plugin(self.sink.port))
        self.owner.start_smtpd()
        self.own_worker = self.owner.start_worker("own", concurrency=None, pool=None,
                                                  extra=["-X", "celery"])
        self.host_groups = [self._group(f"host{n}", host_cores) for n in range(hosts)]
        self.hosts: list[tuple[Instance, Proc]] = []
        for n, group in enumerate(self.host_groups):
            inst = Instance(tmp / f"host{n}", broker_url=url, wrap=group.wrap,
                            config={"outbound.ini": "enable_tls = false\n", "me": f"host{n}.bench\n"})
            worker = inst.start_worker(f"host{n}", concurrency=None, pool=None)
            self.own_worker.wait_for_output(f"worker host {worker.node} is here", timeout=30)
            self.hosts.append((inst, worker))

    def _group(self, name: str, cores: float | None = None) -> CGroup:
        group = CGroup(name, cores)
        self.groups.append(group)
        return group

    def _redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def broker_bytes(self) -> int:
        info = self.redis.info("stats")
        return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])

    def cpu(self) -> dict[str, int]:
        out = {"owner": self.owner_group.cpu_ns(), "broker": self.broker_group.cpu_ns()}
        for n, group in enumerate(self.host_groups):
            out[f"host{n}"] = group.cpu_ns()
        return out

    def close(self) -> None:
        for inst, _ in self.hosts:
            inst.stop_all()
        self.owner.stop_all()
        self.sink.stop()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)
        for group in self.groups:
            group.remove()


def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout} s")
        time.sleep(0.1)


def _empty(queue: Path) -> bool:
    return not any(p.is_file() for d in ("pending", "active") if (queue / d).exists()
                   for p in (queue / d).rglob("*"))


@contextlib.contextmanager
def cluster(**kwargs: object) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="mailflow-scaleout-", dir=workdir()) as tmp:
        c = Cluster(Path(tmp), **kwargs)  # type: ignore[arg-type]
        try:
            yield c
        finally:
            c.close()


def costs(*, messages: int, size: int) -> dict[str, object]:
    """CPU ms and broker bytes per message, by role, with one worker host and no caps."""
    postfix = tools.have_postfix_tools()
    with cluster(owner_cores=None, host_cores=None, hosts=1) as c:
        time.sleep(0.5)
        cpu0, bytes0 = c.cpu(), c.broker_bytes()
        run = tools.inject(c.smtp_port, messages=messages, size=size, sessions=20, postfix=postfix)
        run.wait(timeout=max(300, messages / 2))
        c.sink.wait_for(messages, timeout=max(120, messages / 5))
        _wait(lambda: _empty(c.tmp / "owner" / "queue"), 60, "the owner's queue to empty")
        time.sleep(1.0)  # the last reports recorded
        cpu1, bytes1 = c.cpu(), c.broker_bytes()
        got = len(c.sink.arrivals)
        delivered_by_host = sum(1 for line in c.hosts[0][1].output().splitlines()
                                if "mailflow.transmit[" in line and " succeeded " in line)
        per = {role: (cpu1[role] - cpu0[role]) / 1e6 / max(got, 1) for role in cpu0}
        return {"scenario": "scaleout-costs", "size": size, "messages": messages, "delivered": got,
                "owner_ms": per["owner"], "host_ms": per["host0"], "broker_ms": per["broker"],
                "broker_bytes": (bytes1 - bytes0) / max(got, 1),
                "host_transmits": delivered_by_host}


def capacity(owner_ms: float, host_ms: float, owner_cores: float = 1.0,
             host_cores: float = 0.25) -> float:
    """Worker hosts one owner can feed: the owner's rate over one host's, CPU-bound."""
    return (owner_cores * 1000 / owner_ms) / (host_cores * 1000 / host_ms)


def check(*, hosts: int, messages: int, delay: float = 0.05, size: int = 4 * KIB) -> dict[str, object]:
    """Delivered messages per second with the owner on one core and each host on a quarter."""
    with cluster(owner_cores=1.0, host_cores=0.25, hosts=hosts, delay=delay) as c:
        time.sleep(0.5)
        run = tools.inject(c.smtp_port, messages=messages, size=size, sessions=20,
                           postfix=tools.have_postfix_tools())
        run.wait(timeout=max(300, messages))
        c.sink.wait_for(messages, timeout=max(300, messages))
        arrivals = sorted(c.sink.arrivals)
        got = len(arrivals)
        rate = None
        if got >= 20:  # the steady part: from the 10th to the 90th percentile of arrivals
            lo, hi = arrivals[got // 10], arrivals[got * 9 // 10]
            rate = (got * 9 // 10 - got // 10) / (hi - lo) if hi > lo else None
        return {"scenario": "scaleout-check", "hosts": hosts, "messages": messages,
                "delivered": got, "per_s": rate, "errors": run.errors[:3]}


if __name__ == "__main__":  # a quick look: python -m bench.scaleout
    print(CGroup.available() or "cgroups available", file=sys.stderr)
    print(costs(messages=500, size=4 * KIB))
