"""mailflow's benchmarks: relay throughput, latency, memory, backlog, connections, scale-out, peers.

    python -m bench [--quick] [--only relay,latency,backlog,scaleout,peers,connections]
                    [--rounds N] [--broker NAME ...]

Prints the figures of each scenario and then the goals table (each goal beside
its figure, "met" or "not met").  Always exits 0: the figures are for reading,
no test asserts a timing (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import (  # noqa: E402
    backlog,
    concurrency,
    haraka,
    journaled,
    lonely,
    memory,
    peers,
    postfix,
    receiver,
    relay,
    scaleout,
    signing,
    tools,
)
from harness.brokers import BROKERS  # noqa: E402
from harness.dnsserver import free_port  # noqa: E402
from mailflow import config as configmod  # noqa: E402
from mailflow.classify.command import parse_reply  # noqa: E402
from mailflow.classify.rules import classify  # noqa: E402
from mailflow.errors import Reply  # noqa: E402
from mailflow.pipeline.shaping import RouteShaping  # noqa: E402
from mailflow.wire.payloads import Outcome  # noqa: E402
from tests.support.replies import REPLIES  # noqa: E402

Result = dict[str, Any]
Row = tuple[str, str, bool | None]  # goal, figure, met (None: not measured)
KIB = 1024


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def attempt(what: str, fn: Callable[[], Result]) -> Result | None:
    """Run one scenario; a missing broker or a failed run is printed, not fatal."""
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - pytest.skip from a missing broker is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"  {what}: failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def run_relay(brokers: list[str], workloads: list[tuple[int, int]], nodes: str) -> list[Result]:
    kind = "smtp-source/smtp-sink" if tools.have_postfix_tools() else "bench.ownsource/bench.ownsink"
    print(f"\n## 1, 3, 5. Relay throughput ({kind}, 20 sessions, one connection per message)\n")
    print(f"{'broker':<9} {'workload':>12} {'inject/s':>9} {'e2e/s':>7} {'peak PSS MB':>12} "
          f"{'sessions/1000':>14}", flush=True)
    out = []
    for broker in brokers:
        for messages, size in workloads:
            r = attempt(f"{broker} {messages}x{size // KIB}KiB",
                        partial(relay.throughput, broker, messages=messages, size=size, nodes=nodes))
            if r is None:
                continue
            out.append(r)
            print(f"{broker:<9} {f'{messages}x{size // KIB}KiB':>12} {fmt(r['inject_per_s']):>9} "
                  f"{fmt(r['e2e_per_s']):>7} {fmt(r['pss_mb']):>12} {fmt(r['sessions_per_1000'], '.1f'):>14}"
                  + (f"  (delivered {r['delivered']}/{messages}; {r['errors']})"
                     if r["delivered"] < messages or r["errors"] else ""), flush=True)
    return out


def run_latency(broker: str, rate: float, duration: float, nodes: str) -> Result | None:
    print(f"\n## 2. Latency ({broker}, {rate:.0f} msgs/s offered for {duration:.0f} s, 4 KiB; "
          "queued = the 250, delivered = the sink's final '.')\n", flush=True)
    r = attempt("latency", lambda: relay.latency(broker, rate=rate, duration=duration, nodes=nodes))
    if r:
        print(f"queued {r['queued']}, missing {r['missing']}, p50 {fmt(r['p50_s'], '.3f')} s, "
              f"p99 {fmt(r['p99_s'], '.3f')} s, max {fmt(r['max_s'], '.3f')} s"
              + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
    return r


def run_backlog(broker: str, entries: int) -> Result | None:
    print(f"\n## 4. Backlog ({broker}, {entries} entries of 1 KiB)\n", flush=True)
    r = attempt("backlog", lambda: backlog.run(broker, entries=entries))
    if r:
        print(f"deferred: worker RSS {fmt(r['worker_rss_mb'])} MB, worker CPU while idle "
              f"{fmt(r['idle_cpu_pct'], '.1f')} %, `mailflow queue stats` {fmt(r['stats_s'], '.2f')} s "
              f"({r['stats_out']})\n"
              f"due at start: first delivery {fmt(r['first_delivery_s'], '.1f')} s after the worker "
              f"was started, drained {r['drained']} at {fmt(r['drain_per_s'])} msgs/s", flush=True)
    return r


def run_scaleout(quick: bool) -> tuple[list[Result], list[Result]]:
    print("\n## 6. Scale-out (Redis; owner = smtpd + a worker of its own queue, worker host = a "
          "worker with no queue, each in its own cgroup)\n", flush=True)
    why = scaleout.CGroup.available()
    if why:
        print(f"  not run: {why}", flush=True)
        return [], []
    costs = []
    print(f"{'workload':>12} {'owner ms/msg':>13} {'host ms/msg':>12} {'broker ms/msg':>14} "
          f"{'broker B/msg':>13} {'hosts per owner':>16}", flush=True)
    workloads = [(500, 4 * KIB), (200, 64 * KIB)] if quick else [(3000, 4 * KIB), (1000, 64 * KIB)]
    for messages, size in workloads:
        r = attempt(f"costs {size // KIB} KiB", partial(scaleout.costs, messages=messages, size=size))
        if r is None:
            continue
        r["hosts_per_owner"] = scaleout.capacity(r["owner_ms"], r["host_ms"])
        costs.append(r)
        print(f"{f'{messages}x{size // KIB}KiB':>12} {r['owner_ms']:>13.2f} {r['host_ms']:>12.2f} "
              f"{r['broker_ms']:>14.3f} {r['broker_bytes']:>13,.0f} {r['hosts_per_owner']:>16.1f}",
              flush=True)
    print("(hosts per owner: the owner's message rate on one core over one worker host's on a "
          "quarter core, both CPU-bound)\n", flush=True)
    checks = []
    messages = 600 if quick else 3000
    print(f"check: owner capped at 1 core, worker hosts at 0.25 each, every receiver reply held "
          f"50 ms; {messages} x 4 KiB", flush=True)
    for hosts in (1, 2):
        r = attempt(f"check with {hosts}", partial(scaleout.check, hosts=hosts, messages=messages))
        if r is None:
            continue
        checks.append(r)
        print(f"  {hosts} worker host(s): {fmt(r['per_s'])} msgs/s delivered"
              + (f"  (delivered {r['delivered']}/{messages}; {r['errors']})"
                 if r["delivered"] < messages or r["errors"] else ""), flush=True)
    return costs, checks


def run_peers(rounds: int, quick: bool) -> dict[str, dict[str, Any]]:
    print(f"\n## 7. Peers in the same run (Redis; mailflow then Postfix {postfix.version()}, "
          f"{rounds} rounds; smtp-source 20 sessions -> relay -> smtp-sink)\n", flush=True)
    why = postfix.available() or (None if tools.have_postfix_tools() else "no smtp-source/smtp-sink")
    if why:
        print(f"  not run: {why}", flush=True)
        return {}
    no_haraka = haraka.available()
    print(f"Haraka {haraka.VERSION}: "
          + (f"not run: {no_haraka}" if no_haraka else "runs third in each round"), flush=True)
    rows = attempt("peers", lambda: {"rows": peers.run(rounds, quick, with_haraka=not no_haraka)})
    if not rows:
        return {}
    found = peers.summary(rows["rows"])
    print(f"\n{'workload':<13} {'msgs/s mf':>9} {'pf':>5} {'hk':>5} {'mf/pf median':>13} {'spread':>7} "
          f"{'CPU ms/msg mf':>14} {'pf':>5} {'hk':>5} {'peak PSS MB mf':>15} {'pf':>4} {'hk':>4}")
    for name, f in found.items():
        print(f"{name:<13} {fmt(f['mailflow_per_s']):>9} {fmt(f['postfix_per_s']):>5} "
              f"{fmt(f['haraka_per_s']):>5} {fmt(f['median'], '.2f'):>13} {fmt(f['spread'], '.2f'):>7} "
              f"{fmt(f['mailflow_cpu_ms'], '.2f'):>14} {fmt(f['postfix_cpu_ms'], '.2f'):>5} "
              f"{fmt(f['haraka_cpu_ms'], '.2f'):>5} {fmt(f['mailflow_pss_mb']):>15} "
              f"{fmt(f['postfix_pss_mb']):>4} {fmt(f['haraka_pss_mb']):>4}", flush=True)
    return found


def run_connections(quick: bool) -> Result | None:
    count = 200 if quick else concurrency.CONNECTIONS
    print(f"\n## 8. Connections (Redis; one worker node, concurrency_max = {count}, {count} messages to "
          f"{count} domains whose receiver holds every reply {concurrency.REPLY_DELAY:.0f} s)\n", flush=True)
    r = attempt("connections", lambda: concurrency.run(count))
    if r:
        print(f"peak connections {r['peak_connections']}, worker peak PSS {fmt(r['worker_pss_mb'])} MB, "
              f"delivered {r['delivered']}/{count} in {fmt(r['seconds'], '.1f')} s"
              + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
    return r


#: Issue 16's benchmark: shaping (a rate rule on the sink, decided in Redis per message),
#: webhooks (every delivered event POSTed to a receiver on loopback) and metrics (the page
#: scraped each second) all on.  max_connections is left out: a leased connection is not
#: kept idle in the pool, which is a cost of that rule, not of shaping being on.
FEATURE_FILES = {
    "shaping.ini": "[mx:127.0.0.2]\nmessages_per_minute = 1000000\nsuspend_on = 4.7.28\n",
}


FEATURES = ("shaping", "webhooks", "metrics")


def run_features(rounds: int, quick: bool, which: tuple[str, ...] = FEATURES,
                 webhook_batch: int = 1) -> tuple[float, float] | None:
    """Relay throughput on Redis with shaping, webhooks and metrics (or some of them), against
    without, interleaved.  The webhook receiver is a process of its own (bench/receiver.py),
    and a round with webhooks on ends only when the receiver has taken all its events."""
    print(f"\n## 9. {', '.join(which)} on (Redis, 4 KiB; interleaved with them off"
          + (f"; webhooks.ini batch = {webhook_batch}" if "webhooks" in which else "") + ")\n")
    messages = 500 if quick else 3000
    hook_port, metrics_port = free_port(), free_port()
    files = {**FEATURE_FILES,
             "webhooks.ini": f"[app]\nurl = http://127.0.0.1:{hook_port}/hook\n"
                             f"events = delivered\nsecret = whsec_{base64.b64encode(b'x' * 24).decode()}\n"
                             f"batch = {webhook_batch}\n",
             "metrics.ini": f"listen = 127.0.0.1:{metrics_port}\n"}
    files = {name: text for name, text in files.items() if name.split(".")[0] in which}
    hooks = "webhooks.ini" in files
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
            except OSError:
                pass
    threading.Thread(target=scrape, daemon=True).start()
    plain: list[float] = []
    featured: list[float] = []
    cpu_off: list[float] = []
    cpu_on: list[float] = []
    with receiver.running(hook_port) as accepted:
        try:
            for n in range(rounds):
                for on in (False, True):
                    before = accepted()

                    def settled(b: int = before) -> bool:
                        return accepted() - b >= messages
                    r = attempt(f"features {'on' if on else 'off'} round {n + 1}", partial(
                        relay.throughput, "redis", messages=messages, size=4 * KIB,
                        files=files if on else None,
                        settled=settled if on and hooks else None))
                    if r is None:
                        return None
                    (featured if on else plain).append(r["e2e_per_s"])
                    (cpu_on if on else cpu_off).append(r["cpu_ms"])
                    print(f"round {n + 1} {'on ' if on else 'off'} {fmt(r['e2e_per_s'])} msgs/s, "
                          f"relay CPU {r['cpu_ms']:.2f} ms/msg"
                          + (f"  (delivered {r['delivered']}/{messages}; {r['errors']})"
                             if r["delivered"] < messages or r["errors"] else ""), flush=True)
        finally:
            stop.set()
        taken = accepted()
    off, on_ = statistics.median(plain), statistics.median(featured)
    paired = statistics.median(b / a for a, b in zip(plain, featured, strict=True))
    print(f"median off {fmt(off)}, on {fmt(on_)} msgs/s: on/off = {on_ / off:.2f}; median of each "
          f"round's on/off {paired:.2f}; relay CPU per message off {statistics.median(cpu_off):.2f} ms, "
          f"on {statistics.median(cpu_on):.2f} ms"
          + (f"; webhook events accepted {taken} (each round ends when its "
             f"{messages} are)" if hooks else ""))
    return off, on_


#: classify.ini with the reply actions that watch every attempt turned off
NO_BACKOFF = {"classify.ini": "[actions]\nbackoff =\nsuspend =\n"}


def run_classify(rounds: int, quick: bool) -> tuple[float, float, float] | None:
    """Relay throughput with the reply actions as shipped -- every attempt's replies looked at,
    each refusal classified, each site's backoff state read -- against with backoff and
    suspend off, interleaved; and the median time to classify one reply (the shipped rules,
    31 real replies)."""
    print("\n## 14. Replies classified and watched for backoff (Redis, 4 KiB; interleaved with "
          "backoff and suspend off)\n")
    replies = [parse_reply(text) for text, _, _ in REPLIES]
    times = []
    for _ in range(200):
        for reply in replies:
            began = time.perf_counter()
            classify(reply, "mx.example.net", ())
            times.append(time.perf_counter() - began)
    one = statistics.median(times) * 1e6
    print(f"classify: median {one:.1f} us per reply ({len(times)} classifications)")
    print(f"watching one delivered message for backoff (before and after it): median "
          f"{watch_cost() * 1e6:.1f} us")
    messages = 500 if quick else 3000
    off: list[float] = []
    on: list[float] = []
    for n in range(rounds):
        for watching in (False, True):
            r = attempt(f"backoff {'on' if watching else 'off'} round {n + 1}", partial(
                relay.throughput, "redis", messages=messages, size=4 * KIB,
                files=None if watching else NO_BACKOFF))
            if r is None:
                return None
            (on if watching else off).append(r["e2e_per_s"])
            print(f"round {n + 1} {'on ' if watching else 'off'} {fmt(r['e2e_per_s'])} msgs/s, "
                  f"relay CPU {r['cpu_ms']:.2f} ms/msg", flush=True)
    print(f"median off {fmt(statistics.median(off))}, on {fmt(statistics.median(on))} msgs/s; median "
          f"of each round's on/off {statistics.median(b / a for a, b in zip(off, on, strict=True)):.3f}")
    return statistics.median(off), statistics.median(on), one


def watch_cost() -> float:
    """What the per-message look at shaping and backoff costs in a worker (seconds, median):
    the resolving figure, where end-to-end rounds vary by more than the 3 % goal."""
    saved = os.environ.get("MAILFLOW_STATE_DIR")
    os.environ["MAILFLOW_STATE_DIR"] = tempfile.mkdtemp(prefix="mailflow-bench-")  # not ~/.mailflow
    try:
        return _watch_cost()
    finally:
        if saved is None:
            os.environ.pop("MAILFLOW_STATE_DIR", None)
        else:
            os.environ["MAILFLOW_STATE_DIR"] = saved


def _watch_cost() -> float:
    cfg = configmod.load(REPO / "config")
    shaping = RouteShaping(cfg, "example.com")
    session: Any = SimpleNamespace(host="mx.example.com", key=SimpleNamespace(bind=None), lease=None,
                                   messages=0)
    outcome = Outcome(host="mx.example.com", results={"a@example.com": Reply(250, "2.0.0 ok")})
    times = []
    for _ in range(20_000):
        began = time.perf_counter()
        shaping.before(session, 5)
        shaping.after(session, outcome)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


#: The last commit before broker messages were authenticated (issue 23): the auth scenario's peer.
BEFORE_AUTH = "7ff0849"


def run_auth(rounds: int, quick: bool, before: str = BEFORE_AUTH) -> tuple[float, float] | None:
    """What authenticating every broker message costs: the MAC against Celery's X.509
    serializer per message, then relay throughput (Redis, 4 KiB) of this tree against a
    checkout of ``before``, interleaved round by round in the same run."""
    print(f"\n## 10. Authenticated broker messages (Redis, 4 KiB; interleaved with {before})\n")
    signing.main()
    checkout = tools.checkout(before)
    if checkout is None:
        print(f"no checkout of {before} (not a git clone?): throughput not compared")
        return None
    messages = 500 if quick else 3000
    now: list[float] = []
    then: list[float] = []
    try:
        for n in range(rounds):
            order = (True, False) if n % 2 else (False, True)
            for ours in order:
                with tools.python_path(REPO if ours else checkout):
                    r = attempt(f"auth {'now' if ours else before} round {n + 1}", partial(
                        relay.throughput, "redis", messages=messages, size=4 * KIB))
                if r is None:
                    return None
                (now if ours else then).append(r["e2e_per_s"])
                print(f"round {n + 1} {'now   ' if ours else before} {fmt(r['e2e_per_s'])} msgs/s, relay CPU "
                      f"{r['cpu_ms']:.2f} ms/msg", flush=True)
    finally:
        tools.remove_checkout(checkout)
    paired = statistics.median(b / a for a, b in zip(then, now, strict=True))
    print(f"median {before} {fmt(statistics.median(then))}, now {fmt(statistics.median(now))} msgs/s; "
          f"median of each round's now/{before} {paired:.3f}")
    return statistics.median(then), statistics.median(now)


def run_large(quick: bool, before: str = BEFORE_AUTH) -> tuple[float, float] | None:
    """A worker sending twelve 20 MB messages at once: its peak PSS above its idle PSS, for
    this tree and for ``before`` (which read each message whole, then copied it to stuff it)."""
    print(f"\n## 11. Twelve 20 MB messages at once (Redis): the worker's memory, now and {before}\n")
    count, size = (4, 5 * 1024 * KIB) if quick else (12, 20 * 1024 * KIB)
    checkout = tools.checkout(before)
    grown: dict[str, float] = {}
    try:
        for label, tree in (("now", REPO), (before, checkout)):
            if tree is None:
                continue
            with tools.python_path(tree), relay.relay("redis", postfix_sink=False) as r:
                workers = [p.pid for p in r.instance.procs if p.name.startswith("worker")]
                time.sleep(1.0)
                idle = memory.total_pss_kib(workers) / 1024
                with memory.PeakSampler(workers, interval=0.05) as pss:
                    run = tools.inject(r.smtp_port, messages=count, size=size, sessions=count, postfix=False)
                    run.wait(timeout=600)
                    got = r.sink.wait_for(count, timeout=600)
                grown[label] = pss.peak_kib / 1024 - idle
                missing = "" if got else " (not all)"
                print(f"{label:>8}: {len(r.sink.arrivals)}/{count} delivered{missing}; worker "
                      f"PSS idle {idle:.0f} MB, peak {pss.peak_kib / 1024:.0f} MB: +{grown[label]:.0f} MB "
                      f"({grown[label] / count:.1f} MB per {size // (1024 * KIB)} MB message)", flush=True)
    finally:
        if checkout is not None:
            tools.remove_checkout(checkout)
    return (grown.get(before, 0.0), grown["now"]) if "now" in grown else None


def run_http(rounds: int, quick: bool) -> tuple[float, float] | None:
    """HTTP injection (50 recipients a request, 10 clients) against SMTP injection (20
    sessions, a connection per message) of the same messages into the same relay set-up,
    interleaved round by round: delivered messages/s and the relay's CPU per message.

    The relay runs a worker per core (as deploy/systemd does) whatever ``--workers`` says:
    the scenario compares two ways in, and one worker -- one process, its lanes sharing
    one GIL -- delivers a single destination's mail at about what SMTP injection brings,
    so both ways would measure that worker instead (bench/README.md, seventh session)."""
    workers = max(relay.WORKERS, os.cpu_count() or 1)
    print(f"\n## 12. HTTP injection against SMTP (Redis, 4 KiB; interleaved; {workers} workers, "
          "one per core)\n")
    messages = 500 if quick else 5000
    rates: dict[str, list[float]] = {"smtp": [], "http": []}
    accepted: dict[str, list[float]] = {"smtp": [], "http": []}
    for n in range(rounds):
        for way in (("smtp", "http") if n % 2 == 0 else ("http", "smtp")):
            r = attempt(f"{way} round {n + 1}", partial(
                relay.throughput, "redis", messages=messages, size=4 * KIB, workers=workers,
                http=(50, 10) if way == "http" else None))
            if r is None:
                return None
            rates[way].append(r["e2e_per_s"] or 0.0)
            accepted[way].append(r["inject_per_s"])
            print(f"round {n + 1} {way}: {fmt(r['e2e_per_s'])} msgs/s delivered, accepted at "
                  f"{fmt(r['inject_per_s'])} msgs/s, relay CPU {r['cpu_ms']:.2f} ms/msg"
                  + (f", errors {r['errors']}" if r["errors"] else ""), flush=True)
    smtp, http = statistics.median(rates["smtp"]), statistics.median(rates["http"])
    print(f"delivered, median: SMTP {fmt(smtp)}, HTTP {fmt(http)} msgs/s: HTTP/SMTP {http / smtp:.2f}")
    taken = [h / s for h, s in zip(accepted["http"], accepted["smtp"], strict=True)]
    print(f"accepted, median: SMTP {fmt(statistics.median(accepted['smtp']))}, HTTP "
          f"{fmt(statistics.median(accepted['http']))} msgs/s; median of each round's HTTP/SMTP "
          f"{statistics.median(taken):.2f}")
    return smtp, http


def run_lonely(quick: bool) -> Result | None:
    """Fresh one-message domains behind a 50,000-entry backlog to one slow domain."""
    print("\n## 13. Fresh mail behind a backlog to one slow domain (Redis)\n")
    r = attempt("lonely", partial(lonely.run, entries=5_000 if quick else 50_000, fresh=20 if quick else 60))
    if r is not None:
        print(f"backlog {r['backlog']} for a receiver holding each reply {r['delay']:g} s; "
              f"{r['arrived']}/{r['fresh']} fresh messages arrived, 250 to delivery p50 "
              f"{fmt(r['p50'], '.2f')} s, p99 {fmt(r['p99'], '.2f')} s; the backlog delivered "
              f"{r['backlog_delivered']} meanwhile", flush=True)
    return r


def pick(results: list[Result], broker: str, size: int) -> Result | None:
    return next((r for r in results if r["broker"] == broker and r["size"] == size), None)


def goals(relays: list[Result], lat: Result | None, back: Result | None,
          checks: list[Result] | None = None, costs: list[Result] | None = None,
          versus: dict[str, dict[str, Any]] | None = None, held: Result | None = None) -> list[Row]:
    """One row per goal of the benchmarks issue, beside the figure measured for it."""
    rows: list[Row] = []

    def e2e(broker: str, size: int) -> float | None:
        r = pick(relays, broker, size)
        return r["e2e_per_s"] if r else None

    def at_least(goal: str, value: float | None, bound: float | None, unit: str = "msgs/s",
                 spec: str = ".0f") -> None:
        met = None if value is None or bound is None else value >= bound
        rows.append((goal, f"{fmt(value, spec)} {unit}", met))

    def at_most(goal: str, value: float | None, bound: float, unit: str, spec: str = ".0f") -> None:
        rows.append((goal, f"{fmt(value, spec)} {unit}", None if value is None else value <= bound))

    at_least("Redis, 4 KiB: >= 650 msgs/s end-to-end", e2e("redis", 4 * KIB), 650)
    at_least("Redis, 64 KiB: >= 500 msgs/s", e2e("redis", 64 * KIB), 500)
    for size in (4 * KIB, 64 * KIB):
        at_least(f"RabbitMQ >= Redis, {size // KIB} KiB (Redis: {fmt(e2e('redis', size))})",
                 e2e("rabbitmq", size), e2e("redis", size))
    at_least("embedded broker, 4 KiB: >= 400 msgs/s", e2e("embedded", 4 * KIB), 400)
    pss = [r["pss_mb"] for r in relays]
    at_most("peak PSS of smtpd nodes + worker <= 250 MB", max(pss) if pss else None, 250, "MB")
    at_most("p99 latency at 100 msgs/s <= 2 s", lat["p99_s"] if lat else None, 2, "s", ".2f")
    at_most("100,000 deferred: worker RSS <= 150 MB", back["worker_rss_mb"] if back else None, 150, "MB")
    at_most("100,000 deferred: `queue stats` <= 2 s", back["stats_s"] if back else None, 2, "s", ".2f")
    at_most("100,000 due: first delivery <= 10 s", back["first_delivery_s"] if back else None,
            10, "s", ".1f")
    sessions = [r["sessions_per_1000"] for r in relays]
    at_most("sink sessions per 1,000 messages <= 50", max(sessions) if sessions else None,
            50, "", ".1f")
    rates = {r["hosts"]: r["per_s"] for r in checks or []}
    ratio = rates[2] / rates[1] if rates.get(1) and rates.get(2) else None
    at_least("scale-out: two worker hosts >= 1.7x one (capped)", ratio, 1.7, "x", ".2f")
    versus = versus or {}
    for workload, bound in (("4KiB", 1.25), ("64KiB", 1.1), ("slow 1s DATA", 1.0), ("200 domains", 1.0)):
        found = versus.get(workload, {})
        at_least(f"vs Postfix, same run, {workload}: >= {bound}x (median of rounds)",
                 found.get("median"), bound, "x", ".2f")
    mix = versus.get("mix", {})
    at_least("vs Postfix, same run, mix: >= 1.0x (median of rounds)", mix.get("median"), 1.0, "x", ".2f")
    pf_sessions = mix.get("postfix_sessions_per_1000")
    mf_sessions = mix.get("mailflow_sessions_per_1000")
    rows.append((f"mix: sessions per 1,000 messages <= Postfix's ({fmt(pf_sessions)})", fmt(mf_sessions),
                 None if mf_sessions is None or pf_sessions is None else mf_sessions <= pf_sessions))
    at_most("mix: one-message domains' p99 from 250 to delivery <= 5 s", mix.get("mailflow_lonely_p99_s"),
            5, "s", ".2f")
    spread = versus.get("200 domains", {}).get("mailflow_per_s")
    at_least(f"200 domains: within 20 % of the bound ({peers.bound():.0f} msgs/s)",
             spread, 0.8 * peers.bound())
    at_most(f"{concurrency.CONNECTIONS} concurrent slow connections: worker PSS <= 400 MB",
            held["worker_pss_mb"] if held and held["concurrency_max"] == concurrency.CONNECTIONS else None,
            400, "MB")
    owner = next((c["owner_ms"] for c in costs or [] if c["size"] == 4 * KIB), None)
    at_most("owner-side CPU per 4 KiB message <= 0.8 ms", owner, 0.8, "ms", ".2f")
    return rows


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``cpus`` for one per core."""
    if value == "cpus":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a positive number or cpus")
    return int(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only",
                        default="relay,latency,backlog,scaleout,peers,connections,features,auth,large,http,"
                                "lonely,classify",
                        help="comma list of scenarios: relay, latency, backlog, scaleout, peers, "
                             "connections, features, auth, large, http, lonely, classify")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the peers scenario, mailflow and Postfix interleaved (default 3)")
    parser.add_argument("--broker", action="append", choices=BROKERS,
                        help="relay brokers (repeatable; default all three)")
    parser.add_argument("--nodes", default="cpus",
                        help="smtp.ini nodes for the relay and latency runs (default: cpus)")
    parser.add_argument("--workers", type=worker_count, default=1, metavar="N|cpus",
                        help="Celery workers per mailflow relay: 1 (default), or one per core as "
                             "deploy/systemd runs them; connection limits are split between them")
    parser.add_argument("--features", default=",".join(FEATURES),
                        help="what the features scenario turns on (default: all of "
                             + ", ".join(FEATURES) + ")")
    parser.add_argument("--webhook-batch", type=int, default=1,
                        help="webhooks.ini batch (events per POST) in the features scenario (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="small runs (500 and 100 messages, 10 s latency, 10,000 backlog) "
                             "to check the harness, not to quote")
    args = parser.parse_args()
    relay.WORKERS = args.workers
    with journaled.workdir() as where:
        print(f"# mailflow benchmarks, {datetime.date.today()}: {machine()}")
        print(f"Default settings but smtp.ini nodes = {args.nodes}, {relay.WORKERS} worker(s) per relay; "
              f"every message fsync'd before its 250." + (" QUICK run." if args.quick else ""))
        print(where, flush=True)
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Every scenario ``args`` asks for, and the goals table."""
    only = set(args.only.split(","))
    quick = args.quick
    workloads = [(500, 4 * KIB), (100, 64 * KIB)] if quick else [(5000, 4 * KIB), (1000, 64 * KIB)]
    relays = run_relay(args.broker or list(BROKERS), workloads, args.nodes) if "relay" in only else []
    lat = run_latency("redis", 100.0, 10.0 if quick else 30.0, args.nodes) if "latency" in only else None
    back = run_backlog("redis", 10_000 if quick else 100_000) if "backlog" in only else None
    costs, checks = run_scaleout(quick) if "scaleout" in only else ([], [])
    versus = run_peers(args.rounds, quick) if "peers" in only else {}
    held = run_connections(quick) if "connections" in only else None
    featured = (run_features(args.rounds, quick, tuple(args.features.split(",")), args.webhook_batch)
                if "features" in only else None)
    authed = run_auth(args.rounds, quick) if "auth" in only else None
    large = run_large(quick) if "large" in only else None
    over_http = run_http(args.rounds, quick) if "http" in only else None
    alone = run_lonely(quick) if "lonely" in only else None
    classed = run_classify(args.rounds, quick) if "classify" in only else None
    print("\n## Goals\n")
    rows = goals(relays, lat, back, checks, costs, versus, held)
    if authed is not None:
        then, now = authed
        rows.append((f"authenticated tasks: within 3 % of {BEFORE_AUTH} (now/then)", f"{now / then:.3f}",
                     now >= 0.97 * then))
    if large is not None:
        rows.append(("12 x 20 MB at once: worker grows < 20 MB per message", f"+{large[1]:.0f} MB",
                     large[1] < 12 * 20))
    if alone is not None and alone["p99"] is not None:
        rows.append(("fresh domain behind a 50,000 backlog to a slow one: p99 <= 5 s",
                     f"{alone['p99']:.2f} s", alone["p99"] <= 5.0))
    if classed is not None:
        plain, watched, one = classed
        rows.append(("replies classified, backoff watched: within 3 % (on/off)", f"{watched / plain:.3f}",
                     watched >= 0.97 * plain))
        rows.append(("classify one reply: median <= 20 us", f"{one:.1f} us", one <= 20.0))
    if over_http is not None:
        smtp, http = over_http
        rows.append(("HTTP injection >= 1.5 x SMTP injection (HTTP/SMTP)", f"{http / smtp:.2f}",
                     http >= 1.5 * smtp))
    if featured is not None:
        off, on_ = featured
        rows.append((f"{args.features.replace(',', ', ')} on: within 10 % (on/off)", f"{on_ / off:.2f}",
                     on_ >= 0.9 * off))
    width = max(len(g) for g, _, _ in rows)
    for goal, figure, met in rows:
        verdict = "not measured" if met is None else ("met" if met else "not met")
        print(f"{goal:<{width}}  {figure:>12}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
