"""The ``mailflow`` command: run, smtpd, send."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from mailflow import compat, flower, logs, outbound, proctitle, sendmail
from mailflow.application import app
from mailflow.codes import DENYSOFT, OK
from mailflow.config import environ, startup
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.dkim import command as dkim_command
from mailflow.pipeline import shaping as route_shaping
from mailflow.queue import events
from mailflow.queue import tools as queuetools
from mailflow.queue.flush import flush
from mailflow.queue.manager import QueueManager
from mailflow.queue.spool import Spool
from mailflow.relay.shaping import shaper_for
from mailflow.reports import tls as tls_reports
from mailflow.runtime import authentic
from mailflow.sampler import host_counts
from mailflow.smtpd import server as smtpd_server
from mailflow.smtpd import sink
from mailflow.smtpd.nodes import Nodes, die_with_parent
from mailflow.suppress import command as suppress_command
from mailflow.wire.seal import mac_key

log = logging.getLogger("mailflow")

EX_TEMPFAIL = 75  # sysexits.h, what sendmail returns for "try again later"


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--config and --log-format, accepted before or after the command name."""
    # a subcommand's own default would overwrite a value given before the command name
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", metavar="DIR", default=default,
                        help="config directory (default: $MAILFLOW_CONFIG or ./config)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="log line format (default: $MAILFLOW_LOG_FORMAT or text)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailflow", description="mailflow: outbound mail delivery on Celery")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="all in one: submission listener and a Celery worker",
                       description="Start the SMTP submission listener and a Celery worker "
                       "in one process tree (on the embedded broker unless "
                       "MAILFLOW_BROKER_URL is set). Ctrl-C stops everything.")
    _common(p)
    p.add_argument("--worker-concurrency", type=int, default=None, metavar="N",
                   help="threads of the embedded worker (default: outbound.ini's concurrency_max + 8)")

    p = sub.add_parser("smtpd", help="the SMTP submission listener only",
                       description="Listen for SMTP submissions (smtp.ini 'listen') and "
                       "queue accepted mail.")
    _common(p)
    # how node 0 starts a further node again (smtp.ini nodes): not for operators
    p.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)

    p = sub.add_parser("send", help="queue a message read from standard input",
                       description="Queue the message on standard input, as outbound.send_email.")
    _common(p)
    p.add_argument("-f", "--from", dest="sender", required=True, metavar="FROM",
                   help="envelope sender ('' for the null sender)")
    p.add_argument("recipients", nargs="+", metavar="RCPT", help="envelope recipients")

    sub.add_parser("sendmail", help="the sendmail command line (-t -i -f -F …); see its --help",
                   add_help=False)

    p = sub.add_parser("flush", help="attempt every deferred entry now (or one domain's)",
                       description="Make deferred entries due now; each is attempted once. "
                       "Runs on the host that owns the queue directory.")
    _common(p)
    p.add_argument("domain", nargs="?", help="only this recipient domain")
    p.add_argument("--id", dest="ident", metavar="ID", help="only this queue entry")

    q = sub.add_parser("queue", help="list, show, delete queue entries; statistics",
                       description="Inspect and change the queue directory of this host.")
    _common(q)
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    p = qsub.add_parser("list", help="one line per entry (like mailq)")
    _common(p)
    p.add_argument("--json", action="store_true", help="a JSON list of objects")
    p.add_argument("--domain", help="only this recipient domain")
    p.add_argument("--state", choices=("queued", "in_progress", "waiting"), help="only this state")
    p = qsub.add_parser("show", help="envelope, headers and last attempts of one entry")
    _common(p)
    p.add_argument("ident", metavar="ID", help="the entry's id, as queue list shows it")
    p.add_argument("--body", action="store_true", help="the whole message, not only its headers")
    p = qsub.add_parser("delete", help="remove entries (like postsuper -d)")
    _common(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("ident", nargs="?", metavar="ID", help="this entry")
    group.add_argument("--domain", help="every entry for this domain")
    group.add_argument("--all-deferred", action="store_true", help="every deferred entry")
    p = qsub.add_parser("stats", help="queued, in progress, waiting, and totals")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--cluster", action="store_true",
                   help="every owner's queue on the broker, by remote control, and their sum")
    dkim_command.add_parser(sub, _common)
    suppress_command.add_parser(sub, _common)
    sink.add_parser(sub, _common)
    flower.add_parser(sub, _common)
    p = sub.add_parser("tlsrpt", help="send the finished days' TLS reports (RFC 8460) now",
                       description="Send every finished UTC day's TLS reports not sent yet (the "
                       "workers do so once an hour).")
    _common(p)
    p.add_argument("action", choices=("send",))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:  # sendmail's own flag syntax (-oi, -F name …), not ours
        _setup_or_exit(None, logging.WARNING)
        return sendmail.main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_or_exit(getattr(args, "log_format", None))
    handler = {"run": cmd_run, "smtpd": cmd_smtpd, "send": cmd_send,
               "flush": cmd_flush, "queue": cmd_queue, "dkim": cmd_dkim,
               "tlsrpt": cmd_tlsrpt, "suppress": cmd_suppress, "sink": sink.run,
               "flower": cmd_flower}[args.command]
    return handler(args)


