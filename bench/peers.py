"""Scenario 7: mailflow beside Postfix (and Haraka), in the same run, round by round (issue 14).

A figure from another day compares nothing: each round runs mailflow (Redis), then a
private Postfix instance (bench/postfix.py), then Haraka when ``node`` is present
(bench/haraka.py), on the same workload, with the same injector and sink, and the
result is mailflow's figure as a ratio to Postfix's, per round; the median and the
spread of the ratios are printed.

Workloads:

* *fast*: 5,000 x 4 KiB and 1,000 x 64 KiB, ``smtp-source`` 20 sessions into the
  relay, ``smtp-sink`` as the destination, default settings on both sides;
* *slow*: 300 x 4 KiB to one destination whose sink waits 1 s before each DATA
  reply (``smtp-sink -w 1``), both relays allowed 100 parallel deliveries to it
  (Postfix: destination concurrency and process limit 100; mailflow:
  ``concurrency_max`` and ``pool_concurrency_max`` 100; with ``--workers``, each
  worker its share of every limit, as Haraka's nodes);
* *200 domains*: 10,000 x 4 KiB to 200 recipient domains, each its own address
  (127.0.1.n), whose receiver holds every reply 100 ms (``bench.ownsink``, injected by
  ``bench.ownsource``); 100 connections in all and 10 per destination on both sides.
  The bound those limits set: 100 connections / (4 replies x 0.1 s) = 250 msgs/s.
* *mix*: traffic as a sending platform sees it (bench/mix.py): 20,000 messages of
  4-64 KiB to 1,000 domains drawn by Zipf (s = 1.1) behind 30 sites, every reply held
  50 ms, 100 connections in all and 20 per site on both sides; also the p50 and p99
  wait from 250 to delivery of the one-message domains' mail.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from bench import haraka, postfix, relay, tools
from bench.mix import Mix
from harness.dnsserver import free_port

KIB = 1024
#: The 1 s receiver: 100 connections in all and to it.
SLOW_TOTAL = 100
#: 200 recipient domains, each its own address, every reply held 100 ms; both relays
#: at 100 connections in all and 10 per destination.
DOMAINS, REPLY_DELAY, TOTAL, PER_DOMAIN = 200, 0.1, 100, 10
#: Haraka runs nodes = cpus and its outbound limits hold per node: each gets its share.
HARAKA_NODES = os.cpu_count() or 1
#: The mix (bench/mix.py): every reply held 50 ms; 100 connections in all and 20 per
#: site on both sides (Postfix: a site is a nexthop; mailflow: an address).
MIX_DELAY, MIX_PER_SITE = 0.05, 20


def limits(total: int, per_destination: int) -> str:
    """mailflow's outbound.ini for ``total`` connections in all and ``per_destination`` to
    one address, split between its workers (relay.WORKERS) as Haraka's between its nodes."""
    return (f"concurrency_max = {relay.worker_share(total)}\n"
            f"pool_concurrency_max = {relay.worker_share(per_destination)}\n")


def peer_throughput(name: str, start: Callable[[int, int], AbstractContextManager[int]], *,
                    messages: int, size: int, sessions: int = 20, sink_wait: float = 0.0,
                    sink_delay: float = 0.0, domains: int = 0, mix: Mix | None = None) -> dict[str, Any]:
    """The relay scenario with a peer as the relay: ``start(port, sink_port)`` runs it
    and yields the pid its processes descend from."""
    sink_port, port = free_port("127.0.0.2"), free_port()
    own = bool(domains or mix)
    sink = tools.Sink(mix.sink_hosts() if mix else relay.sink_hosts(domains), sink_port, postfix=not own,
                      wait=sink_wait, delay=sink_delay)
    try:
        with start(port, sink_port) as master:
            time.sleep(0.5)
            figures = relay.measure([master], port, sink, messages=messages, size=size,
                                    sessions=sessions, postfix=not own, domains=domains, mix=mix)
        time.sleep(0.5)  # stopped: smtp-sink has counted its sessions
        figures["sessions_per_1000"] = sink.sessions * 1000 / max(figures["delivered"], 1)
        return {"scenario": "relay", "relay": name, "broker": "-", **figures}
    finally:
        sink.stop()


