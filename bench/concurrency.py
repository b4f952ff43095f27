"""Scenario 8: one worker node holding ``concurrency_max`` = 1,000 connections to slow receivers.

1,000 messages to 1,000 recipient domains, each its own address (127.0.x.y), whose
receiver (``bench.ownsink``) holds every reply 2 s: each message is a batch of its
own and keeps a connection open for about ten seconds, so the node's connections
climb to what its settings allow.  Printed: the most connections the node had open
at once (its sockets to the sink's port, from ``/proc/<pid>/net/tcp``), the worker's
peak PSS while it held them, and the time to deliver all.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench import memory, relay, tools

CONNECTIONS = 1000
REPLY_DELAY = 2.0


def established_to(pid: int, port: int) -> int:
    """Established TCP connections (IPv4) in ``pid``'s network namespace whose far end is ``port``."""
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def run(connections: int = CONNECTIONS, delay: float = REPLY_DELAY, broker: str = "redis") -> dict[str, Any]:
    outbound = f"concurrency_max = {connections}\npool_concurrency_max = 10\n"
    with relay.relay(broker, postfix_sink=False, outbound=outbound, sink_delay=delay,
                     domains=connections) as r:
        worker = next(p for p in r.instance.procs if p.name.startswith("worker"))
        time.sleep(0.5)
        peak = {"connections": 0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak["connections"] = max(peak["connections"], established_to(worker.pid, r.sink.port))
                stop.wait(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.time()
        with memory.PeakSampler([worker.pid]) as pss:
            run_ = tools.inject(r.smtp_port, messages=connections, size=4096, sessions=50, postfix=False,
                                domains=connections)
            run_.wait(timeout=600)
            delivered = r.sink.wait_for(connections, timeout=600)
        stop.set()
        watcher.join()
        return {"scenario": "connections", "concurrency_max": connections, "delay": delay,
                "peak_connections": peak["connections"], "worker_pss_mb": pss.peak_kib / 1024,
                "delivered": len(r.sink.arrivals), "seconds": time.time() - started if delivered else None,
                "errors": run_.errors[:5]}
