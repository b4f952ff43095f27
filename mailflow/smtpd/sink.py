"""``mailflow sink``: a small receiving server for development, like Mailpit's catch-all.

Not part of delivery: it stands where a real MX would, so that a first message routed to
it (routes.ini ``via``, or outbound.ini ``relay_host``) arrives and can be read, and so that
a deferral and a bounce can be tried on purpose.  It accepts every message, prints one
line for each (``received from=… to=… size=… subject=…``) and keeps each as
``DIR/<n>.eml``; a ``--reply PATTERN=CODE TEXT`` whose pattern (fnmatch, on the
recipient) matches answers that recipient's RCPT with its reply instead of 250:
``--reply 'fail@*=550 5.1.1 no such user'``, ``--reply 'slow@*=451 4.3.0 try later'``.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import itertools
import os
import signal
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from mailflow.cli.commands import command
from mailflow.config.settings import parse_hostport
from mailflow.config.state import state_dir
from mailflow.message import single_line

DEFAULT_LISTEN = "127.0.0.1:2526"


def reply_rule(text: str) -> tuple[str, str]:
    """``PATTERN=CODE TEXT`` (argparse type): the recipient pattern and its reply."""
    pattern, sep, reply = text.partition("=")
    code = reply.strip()[:3]
    if not sep or not pattern.strip() or not (code.isdigit() and code[0] in "2345") or len(reply.strip()) < 3:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PATTERN=CODE TEXT (e.g. 'fail@*=550 5.1.1 no such user')")
    return pattern.strip().lower(), reply.strip()


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("sink", help="a development SMTP server that keeps what it receives",
                       description="Receive mail for any address (development and tests only): print a "
                       "line per message and keep each as DIR/<n>.eml; answer 250 unless a --reply "
                       "pattern matches the recipient.")
    common(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to listen (default {DEFAULT_LISTEN})")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="where messages are kept (default: sink/ in the state directory)")
    p.add_argument("--reply", action="append", type=reply_rule, default=[], metavar="PATTERN=CODE TEXT",
                   help="answer recipients matching PATTERN (fnmatch) with this reply; repeatable, "
                        "the first that matches wins")


class SinkHandler:
    """aiosmtpd handler: RCPT answered by the rules, DATA kept as the next ``<n>.eml``."""

    def __init__(self, directory: Path, rules: list[tuple[str, str]]):
        self.directory, self.rules = directory, rules
        existing = [int(p.stem) for p in directory.glob("*.eml") if p.stem.isdigit()]
        self.numbers = itertools.count(max(existing, default=0) + 1)

    def reply_for(self, address: str) -> str | None:
        return next((reply for pattern, reply in self.rules if fnmatch.fnmatchcase(address.lower(), pattern)),
                    None)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        reply = self.reply_for(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return reply or "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        data: bytes = envelope.original_content or envelope.content
        n = next(self.numbers)
        path = self.directory / f"{n}.eml"
        tmp = path.with_name(f".{n}.eml.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        subject = BytesHeaderParser(policy=default_policy).parsebytes(data).get("subject", "")
        print(f"received from=<{envelope.mail_from}> to={','.join(envelope.rcpt_tos)} size={len(data)} "
              f"subject={single_line(str(subject))!r} file={path}", flush=True)
        return f"250 2.0.0 Ok: kept as {n}.eml"


async def serve(host: str, port: int, handler: SinkHandler) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mailflow-sink", ident="mailflow sink", decode_data=False,
                     enable_SMTPUTF8=True, data_size_limit=0),
        host=host, port=port, reuse_address=True)
    print(f"listening on {f'[{host}]' if ':' in host else host}:{port}; keeping mail in "
          f"{handler.directory}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


@command("sink", add_parser, needs_config=False)
def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_hostport(args.listen)
    except ValueError as exc:
        print(f"mailflow sink: --listen {exc}", flush=True)
        return 2
    directory = Path(args.dir) if args.dir else state_dir() / "sink"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(host, port, SinkHandler(directory, args.reply)))
    except OSError as exc:
        print(f"mailflow sink: cannot listen on {args.listen}: {exc.strerror or exc}", flush=True)
        return 2
    return 0