def postfix_throughput(*, concurrency: int = 20, processes: int = 100, domains: int = 0,
                       mix: Mix | None = None, **scenario: Any) -> dict[str, Any]:
    """Postfix as the relay; each domain its own nexthop (``transport_maps``) with ``domains``,
    the mix's domains their site's."""
    def start(port: int, sink_port: int) -> AbstractContextManager[int]:
        routes = {f"d{n}.sink.test": f"[{relay.domain_address(n)}]:{sink_port}" for n in range(domains)}
        if mix:
            routes = mix.routes(sink_port)
        return postfix.relay(port, f"[127.0.0.2]:{sink_port}", concurrency=concurrency,
                             processes=processes, routes=routes, workdir=relay.workdir())
    return peer_throughput("postfix", start, domains=domains, mix=mix, **scenario)


def haraka_throughput(*, concurrency: int = 100, per_ip: int = 10, **scenario: Any) -> dict[str, Any]:
    """Haraka as the relay (nodes = cpus; its get_mx plugin routes the domains)."""
    def start(port: int, sink_port: int) -> AbstractContextManager[int]:
        return haraka.relay(port, sink_port, concurrency=concurrency, per_ip=per_ip,
                            workdir=relay.workdir())
    return peer_throughput("haraka", start, **scenario)


