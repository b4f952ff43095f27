"""``mailflow apikey add|list|remove``: who may use the HTTP injection API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mailflow.api.keys import ANY_TENANT, Keys
from mailflow.cli.commands import command
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config


def add_parser(sub: argparse._SubParsersAction,
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("apikey", help="keys for the HTTP injection API: add, list, remove",
                       description="Keys for the HTTP API (http.ini). Only a hash of each is kept "
                       "in the config directory's apikeys file; the key itself is shown once.")
    common(s)
    ssub = s.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    p = ssub.add_parser("add", help="make a key and print it (once)")
    common(p)
    p.add_argument("name", help="the key's name, as log lines show it (letters, digits, . _ -)")
    p.add_argument("--tenant", help=f"the tenant its messages belong to ('{ANY_TENANT}': requests "
                   "name their own)")
    p.add_argument("--rate", type=int, default=0, metavar="N",
                   help="at most N messages a minute (default: no limit)")
    p = ssub.add_parser("list", help="every key's name, tenant and rate (never the key)")
    common(p)
    p = ssub.add_parser("remove", help="remove a key: requests with it are refused at once")
    common(p)
    p.add_argument("name", help="the key's name")


@command("apikey", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    keys = Keys(cfg.directory)
    try:
        if args.apikey_command == "add":
            print(keys.add(args.name, args.tenant, args.rate), flush=True)
            return 0
        if args.apikey_command == "list":
            for key in keys.all().values():
                print(f"{key.name} tenant={key.tenant or '-'} rate={key.rate or '-'}")
            return 0
        if not keys.remove(args.name):
            print(f"mailflow: no key named {args.name!r}", file=sys.stderr)
            return 1
        return 0
    except (ValueError, ConfigError) as exc:
        print(f"mailflow: {exc}", file=sys.stderr)
        return 1