def _setup_or_exit(log_format: str | None, level: int = logging.INFO) -> None:
    """Every environment variable checked (one line each that is bad, and exit 2), then logging."""
    environ.check_or_exit()
    try:
        logs.setup(log_format, level=level)
    except environ.EnvError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _announce(line: str) -> None:
    print(line, flush=True)


def _quiet(line: str) -> None:
    """A further smtpd node: its listeners are the first node's, announced once."""


def _prepare(args: argparse.Namespace) -> Config:
    """What a listener (smtpd, run) does before it serves: checks, config, queue recovery."""
    compat.check_or_exit()
    cfg = startup.load_or_exit(getattr(args, "config", None))
    os.environ["MAILFLOW_CONFIG"] = str(cfg.directory.absolute())
    spool = Spool(cfg.queue_path()).ensure()
    mac_key(cfg.directory)  # broker.key, made now if new: before any worker of this host starts
    removed, aside = spool.recover()
    if removed or aside:
        log.info("queue recovery: %d temp files removed, %d entries moved aside", removed, aside)
    return cfg


def cmd_smtpd(args: argparse.Namespace) -> int:
    if args.node:  # a node started again by node 0 (smtpd/nodes.py)
        die_with_parent(args.parent)
        return _serve_or_exit(startup.load_or_exit(getattr(args, "config", None)), node=args.node)
    cfg = _prepare(args)
    nodes = Nodes().fork(cfg.smtp.nodes - 1, lambda n: asyncio.run(_serve(cfg, node=n)))
    return _serve_or_exit(cfg, nodes=nodes)


def _serve_or_exit(cfg: Config, **kwargs: Any) -> int:
    """Serve until stopped; a listener that cannot be opened is one line and exit 2."""
    try:
        return asyncio.run(_serve(cfg, **kwargs))
    except ConfigError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        return 2


async def _serve(cfg: Config, on_started: list[str] | None = None, *, node: int = 0,
                 nodes: Nodes | None = None,
                 on_listening: Callable[[], None] | None = None) -> int:
    """One submission process: listeners, queue manager candidate, and for node 0 the others."""
    nodes = nodes or Nodes()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP flushes the queue, as it does Haraka's (in a thread: it renames files)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(
        None, flush, Spool(cfg.queue_path())))
    try:
        servers = await smtpd_server.start(cfg, announce=_announce if node == 0 else _quiet,
                                           reuse_port=cfg.smtp.nodes > 1)
    except BaseException:
        nodes.stop()
        raise
    supervisor = loop.create_task(nodes.supervise())
    if on_listening is not None:
        on_listening()
    manager = QueueManager(cfg, held=route_shaping.held).start()
    title = proctitle.start("smtpd", cfg)
    for line in on_started or []:
        _announce(line)
    await stop.wait()
    supervisor.cancel()
    await loop.run_in_executor(None, nodes.stop)
    manager.stop()
    title.stop()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    return 0