def workloads(quick: bool) -> list[dict[str, Any]]:
    """name, messages, size, and what each relay is given."""
    scale = 10 if quick else 1
    return [
        {"name": "4KiB", "messages": 5000 // scale, "size": 4 * KIB, "mailflow": {}, "postfix": {},
         "haraka": {}},
        {"name": "64KiB", "messages": 1000 // scale, "size": 64 * KIB, "mailflow": {}, "postfix": {},
         "haraka": {}},
        {"name": "slow 1s DATA", "messages": 300 // (3 if quick else 1), "size": 4 * KIB,
         "mailflow": {"outbound": limits(SLOW_TOTAL, SLOW_TOTAL), "sink_wait": 1.0},
         "postfix": {"concurrency": 100, "processes": 100, "sink_wait": 1.0},
         "haraka": {"concurrency": 100 // HARAKA_NODES, "per_ip": 100 // HARAKA_NODES, "sink_wait": 1.0}},
        {"name": "200 domains", "messages": 10_000 // scale, "size": 4 * KIB,
         "mailflow": {"outbound": limits(TOTAL, PER_DOMAIN), "sink_delay": REPLY_DELAY,
                      "domains": DOMAINS},
         "postfix": {"concurrency": PER_DOMAIN, "processes": TOTAL, "sink_delay": REPLY_DELAY,
                     "domains": DOMAINS},
         "haraka": {"concurrency": TOTAL // HARAKA_NODES, "per_ip": max(1, PER_DOMAIN // HARAKA_NODES),
                    "sink_delay": REPLY_DELAY, "domains": DOMAINS}},
        {"name": "mix", "messages": 0, "size": 0,
         "mailflow": {"outbound": limits(TOTAL, MIX_PER_SITE), "sink_delay": MIX_DELAY,
                      "mix": mix_for(quick)},
         "postfix": {"concurrency": MIX_PER_SITE, "processes": TOTAL, "sink_delay": MIX_DELAY,
                     "mix": mix_for(quick)},
         "haraka": None},  # its route plugin knows the 200 domains only
    ]


def mix_for(quick: bool) -> Mix:
    """The mix workload's traffic: 20,000 messages (2,000 when quick), the same every run."""
    return Mix(messages=2_000 if quick else 20_000)


def bound(total: int = TOTAL, delay: float = REPLY_DELAY) -> float:
    """What ``total`` connections can deliver when a message costs four delayed replies
    (MAIL, RCPT, DATA, the dot): connections / time per message."""
    return total / (4 * delay)


def run(rounds: int, quick: bool, with_haraka: bool, broker: str = "redis") -> list[dict[str, Any]]:
    """Every workload, ``rounds`` times: mailflow, Postfix (and Haraka) interleaved; a row per run."""
    rows = []
    for n in range(rounds):
        for w in workloads(quick):
            common = {"messages": w["messages"], "size": w["size"]}
            runs = [relay.throughput(broker, postfix=True, **common, **w["mailflow"]),
                    postfix_throughput(**common, **w["postfix"])]
            if with_haraka and w["haraka"] is not None:
                runs.append(_or_failed("haraka", partial(haraka_throughput, **common, **w["haraka"])))
            for r in runs:
                rows.append({**r, "workload": w["name"], "round": n + 1})
            show(rows[-len(runs):])
    return rows


def _or_failed(name: str, fn: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = fn()
        return result
    except Exception as exc:  # a peer that fails is reported, the run goes on
        print(f"  {name}: failed: {type(exc).__name__}: {exc}", flush=True)
        return {"relay": name, "e2e_per_s": None, "cpu_ms": None, "pss_mb": None, "delivered": 0,
                "messages": 0, "errors": [str(exc)]}


def show(runs: list[dict[str, Any]]) -> None:
    mine, theirs, *others = runs
    line = (f"round {mine['round']} {mine['workload']:<13} "
            + " | ".join(f"{r['relay']} {fmt(r['e2e_per_s'])} msgs/s {fmt(r['cpu_ms'], '.2f')} ms/msg "
                         f"{fmt(r['pss_mb'])} MB {fmt(r.get('sessions_per_1000'))} sess/1000{_waits(r)}"
                         for r in runs)
            + f" | mailflow/postfix {fmt(ratio_of(mine, theirs), '.2f')}"
            + "".join(f", mailflow/{r['relay']} {fmt(ratio_of(mine, r), '.2f')}" for r in others)
            + "".join(f"  ({r['relay']} delivered {r['delivered']}/{r['messages']}; {r['errors']})"
                      for r in runs if r["delivered"] < r["messages"] or r["errors"]))
    print(line, flush=True)


def _waits(r: dict[str, Any]) -> str:
    """The mix's one-message domains' wait, where measured."""
    if "lonely_p99_s" not in r:
        return ""
    return f" lonely p50/p99 {fmt(r['lonely_p50_s'], '.2f')}/{fmt(r['lonely_p99_s'], '.2f')} s"


def ratio_of(mine: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    if not mine.get("e2e_per_s") or not theirs.get("e2e_per_s"):
        return None
    return float(mine["e2e_per_s"]) / float(theirs["e2e_per_s"])


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per workload: the ratios to Postfix of each round, their median and spread, and each
    relay's median rate, CPU per message and peak PSS."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["workload"] for r in rows):
        by = {who: [r for r in rows if r["workload"] == name and r["relay"] == who]
              for who in ("mailflow", "postfix", "haraka")}
        ratios = [x for x in (ratio_of(a, b) for a, b in zip(by["mailflow"], by["postfix"], strict=True))
                  if x is not None]
        found: dict[str, Any] = {
            "ratios": ratios,
            "median": statistics.median(ratios) if ratios else None,
            "spread": (max(ratios) - min(ratios)) if ratios else None,
        }
        for who, runs in by.items():
            found[f"{who}_per_s"] = _median([r["e2e_per_s"] for r in runs])
            found[f"{who}_cpu_ms"] = _median([r["cpu_ms"] for r in runs])
            found[f"{who}_pss_mb"] = max((r["pss_mb"] for r in runs if r["pss_mb"] is not None), default=None)
            found[f"{who}_sessions_per_1000"] = _median([r.get("sessions_per_1000") for r in runs])
            found[f"{who}_lonely_p99_s"] = _median([r.get("lonely_p99_s") for r in runs])
        out[name] = found
    return out


def _median(values: list[Any]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)

