"""``mailflow classify 'REPLY' [--mx HOST]``: which class a reply gets, and by which rule."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from mailflow.classify.rules import classify
from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.errors import Reply


def add_parser(sub: argparse._SubParsersAction,
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("classify", help="the class of a reply, and the rule that gave it",
                       description="Prints CLASS rule=NAME for a reply as a receiver sent it "
                       "('550 5.1.1 user unknown'): classify.ini's rules first, then the shipped ones.")
    common(p)
    p.add_argument("reply", help="the reply: code, enhanced code and text")
    p.add_argument("--mx", default="", metavar="HOST", help="the MX host that sent it")


def parse_reply(text: str) -> Reply:
    found = re.match(r"\s*([245]\d\d)[ -]?(.*)", text, re.S)
    return Reply(int(found.group(1)), found.group(2).strip()) if found else Reply(0, text.strip())


@command("classify", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    cls, rule = classify(parse_reply(args.reply), args.mx, cfg.classify)
    print(f"{cls} rule={rule}")
    return 0
