"""``mailflow flush`` and ``mailflow queue``: the queue directory of this host, as an operator
sees and changes it (Postfix's postqueue and postsuper, Haraka's qstat)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.observation.sampler import host_counts
from mailflow.pipeline.shaping import in_force
from mailflow.queue import events
from mailflow.queue import tools as queuetools
from mailflow.queue.flush import flush
from mailflow.queue.spool import Spool
from mailflow.relay import warmup
from mailflow.relay.shaping import shaper_for
from mailflow.runtime import authentic
from mailflow.runtime.application import app


def add_flush(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("flush", help="attempt every deferred entry now (or one domain's)",
                       description="Make deferred entries due now; each is attempted once. "
                       "Runs on the host that owns the queue directory.")
    common(p)
    p.add_argument("domain", nargs="?", help="only this recipient domain")
    p.add_argument("--id", dest="ident", metavar="ID", help="only this queue entry")


@command("flush", add_flush)
def cmd_flush(args: argparse.Namespace, cfg: Config) -> int:
    count = flush(Spool(cfg.queue_path()), args.domain, args.ident)
    print(f"{count} entries due now")
    return 0


def add_queue(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    q = sub.add_parser("queue", help="list, show, delete queue entries; statistics",
                       description="Inspect and change the queue directory of this host.")
    common(q)
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    p = qsub.add_parser("list", help="one line per entry (like mailq)")
    common(p)
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.add_argument("--domain", help="only this recipient domain")
    p.add_argument("--state", choices=("queued", "in_progress", "waiting"), help="only this state")
    p.add_argument("--tenant", help="only this tenant's entries")
    p = qsub.add_parser("show", help="envelope, headers and last attempts of one entry")
    common(p)
    p.add_argument("ident", metavar="ID", help="the entry's id, as queue list shows it")
    p.add_argument("--body", action="store_true", help="the whole message, not only its headers")
    p = qsub.add_parser("delete", help="remove entries (like postsuper -d)")
    common(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("ident", nargs="?", metavar="ID", help="this entry")
    group.add_argument("--domain", help="every entry for this domain")
    group.add_argument("--all-deferred", action="store_true", help="every deferred entry")
    p = qsub.add_parser("stats", help="queued, in progress, waiting, and totals")
    common(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--tenant", help="only what is queued now for this tenant, by state")
    p.add_argument("--cluster", action="store_true",
                   help="every owner's queue on the broker, by remote control, and their sum")


@command("queue", add_queue)
def cmd_queue(args: argparse.Namespace, cfg: Config) -> int:
    spool = Spool(cfg.queue_path())
    action = args.queue_command
    if action == "stats":
        if args.cluster:
            return _cluster_stats(args.json)
        if args.tenant:
            mine = queuetools.tenant_stats(spool, args.tenant)
            print(json.dumps(mine) if args.json else " ".join(f"{k}={v}" for k, v in mine.items()))
            return 0
        numbers: dict[str, int] = queuetools.stats(spool)
        if cfg.webhooks:  # events kept and not yet accepted by their endpoint
            numbers["webhook_backlog"] = events.backlog(spool.root)
        suspended = shaping_state(cfg)
        if suspended:  # destinations a reply suspended: seconds left
            numbers.update({f"suspended:{rule}": left for rule, left in suspended.items()})
        # sites that asked a source to slow down: seconds until its normal limits hold again
        numbers.update({f"backoff:{key}": left for key, (left, _) in in_force(cfg).items()})
        for source in cfg.egress.sources.values():  # warm-up: its day of use, what is left today
            if source.warmup:
                allowed = warmup.allowance(source)
                numbers[f"warmup:{source.name}:day"] = allowed.day
                numbers[f"warmup:{source.name}:left"] = allowed.left  # type: ignore[assignment]
        if cfg.shaping:  # deliveries each rule held back, on this host, since its workers started
            numbers.update(host_counts("throttled:"))
        if not args.json:  # broker messages refused for want of mailflow's MAC, on this host
            numbers["refused_tasks"] = authentic.refused()
        print(json.dumps(numbers) if args.json else
              " ".join(f"{k}={v}" for k, v in numbers.items()))
        return 0
    if action == "list":
        rows = queuetools.rows(spool, domain=args.domain, state=args.state, tenant=args.tenant)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for r in rows:
            nxt = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["next_attempt"])) \
                if r["next_attempt"] else "-"
            why = (f"held={r['held']} until {nxt} " if r["held"] else "") + \
                f"error={r['last_error'] or '-'}"
            print(queuetools.printable(
                f"{r['id']} {r['state']} age={r['age']}s size={r['size']} from=<{r['mail_from']}> "
                f"to={','.join(r['rcpt_to'])} fails={r['num_failures']} next={nxt}"
                f"{' (countdown)' if r['countdown'] else ''} {why}"
                + "".join(f" {k}={r[k]}" for k in ("tenant", "campaign") if r[k]), keep=""))
        print(f"-- {len(rows)} entries")
        return 0
    if action == "show":
        paths = queuetools.find(spool, args.ident)
        if not paths:
            print(f"mailflow: no queue entry {args.ident}", file=sys.stderr)
            return 1
        print("\n\n".join(queuetools.show(p, body=args.body) for p in paths))
        return 0
    removed = queuetools.delete(spool, ident=args.ident, domain=args.domain,
                                all_deferred=args.all_deferred)
    print(f"{removed} entries deleted")
    return 0 if removed or not args.ident else 1


def shaping_state(cfg: Config) -> dict[str, int]:
    """Rules suspended now, with the seconds left (the shared store's view)."""
    if not cfg.shaping:
        return {}
    shaper = shaper_for(cfg.shared_redis())
    return {r.name: round(left) for r in cfg.shaping if r.suspend_on and (left := shaper.suspended(r)) > 0}


def _cluster_stats(as_json: bool) -> int:
    """Every owner's statistics, from its workers by remote control (one answer per owner)."""
    owners: dict[str, dict[str, int]] = {}
    try:
        replies = app.control.broadcast("mailflow_stats", reply=True, timeout=3.0) or []
    except (OperationalError, OSError) as exc:  # one line, not kombu's traceback
        print(f"mailflow: cannot reach the broker {maybe_sanitize_url(app.conf.broker_url)}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    for reply in replies:
        for answer in reply.values():
            if answer.get("owner"):
                owners[answer["owner"]] = answer["stats"]
    total = {k: sum(s.get(k, 0) for s in owners.values()) for k in queuetools.STAT_KEYS}
    if as_json:
        print(json.dumps({"owners": owners, "total": total}))
        return 0
    for owner, numbers in sorted(owners.items()):
        print(owner + " " + " ".join(f"{k}={v}" for k, v in numbers.items()))
    print("total " + " ".join(f"{k}={v}" for k, v in total.items()))
    return 0
