"""``mailflow flower``: Celery's Flower with mailflow's settings, safe by default.

Flower's own default is an unauthenticated dashboard on every interface, from which
anyone who reaches it can send mailflow's tasks (they are signed by Flower's process,
which loads the app) and stop its workers.  So this command binds 127.0.0.1 unless told
``--address``, and refuses to start without ``FLOWER_BASIC_AUTH=user:password`` unless
``--unauthenticated`` is given and the address is a loopback one (then Flower's API is
opened as well: ``FLOWER_UNAUTHENTICATED_API``, which Flower 2 otherwise asks for).
Task history is bounded (``--max-tasks``, 10,000: Flower's default of 100,000 costs about
half a gigabyte) and, with ``--persistent``, kept in the state directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.config.state import state_dir


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("flower", help="Flower, the Celery dashboard, with mailflow's settings",
                       description="Start Flower for mailflow's workers: on 127.0.0.1 unless --address "
                       "is given, and only with FLOWER_BASIC_AUTH=user:password set unless "
                       "--unauthenticated is given on a loopback address.")
    common(p)
    p.add_argument("--address", default="127.0.0.1", help="where to listen (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5555, help="port (default 5555)")
    p.add_argument("--max-tasks", type=int, default=10_000, help="tasks kept in memory (default 10000)")
    p.add_argument("--persistent", action="store_true",
                   help="keep task history across restarts (in the state directory)")
    p.add_argument("--unauthenticated", action="store_true",
                   help="no password, page and API alike: only on a loopback address")


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    """Why Flower may not start as asked, or None."""
    if args.unauthenticated:
        if not _loopback(args.address):
            return f"--unauthenticated only on a loopback address, not {args.address}"
        return None
    auth = environ.get("FLOWER_BASIC_AUTH", "")
    if ":" not in auth or not auth.split(":", 1)[1]:
        return ("set FLOWER_BASIC_AUTH=user:password (or give --unauthenticated, on a loopback "
                "address only): Flower's dashboard can send tasks and stop workers")
    return None


@command("flower", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    """Flower, on the config's state directory and broker (loaded first)."""
    why = refusal(args, dict(os.environ))
    if why is not None:
        print(f"mailflow flower: {why}", file=sys.stderr, flush=True)
        return 2
    argv = [sys.executable, "-m", "celery", "-A", "mailflow", "flower", f"--address={args.address}",
            f"--port={args.port}", f"--max_tasks={args.max_tasks}"]
    if args.persistent:
        argv += ["--persistent=True", f"--db={state_dir() / 'flower.db'}"]
    env = dict(os.environ)
    if args.unauthenticated:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        env.pop("FLOWER_BASIC_AUTH", None)
    os.execve(sys.executable, argv, env)
    return 0  # not reached: the process is Flower now
