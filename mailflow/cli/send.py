"""``mailflow send``: one message from standard input, queued as ``outbound.send_email`` does."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mailflow import outbound
from mailflow.cli.commands import command
from mailflow.codes import DENYSOFT, OK
from mailflow.config.loader import Config

EX_TEMPFAIL = 75  # sysexits.h, what sendmail returns for "try again later"



def add_send(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("send", help="queue a message read from standard input",
                       description="Queue the message on standard input, as outbound.send_email.")
    common(p)
    p.add_argument("-f", "--from", dest="sender", required=True, metavar="FROM",
                   help="envelope sender ('' for the null sender)")
    p.add_argument("recipients", nargs="+", metavar="RCPT", help="envelope recipients")


@command("send", add_send)
def cmd_send(args: argparse.Namespace, cfg: Config) -> int:
    data = sys.stdin.buffer.read()
    code, text = outbound.send_email(args.sender, args.recipients, data)
    print(text, file=sys.stdout if code is OK else sys.stderr)
    if code is OK:
        return 0
    return EX_TEMPFAIL if code is DENYSOFT else 1
