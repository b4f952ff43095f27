"""Scenario 4: a large queue.

Phase 1: N entries deferred for a day (as after an outage of their
destination); one worker at default settings runs the queue manager over
them: its RSS and CPU while it idles over the backlog, and how long
``mailflow queue stats`` takes.  Phase 2: the same N entries due at once when
the worker starts (as after a restart): time from starting the worker to
the first delivery, and the drain rate.

The entries are written straight into ``pending/`` in the queue file format
(no fsync, no SMTP): the scenario measures the queue, not submission.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import memory, tools
from bench.relay import route_plugin, workdir
from harness import brokers
from harness.dnsserver import free_port
from harness.instance import Instance
from mailflow.address import parse_address
from mailflow.message import dot_stuff
from mailflow.queue import entry as qfile
from mailflow.queue.entry import EntryName
from mailflow.queue.todo import ToDo

DAY_MS = 86_400_000


def write_backlog(pending: Path, count: int, *, next_attempt_ms: int, size: int = 1024) -> None:
    """``count`` single-recipient entries for sink.test, one file each, in pending/."""
    pending.mkdir(parents=True, exist_ok=True)
    body = dot_stuff(b"From: bench@sender.test\r\nSubject: backlog\r\n\r\n" + b"x" * size + b"\r\n")
    sender = parse_address("bench@sender.test")
    now = int(time.time() * 1000)
    for n in range(count):
        todo = ToDo(uuid=f"backlog{n:07d}.1", queue_time=now, domain="sink.test", mail_from=sender,
                    rcpt_to=[parse_address(f"r{n}@sink.test")],
                    record={"last_error": "451 4.3.0 destination down (bench)"})
        name = EntryName(next_attempt_ms, 1, now, todo.uuid, todo.domain)
        (pending / str(name)).write_bytes(qfile.encode_header(todo) + body)


def reschedule_all(pending: Path, next_attempt_ms: int) -> None:
    """Make every entry due at ``next_attempt_ms`` (a rename each, as the queue itself does)."""
    for entry in os.scandir(pending):
        name = EntryName.parse(entry.name)
        if name:
            os.rename(entry.path, pending / str(name.rescheduled(next_attempt_ms)))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(broker: str, *, entries: int = 100_000, settle: float = 10.0, drain_window: float = 60.0
        ) -> dict[str, object]:
    url = brokers.url_for(broker)
    sink_port = free_port("127.0.0.2")
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-", dir=workdir()) as tmp:
        inst = Instance(Path(tmp), broker_url=url, config={
            "outbound.ini": f"enable_tls = false\nqueue_dir = {tmp}/queue\n",
            "plugins": "bench_route\n",
        })
        inst.write_config("bench_route.py", route_plugin(sink_port))
        pending = inst.queue_dir / "pending"
        t = time.monotonic()
        write_backlog(pending, entries, next_attempt_ms=int(time.time() * 1000) + DAY_MS)
        write_s = time.monotonic() - t
        sink = tools.Sink("127.0.0.2", sink_port, postfix=False)
        try:
            # phase 1: deferred
            worker = inst.start_worker("backlog", concurrency=None, pool=None)
            time.sleep(2.0)  # the queue manager takes the lock and scans
            cpu0, peak_rss = cpu_seconds(worker.pid), 0
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline:
                peak_rss = max(peak_rss, sum(memory.rss_kib(p) for p in memory.descendants(worker.pid)))
                time.sleep(0.25)
            idle_cpu = (cpu_seconds(worker.pid) - cpu0) / settle
            t = time.monotonic()
            stats = inst.mailflow("queue", "stats", timeout=120)
            stats_s = time.monotonic() - t
            if stats.returncode != 0:
                raise RuntimeError(f"queue stats failed: {stats.stderr.decode()[-500:]}")
            worker.stop()
            # phase 2: all due when the worker starts
            reschedule_all(pending, int(time.time() * 1000) - 1000)
            started = time.time()
            inst.start_worker("drain", concurrency=None, pool=None)
            first_ok = sink.wait_for(1, timeout=120)
            first_s = (sink.arrivals[0] - started) if first_ok else None
            sink.wait_for(entries, timeout=drain_window)
            drained = len(sink.arrivals)
            window = sink.arrivals[-1] - sink.arrivals[0] if drained > 1 else 0.0
            return {
                "scenario": "backlog", "broker": broker, "entries": entries, "write_s": write_s,
                "worker_rss_mb": peak_rss / 1024, "idle_cpu_pct": idle_cpu * 100,
                "stats_s": stats_s, "stats_out": stats.stdout.decode().strip(),
                "first_delivery_s": first_s, "drained": drained,
                "drain_per_s": drained / window if first_ok and window > 0 else None,
            }
        finally:
            inst.stop_all()
            sink.stop()
            subprocess.run(["rm", "-rf", str(inst.queue_dir)], check=False)  # faster than rmtree
