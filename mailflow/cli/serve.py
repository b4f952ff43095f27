"""``mailflow run`` and ``mailflow smtpd``: the submission listener, its queue manager, and
for ``run`` a Celery worker beside it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from mailflow.api import server as api_server
from mailflow.cli.commands import command
from mailflow.config import startup
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.observation import proctitle
from mailflow.pipeline import shaping as route_shaping
from mailflow.queue import staging
from mailflow.queue.flush import flush
from mailflow.queue.manager import QueueManager
from mailflow.queue.spool import Spool
from mailflow.runtime import compat, steps
from mailflow.smtpd import inbound
from mailflow.smtpd import server as smtpd_server
from mailflow.smtpd.nodes import Nodes, die_with_parent
from mailflow.wire.seal import mac_key

log = logging.getLogger("mailflow")


def add_run(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("run", help="all in one: submission listener and a Celery worker",
                       description="Start the SMTP submission listener and a Celery worker "
                       "in one process tree (on the embedded broker unless "
                       "MAILFLOW_BROKER_URL is set). Ctrl-C stops everything.")
    common(p)
    p.add_argument("--worker-concurrency", type=int, default=None, metavar="N",
                   help="threads of the embedded worker (default: outbound.ini's concurrency_max + 8)")


def add_smtpd(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("smtpd", help="the SMTP submission listener only",
                       description="Listen for SMTP submissions (smtp.ini 'listen') and "
                       "queue accepted mail.")
    common(p)
    # how node 0 starts a further node again (smtp.ini nodes): not for operators
    p.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)


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
    cfg.restamp()  # a key made just now is no change to warn about
    removed, aside = spool.recover()
    if removed or aside:
        log.info("queue recovery: %d temp files removed, %d entries moved aside", removed, aside)
    staging.recover(spool)  # HTTP requests a crash interrupted: finished if committed, else gone
    return cfg


@command("run", add_run, needs_config=False)
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


def _worker_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "celery", "-A", "mailflow", "worker", "--loglevel", "INFO",
           "-n", f"mailflow-run-{os.getpid()}@{socket.gethostname()}"]
    if args.worker_concurrency:
        cmd += ["--concurrency", str(args.worker_concurrency)]
    return cmd


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


@command("smtpd", add_smtpd, needs_config=False)
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
    say = _announce if node == 0 else _quiet
    try:
        servers = await smtpd_server.start(cfg, announce=say, reuse_port=cfg.smtp.nodes > 1)
    except BaseException:
        nodes.stop()
        raise
    try:
        api = await api_server.start(cfg, say, reuse_port=cfg.smtp.nodes > 1)
        reports = await inbound.start(cfg, say) if node == 0 else None  # one process takes reports
    except BaseException:
        for server in servers:
            server.close()
        nodes.stop()
        raise
    if reports is not None:
        servers.append(reports)
    supervisor = loop.create_task(nodes.supervise())
    if on_listening is not None:
        on_listening()
    manager = QueueManager(cfg, held=route_shaping.held).start()
    title = proctitle.start("smtpd", cfg)
    watch = steps.watch_config().start() if node == 0 else None
    for line in on_started or []:
        _announce(line)
    await stop.wait()
    supervisor.cancel()
    await loop.run_in_executor(None, nodes.stop)
    manager.stop()
    title.stop()
    if watch is not None:
        watch.stop()
    for server in servers:
        server.close()
    if api is not None:
        await api.cleanup()  # requests in flight are answered first
    for server in servers:
        await server.wait_closed()
    return 0
