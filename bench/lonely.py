"""Scenario 13: fresh mail behind a large backlog to one slow domain (issue 26's last goal).

N entries (50,000) for slow.test are due at once, and slow.test's receiver holds every
reply (1 s by default), so the backlog drains at a few messages a second per connection.
While it drains, one message each to M fresh domains (fresh<n>.test, their own fast
receiver) is submitted over SMTP, one every 1/rate seconds: the time from each 250 to its
arrival, p50 and p99.  Goal: p99 ≤ 5 s.
"""

from __future__ import annotations

import smtplib
import statistics
import tempfile
import time
from pathlib import Path

from bench import tools
from bench.backlog import write_backlog
from bench.relay import workdir
from harness import brokers
from harness.dnsserver import free_port
from harness.instance import Instance

PLUGIN = """from mailflow import hooks
from mailflow.codes import OK


@hooks.get_mx.connect
def route(hmail, domain, **kwargs):
    if domain == "sink.test":  # the backlog: the slow receiver
        return OK, "127.0.0.2:{slow}"
    return OK, "127.0.0.3:{fast}"
"""


def run(*, entries: int = 50_000, fresh: int = 60, rate: float = 2.0,
        delay: float = 1.0) -> dict[str, object]:
    slow_port, fast_port, smtp_port = free_port("127.0.0.2"), free_port("127.0.0.3"), free_port()
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-", dir=workdir()) as tmp:
        inst = Instance(Path(tmp), broker_url=brokers.url_for("redis"), config={
            "smtp.ini": f"listen = 127.0.0.1:{smtp_port}\n",
            "relay_acl_allow": "127.0.0.1\n",
            "outbound.ini": f"enable_tls = false\nqueue_dir = {tmp}/queue\n",
            "plugins": "bench_lonely\n"})
        inst.write_config("bench_lonely.py", PLUGIN.format(slow=slow_port, fast=fast_port))
        write_backlog(inst.queue_dir / "pending", entries, next_attempt_ms=int(time.time() * 1000))
        slow = tools.Sink("127.0.0.2", slow_port, postfix=False, delay=delay)
        fast = tools.Sink("127.0.0.3", fast_port, postfix=False)
        try:
            inst.start_smtpd()
            inst.start_worker("lonely", concurrency=None, pool=None)
            deadline = time.monotonic() + 120
            while not slow.arrivals and time.monotonic() < deadline:
                time.sleep(0.05)
            queued: dict[str, float] = {}
            for n in range(fresh):
                rcpt = f"r@fresh{n}.test"
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
                    s.sendmail("bench@sender.test", [rcpt], f"Subject: fresh {n}\r\n\r\nhello\r\n")
                queued[rcpt] = time.time()
                time.sleep(1 / rate)
            deadline = time.monotonic() + 120
            while len([r for r in queued if r in fast.by_rcpt]) < fresh and time.monotonic() < deadline:
                time.sleep(0.1)
            waits = sorted(fast.by_rcpt[r] - at for r, at in queued.items() if r in fast.by_rcpt)
            return {"scenario": "lonely", "backlog": entries, "fresh": fresh, "delay": delay,
                    "arrived": len(waits), "p50": statistics.median(waits) if waits else None,
                    "p99": waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else None,
                    "backlog_delivered": len(slow.arrivals)}
        finally:
            inst.stop_all()
            slow.stop()
            fast.stop()
