"""Relay throughput: N messages by SMTP from 20 parallel clients into ``mailflow smtpd``,
delivered by a worker to one local sink on loopback.

    python -m bench [--messages 2000] [--size 4096] [--clients 20] [--broker embedded|redis|rabbitmq]

End-to-end msgs/s = N / (time the sink received the N-th - time of the first injection).
Prints one table row per run; exits 0 whatever the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import brokers  # noqa: E402
from tests.support.dnsserver import free_port  # noqa: E402
from tests.support.instance import Instance  # noqa: E402
from tests.support.mxserver import MXServer  # noqa: E402


def inject(port: int, total: int, clients: int, body: bytes) -> tuple[float, float]:
    """Send ``total`` messages over ``clients`` parallel sessions, one connection per message."""
    counter = iter(range(total))
    lock = threading.Lock()
    first: list[float] = []

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
                if n is None:
                    return
                if not first:
                    first.append(time.time())
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                s.sendmail("bench@sender.test", [f"r{n}@sink.test"], body)

    started = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return first[0], time.time() - started


def run(messages: int, size: int, clients: int, broker: str) -> dict[str, float | str]:
    url = brokers.url_for(broker)
    sink_port = free_port("127.0.0.2")
    smtp_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as tmp:
        inst = Instance(Path(tmp), broker_url=url, config={
            "smtp.ini": f"listen = 127.0.0.1:{smtp_port}\n",
            "outbound.ini": f"enable_tls = false\nqueue_dir = {tmp}/queue\n",
            "plugins": "bench_route\n",
        })
        (inst.config_dir / "bench_route.py").write_text(
            "from mailflow import hooks\nfrom mailflow.codes import OK\n\n"
            "@hooks.get_mx.connect\ndef sink(hmail, domain, **kwargs):\n"
            f"    return OK, '127.0.0.2:{sink_port}'\n")
        sink = MXServer("127.0.0.2", sink_port).start()
        try:
            inst.start_smtpd()
            inst.start_worker("bench", concurrency=16)
            line = b"x" * 76 + b"\r\n"
            body = b"Subject: bench\r\n\r\n" + line * max(1, size // len(line))
            first, inject_time = inject(smtp_port, messages, clients, body)
            got = sink.wait_for(messages, timeout=max(120, messages / 5))
            last = max(d.at for d in got)
            return {"broker": broker, "messages": messages, "size": size,
                    "inject_per_s": messages / inject_time, "e2e_per_s": messages / (last - first),
                    "sessions_per_1000": len(sink.sessions) * 1000 / messages}
        finally:
            inst.stop_all()
            sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--broker", action="append", choices=brokers.BROKERS)
    args = parser.parse_args()
    print(f"{'broker':<10} {'msgs':>6} {'size':>6} {'inject/s':>9} {'e2e/s':>7} {'sessions/1000':>14}")
    for broker in args.broker or ["embedded", "redis", "rabbitmq"]:
        try:
            r = run(args.messages, args.size, args.clients, broker)
        except BaseException as exc:  # a missing broker or a failed run is reported, not fatal
            print(f"{broker:<10} failed: {type(exc).__name__}: {exc}")
            continue
        print(f"{r['broker']:<10} {r['messages']:>6} {r['size']:>6} {r['inject_per_s']:>9.0f} "
              f"{r['e2e_per_s']:>7.0f} {r['sessions_per_1000']:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
