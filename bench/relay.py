"""Scenarios 1, 2, 3 and 5: relay throughput, latency, peak memory, sink sessions.

One mailflow installation per run, at default settings (``mailflow smtpd`` and
one ``celery -A mailflow worker`` with celeryconfig's pool and concurrency)
but for smtp.ini ``nodes`` (``cpus`` unless told: one submission process per
core, as Postfix runs many smtpd processes and Haraka one node per CPU),
every message fsync'd before its 250, all mail routed by a ``get_mx`` receiver
to one sink on 127.0.0.2.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import memory, tools
from bench.mix import Mix, lonely_latency
from harness import brokers
from harness.dnsserver import free_port
from harness.instance import Instance

ROUTE_PLUGIN = """\
from mailflow import hooks
from mailflow.codes import OK


@hooks.get_mx.connect
def sink(hmail, domain, **kwargs):
    if {domains} and domain.endswith(".sink.test") and domain[:1] == "d":  # d<n>.sink.test
        n = int(domain[1:].split('.')[0])
        return OK, f"127.0.{{1 + n // 250}}.{{1 + n % 250}}:{port}"
    if {sites} and domain.endswith(".sink.test") and domain[:1] == "m":  # m<n>.sink.test: bench/mix.py
        site = int(domain[1:].split('.')[0]) % {sites}
        return OK, f"127.0.{{3 + site // 250}}.{{1 + site % 250}}:{port}"
    return OK, '127.0.0.2:{port}'
"""


def route_plugin(port: int, domains: int = 0, sites: int = 0) -> str:
    """The ``get_mx`` receiver sending all mail to the sink (one address per domain with
    ``domains``; the mix workload's domains to their site's address)."""
    return ROUTE_PLUGIN.format(port=port, domains=domains, sites=sites)


def domain_address(n: int) -> str:
    """The address of recipient domain d<n>.sink.test: 127.0.1.1, 127.0.1.2, ... 127.0.2.1 ..."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def sink_hosts(domains: int) -> str:
    """Where the sink listens: 127.0.0.2, or one address per recipient domain, so that each
    domain is a destination of its own for either relay."""
    return ",".join(domain_address(n) for n in range(domains)) if domains else "127.0.0.2"


#: Celery workers per relay (``--workers``): 1, mailflow at its defaults, or one per core
#: as deploy/systemd runs them (``mailflow-worker@1``, ``@2``...).  Each worker is one
#: process whose threads share one GIL; its connection limits hold per worker.
WORKERS = 1


