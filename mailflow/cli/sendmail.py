"""``mailflow sendmail``: the sendmail command line applications expect.

Flags: ``-t`` (recipients from To/Cc/Bcc, Bcc removed), ``-i``/``-oi`` (a lone
dot does not end the message), ``-f``/``-r`` (envelope sender), ``-F`` (full
name for a missing From:).  Other ``-o``/``-b`` options are accepted and
ignored, as Postfix's sendmail does.  Exit codes are sysexits.h's.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.utils import formataddr, getaddresses
from typing import Any

from mailflow import message as msg
from mailflow import outbound
from mailflow.cli.commands import command
from mailflow.codes import DENYSOFT, OK
from mailflow.config import startup

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 64, 65, 67, 75


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailflow sendmail", description="Queue the message on standard "
                                "input, as the sendmail command line applications call does.")
    p.add_argument("-t", action="store_true", help="read recipients from To:, Cc: and Bcc:")
    p.add_argument("-i", action="store_true", help="a line with a single dot does not end input")
    p.add_argument("-f", "-r", dest="sender", metavar="FROM", help="envelope sender")
    p.add_argument("-F", dest="fullname", metavar="NAME", help="full name for a missing From:")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT",
                   help="sendmail option (-oi as -i; others ignored)")
    p.add_argument("-b", dest="mode", default="m", metavar="MODE", help="only -bm is supported")
    p.add_argument("--config", metavar="DIR", default=None)
    p.add_argument("recipients", nargs="*", metavar="RCPT",
                   help="envelope recipients (with -t: added to those of the headers)")
    return p


def _strip_bcc(data: bytes) -> bytes:
    head = msg.header_block(data)
    kept = re.sub(rb"(?im)^bcc:.*\r\n(?:[ \t].*\r\n)*", b"", head)
    return kept + data[len(head):]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.mode != "m":
        print(f"mailflow sendmail: -b{args.mode} is not supported", file=sys.stderr)
        return EX_USAGE
    cfg = startup.load_or_exit(args.config)
    data = sys.stdin.buffer.read()
    if not (args.i or "i" in args.options):
        end = re.search(rb"(?m)^\.\r?$", data)
        if end:
            data = data[: end.start()]
    data = msg.normalise_eol(data)
    sender = args.sender if args.sender is not None else f"{getpass.getuser()}@{cfg.me}"
    recipients = list(args.recipients)
    if args.t:
        headers = BytesHeaderParser().parsebytes(msg.header_block(data))
        for name in ("to", "cc", "bcc"):
            recipients += [addr for _, addr in getaddresses(headers.get_all(name, [])) if addr]
        data = _strip_bcc(data)
    if args.fullname and "from" not in msg.header_names(data):
        data = f"From: {formataddr((args.fullname, sender))}\r\n".encode() + data
    if not recipients:
        print("mailflow sendmail: no recipients (give them as arguments, or use -t)", file=sys.stderr)
        return EX_USAGE
    code, text = outbound.send_email(sender, recipients, data)
    if code is OK:
        return 0
    print(f"mailflow sendmail: {text}", file=sys.stderr)
    return EX_TEMPFAIL if code is DENYSOFT else EX_NOUSER


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Listed in ``mailflow --help`` only: its arguments are sendmail's own, read by
    :func:`build_parser` (``mailflow sendmail -oi -t`` never reaches mailflow's parser)."""
    sub.add_parser("sendmail", help="the sendmail command line (-t -i -f -F …); see its --help",
                   add_help=False)


@command("sendmail", add_parser, needs_config=False)
def run(args: argparse.Namespace) -> int:
    """Not reached through mailflow's parser (see :func:`add_parser`)."""
    return main([])