def _worker_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "celery", "-A", "mailflow", "worker", "--loglevel", "INFO",
           "-n", f"mailflow-run-{os.getpid()}@{socket.gethostname()}"]
    if args.worker_concurrency:
        cmd += ["--concurrency", str(args.worker_concurrency)]
    return cmd


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _prepare(args)
    workers: list[subprocess.Popen[bytes]] = []
    host, port = cfg.smtp.listen[0]
    example = (f"try: printf 'Subject: hello\\n\\nfirst message\\n' | curl -sS "
               f"smtp://{host if ':' not in host else f'[{host}]'}:{port} "
               "--mail-from you@example.com --mail-rcpt someone@example.net -T -")

    def start_worker() -> None:  # once listening: a taken port leaves no worker behind
        workers.append(subprocess.Popen(_worker_command(args), start_new_session=False))

    try:
        return _serve_or_exit(cfg, on_started=[example], on_listening=start_worker)
    finally:
        for worker in workers:
            _stop_child(worker)


def _stop_child(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Warm shutdown first (Celery puts unacknowledged messages back), then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def cmd_flush(args: argparse.Namespace) -> int:
    cfg = startup.load_or_exit(getattr(args, "config", None))
    count = flush(Spool(cfg.queue_path()), args.domain, args.ident)
    print(f"{count} entries due now")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    cfg = startup.load_or_exit(getattr(args, "config", None))
    spool = Spool(cfg.queue_path())
    action = args.queue_command
    if action == "stats":
        if args.cluster:
            return _cluster_stats(args.json)
        numbers: dict[str, int] = queuetools.stats(spool)
        if cfg.webhooks:  # events kept and not yet accepted by their endpoint
            numbers["webhook_backlog"] = events.backlog(spool.root)
        suspended = shaping_state(cfg)
        if suspended:  # destinations a reply suspended: seconds left
            numbers.update({f"suspended:{rule}": left for rule, left in suspended.items()})
        if cfg.shaping:  # deliveries each rule held back, on this host, since its workers started
            numbers.update(host_counts("throttled:"))
        if not args.json:  # broker messages refused for want of mailflow's MAC, on this host
            numbers["refused_tasks"] = authentic.refused()
        print(json.dumps(numbers) if args.json else
              " ".join(f"{k}={v}" for k, v in numbers.items()))
        return 0
    if action == "list":
        rows = queuetools.rows(spool, domain=args.domain, state=args.state)
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
                f"{' (countdown)' if r['countdown'] else ''} {why}", keep=""))
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


def cmd_flower(args: argparse.Namespace) -> int:
    startup.load_or_exit(getattr(args, "config", None))  # its state directory and broker follow it
    return flower.run(args)


def cmd_dkim(args: argparse.Namespace) -> int:
    return dkim_command.run(args, startup.load_or_exit(getattr(args, "config", None)))


def cmd_suppress(args: argparse.Namespace) -> int:
    return suppress_command.run(args, startup.load_or_exit(getattr(args, "config", None)))


def cmd_tlsrpt(args: argparse.Namespace) -> int:
    cfg = startup.load_or_exit(getattr(args, "config", None))
    print(f"{tls_reports.send_due_locked(cfg)} TLS reports sent")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    startup.load_or_exit(getattr(args, "config", None))
    data = sys.stdin.buffer.read()
    code, text = outbound.send_email(args.sender, args.recipients, data)
    print(text, file=sys.stdout if code is OK else sys.stderr)
    if code is OK:
        return 0
    return EX_TEMPFAIL if code is DENYSOFT else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