def worker_share(total: int) -> int:
    """A connection limit for all of a relay's workers, as each worker's share of it (as
    Haraka's limits are split between its nodes): the same limits as the other relays."""
    return max(1, total // WORKERS)


#: Where the benchmark's installations live; see workdir().
WORKDIR_ENV = "MAILFLOW_BENCH_DIR"


def workdir() -> str | None:
    """The parent of each run's installation and queue ($MAILFLOW_BENCH_DIR, else the temp dir)."""
    return os.environ.get(WORKDIR_ENV) or None


@dataclass
class Relay:
    instance: Instance
    sink: tools.Sink
    smtp_port: int
    #: the HTTP API's inject URL and a key for it, when the relay serves the API
    api: tuple[str, str] | None = None

    def pids(self) -> list[int]:
        return [p.pid for p in self.instance.procs if p.popen.poll() is None]


@contextmanager
def relay(broker: str, *, postfix_sink: bool, workers: int | None = None, nodes: str = "cpus",
          outbound: str = "", sink_wait: float = 0.0, sink_delay: float = 0.0,
          domains: int = 0, files: dict[str, str] | None = None, mix: Mix | None = None,
          api: bool = False) -> Iterator[Relay]:
    """A running smtpd and ``workers`` workers on ``broker``, delivering to a fresh sink
    (smtp-sink holding each DATA reply ``sink_wait`` seconds, or ours holding every reply
    ``sink_delay``; one address per domain with ``domains``); ``outbound`` adds to
    outbound.ini; ``api``: the HTTP injection API listens too.  ``workers``: WORKERS."""
    url = brokers.url_for(broker)
    sink_port = free_port("127.0.0.2")
    smtp_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-", dir=workdir()) as tmp:
        inst = Instance(Path(tmp), broker_url=url, config={
            "smtp.ini": f"listen = 127.0.0.1:{smtp_port}\nnodes = {nodes}\n",
            "outbound.ini": f"enable_tls = false\nqueue_dir = {tmp}/queue\n{outbound}",
            "plugins": "bench_route\n",
        })
        inst.write_config("bench_route.py", route_plugin(sink_port, domains, mix.sites if mix else 0))
        for name, text in (files or {}).items():  # more config files (shaping.ini, webhooks.ini…)
            inst.write_config(name, text)
        sink = tools.Sink(mix.sink_hosts() if mix else sink_hosts(domains), sink_port,
                          postfix=postfix_sink and not domains and not mix, wait=sink_wait, delay=sink_delay)
        try:
            served = None
            if api:
                http_port = free_port()
                inst.write_config("http.ini", f"listen = 127.0.0.1:{http_port}\n")
                key = inst.mailflow("apikey", "add", "bench").stdout.decode().strip()
                served = (f"http://127.0.0.1:{http_port}/api/inject/v1", key)
            inst.start_smtpd()
            for n in range(workers or WORKERS):
                inst.start_worker(f"bench{n}", concurrency=None, pool=None)
            yield Relay(inst, sink, smtp_port, served)
        finally:
            inst.stop_all()
            sink.stop()


def throughput(broker: str, *, messages: int, size: int, sessions: int = 20,
               postfix: bool | None = None, workers: int | None = None, nodes: str = "cpus",
               outbound: str = "", sink_wait: float = 0.0, sink_delay: float = 0.0,
               domains: int = 0, files: dict[str, str] | None = None,
               settled: Callable[[], bool] | None = None, mix: Mix | None = None,
               http: tuple[int, int] | None = None) -> dict[str, object]:
    """Scenario 1 (with 3 and 5 measured on the way): N messages, closed loop; with
    ``settled``, the run ends only when it also holds (every webhook event accepted);
    with ``mix``, its traffic (bench/mix.py) instead of ``messages`` of ``size``; with
    ``http`` (recipients per request, clients), injected through the HTTP API instead."""
    postfix = tools.have_postfix_tools() if postfix is None else postfix
    with relay(broker, postfix_sink=postfix, workers=workers, nodes=nodes, outbound=outbound,
               sink_wait=sink_wait, sink_delay=sink_delay, domains=domains, files=files, mix=mix,
               api=http is not None) as r:
        time.sleep(0.5)
        figures = measure(r.pids(), r.smtp_port, r.sink, messages=messages, size=size,
                          sessions=sessions, postfix=postfix and not domains, domains=domains,
                          settled=settled, mix=mix,
                          http=(*r.api, *http) if r.api is not None and http is not None else None)
        # smtp-sink counts a session when it ends: stopping mailflow closes its pooled ones
        r.instance.stop_all()
        time.sleep(0.5)
        figures["sessions_per_1000"] = r.sink.sessions * 1000 / max(figures["delivered"], 1)
        return {"scenario": "relay", "relay": "mailflow", "broker": broker, "workers": workers or WORKERS,
                "nodes": nodes, **figures}


def measure(pids: list[int], port: int, sink: tools.Sink, *, messages: int, size: int,
            sessions: int, postfix: bool, domains: int = 0,
            settled: Callable[[], bool] | None = None, mix: Mix | None = None,
            http: tuple[str, str, int, int] | None = None) -> dict[str, Any]:
    """Inject N messages into the relay listening on ``port`` and wait for them at the sink
    (and for ``settled``): rates, and the relay's peak PSS and CPU per message (its
    process trees ``pids``); with ``mix``, its traffic, and the one-message domains' wait."""
    plan = mix.write(Path(tempfile.mkdtemp(prefix="mailflow-mix-")) / "plan") if mix else None
    if mix:
        messages, size, postfix = mix.messages, 0, False
    cpu_before = memory.cpu_seconds(pids)
    with memory.PeakSampler(pids) as pss:
        run = tools.inject(port, messages=messages, size=size, sessions=sessions, postfix=postfix,
                           domains=domains, plan=plan, http=http)
        run.wait(timeout=max(300, messages / 2))
        delivered = sink.wait_for(messages, timeout=max(120, messages / 5))
        settled_at = 0.0
        if settled is not None:
            deadline = time.time() + 120
            while not settled() and time.time() < deadline:
                time.sleep(0.01)
            settled_at = time.time() if settled() else float("inf")
    cpu = memory.cpu_seconds(pids) - cpu_before
    got = len(sink.arrivals)
    last = max(sink.arrivals[-1] if got else run.ended, settled_at)
    if plan is not None:
        shutil.rmtree(plan.parent, ignore_errors=True)
    waited = lonely_latency(mix, run.queued, sink.by_rcpt) if mix else {}
    return {
        **waited,
        "messages": messages, "size": size,
        "tools": "http" if http else "postfix" if postfix else "own",
        "inject_per_s": messages / max(run.ended - run.started, 1e-9),
        "e2e_per_s": (messages / (last - run.started)) if delivered else None,
        "delivered": got, "errors": run.errors[:5],
        "pss_mb": pss.peak_kib / 1024, "cpu_ms": cpu * 1000 / max(got, 1),
    }


def latency(broker: str, *, rate: float = 100.0, duration: float = 30.0, size: int = 4096,
            nodes: str = "cpus") -> dict[str, object]:
    """Scenario 2: open-loop load; queue (the 250) to delivered (the sink's "."), per message."""
    with relay(broker, postfix_sink=False, nodes=nodes) as r:
        time.sleep(0.5)
        run = tools.inject_at_rate(r.smtp_port, rate=rate, duration=duration, size=size)
        run.wait(timeout=duration * 10 + 60)
        r.sink.wait_for(len(run.queued), timeout=60)
        delays = sorted(r.sink.by_rcpt[f"r{n}@sink.test"] - at for n, at in run.queued.items()
                        if f"r{n}@sink.test" in r.sink.by_rcpt)
        missing = len(run.queued) - len(delays)
        return {
            "scenario": "latency", "broker": broker, "rate": rate, "duration": duration,
            "queued": len(run.queued), "missing": missing, "errors": run.errors[:5],
            "p50_s": statistics.median(delays) if delays else None,
            "p99_s": delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else None,
            "max_s": delays[-1] if delays else None,
        }
