"""Scenario 7: mailflow beside Postfix, in the same run, round by round (issue 14).

A figure from another day compares nothing: each round runs mailflow (Redis) and
then a private Postfix instance (bench/postfix.py) on the same workload, with the
same injector and sink, and the result is mailflow's figure as a ratio to
Postfix's, per round; the median and the spread of the ratios are printed.

Workloads:

* *fast*: 5,000 x 4 KiB and 1,000 x 64 KiB, ``smtp-source`` 20 sessions into the
  relay, ``smtp-sink`` as the destination, default settings on both sides;
* *slow*: 300 x 4 KiB to one destination whose sink waits 1 s before each DATA
  reply (``smtp-sink -w 1``), both relays allowed 100 parallel deliveries to it
  (Postfix: destination concurrency and process limit 100; mailflow:
  ``concurrency_max`` and ``pool_concurrency_max`` 100);
* *200 domains*: 10,000 x 4 KiB to 200 recipient domains, each its own address
  (127.0.1.n), whose receiver holds every reply 100 ms (``bench.ownsink``, injected by
  ``bench.ownsource``); 100 connections in all and 10 per destination on both sides.
  The bound those limits set: 100 connections / (4 replies x 0.1 s) = 250 msgs/s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import postfix, relay, tools
from harness.dnsserver import free_port

KIB = 1024
SLOW_LIMITS = "concurrency_max = 100\npool_concurrency_max = 100\n"
#: 200 recipient domains, each its own address, every reply held 100 ms; both relays
#: at 100 connections in all and 10 per destination.
DOMAINS, REPLY_DELAY, TOTAL, PER_DOMAIN = 200, 0.1, 100, 10
SPREAD_LIMITS = f"concurrency_max = {TOTAL}\npool_concurrency_max = {PER_DOMAIN}\n"


def postfix_throughput(*, messages: int, size: int, sessions: int = 20, concurrency: int = 20,
                       processes: int = 100, sink_wait: float = 0.0, sink_delay: float = 0.0,
                       domains: int = 0) -> dict[str, Any]:
    """The relay scenario with Postfix as the relay (each domain its own nexthop with ``domains``)."""
    sink_port, port = free_port("127.0.0.2"), free_port()
    sink = tools.Sink(relay.sink_hosts(domains), sink_port, postfix=not domains, wait=sink_wait,
                      delay=sink_delay)
    routes = {f"d{n}.sink.test": f"[{relay.domain_address(n)}]:{sink_port}" for n in range(domains)}
    try:
        with postfix.relay(port, f"[127.0.0.2]:{sink_port}", concurrency=concurrency,
                           processes=processes, routes=routes, workdir=relay.workdir()) as master:
            time.sleep(0.5)
            figures = relay.measure([master], port, sink, messages=messages, size=size,
                                    sessions=sessions, postfix=not domains, domains=domains)
        time.sleep(0.5)  # stopped: smtp-sink has counted its sessions
        figures["sessions_per_1000"] = sink.sessions * 1000 / max(figures["delivered"], 1)
        return {"scenario": "relay", "relay": "postfix", "broker": "-", **figures}
    finally:
        sink.stop()


def workloads(quick: bool) -> list[dict[str, Any]]:
    """name, messages, size, and what each relay is given."""
    scale = 10 if quick else 1
    return [
        {"name": "4KiB", "messages": 5000 // scale, "size": 4 * KIB, "mailflow": {}, "postfix": {}},
        {"name": "64KiB", "messages": 1000 // scale, "size": 64 * KIB, "mailflow": {}, "postfix": {}},
        {"name": "slow 1s DATA", "messages": 300 // (3 if quick else 1), "size": 4 * KIB,
         "mailflow": {"outbound": SLOW_LIMITS, "sink_wait": 1.0},
         "postfix": {"concurrency": 100, "processes": 100, "sink_wait": 1.0}},
        {"name": "200 domains", "messages": 10_000 // scale, "size": 4 * KIB,
         "mailflow": {"outbound": SPREAD_LIMITS, "sink_delay": REPLY_DELAY, "domains": DOMAINS},
         "postfix": {"concurrency": PER_DOMAIN, "processes": TOTAL, "sink_delay": REPLY_DELAY,
                     "domains": DOMAINS}},
    ]


def bound(total: int = TOTAL, delay: float = REPLY_DELAY) -> float:
    """What ``total`` connections can deliver when a message costs four delayed replies
    (MAIL, RCPT, DATA, the dot): connections / time per message."""
    return total / (4 * delay)


def run(rounds: int, quick: bool, broker: str = "redis") -> list[dict[str, Any]]:
    """Every workload, ``rounds`` times, mailflow and Postfix interleaved; one row per run."""
    rows = []
    for n in range(rounds):
        for w in workloads(quick):
            common = {"messages": w["messages"], "size": w["size"]}
            mine = relay.throughput(broker, postfix=True, **common, **w["mailflow"])
            theirs = postfix_throughput(**common, **w["postfix"])
            for r in (mine, theirs):
                rows.append({**r, "workload": w["name"], "round": n + 1})
            show(rows[-2:])
    return rows


def show(pair: list[dict[str, Any]]) -> None:
    mine, theirs = pair
    ratio = ratio_of(mine, theirs)
    print(f"round {mine['round']} {mine['workload']:<13} mailflow {fmt(mine['e2e_per_s'])} msgs/s "
          f"{fmt(mine['cpu_ms'], '.2f')} ms/msg {fmt(mine['pss_mb'])} MB | postfix "
          f"{fmt(theirs['e2e_per_s'])} msgs/s {fmt(theirs['cpu_ms'], '.2f')} ms/msg "
          f"{fmt(theirs['pss_mb'])} MB | ratio {fmt(ratio, '.2f')}"
          + "".join(f"  ({r['relay']} delivered {r['delivered']}/{r['messages']}; {r['errors']})"
                    for r in pair if r["delivered"] < r["messages"] or r["errors"]), flush=True)


def ratio_of(mine: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    if not mine.get("e2e_per_s") or not theirs.get("e2e_per_s"):
        return None
    return float(mine["e2e_per_s"]) / float(theirs["e2e_per_s"])


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per workload: the ratios of each round, their median and spread, median CPU and PSS."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == name and r["relay"] == "mailflow"]
        theirs = [r for r in rows if r["workload"] == name and r["relay"] == "postfix"]
        ratios = [x for x in (ratio_of(a, b) for a, b in zip(mine, theirs, strict=True)) if x is not None]
        out[name] = {
            "ratios": ratios,
            "median": statistics.median(ratios) if ratios else None,
            "spread": (max(ratios) - min(ratios)) if ratios else None,
            "mailflow_per_s": _median([r["e2e_per_s"] for r in mine]),
            "postfix_per_s": _median([r["e2e_per_s"] for r in theirs]),
            "mailflow_cpu_ms": _median([r["cpu_ms"] for r in mine]),
            "postfix_cpu_ms": _median([r["cpu_ms"] for r in theirs]),
            "mailflow_pss_mb": max((r["pss_mb"] for r in mine), default=None),
            "postfix_pss_mb": max((r["pss_mb"] for r in theirs), default=None),
        }
    return out


def _median(values: list[Any]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)

