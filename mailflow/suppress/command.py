"""``mailflow suppress list|add|remove|import``: the suppression list, by hand."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from mailflow.address import AddressError, parse_address
from mailflow.cli.commands import command
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.config.schedule import parse_duration
from mailflow.suppress.store import Entry, Store, for_config, normal


def add_parser(sub: argparse._SubParsersAction,
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("suppress", help="the suppression list: list, add, remove, import",
                       description="Addresses mail is not sent to (shared by every host on a "
                       "Redis broker or shaping_redis).")
    common(s)
    ssub = s.add_subparsers(dest="suppress_command", required=True, metavar="ACTION")
    p = ssub.add_parser("list", help="every suppressed address")
    common(p)
    p.add_argument("--json", action="store_true", help="a JSON list of {address, reason, since}")
    p = ssub.add_parser("add", help="suppress an address")
    common(p)
    p.add_argument("address", help="the address")
    p.add_argument("--reason", default="added by hand", help="kept with it (default: added by hand)")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help="only for this long (e.g. 30d; default: until removed)")
    p = ssub.add_parser("remove", help="mail to an address again")
    common(p)
    p.add_argument("address", help="the address")
    p = ssub.add_parser("import", help="suppress every address of FILE (one per line, "
                        "optionally ',reason')")
    common(p)
    p.add_argument("file", type=Path, help="one address per line")


@command("suppress", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    store = for_config(cfg)
    try:
        return _run(args, store)
    except redis.RedisError as exc:
        print(f"mailflow: the suppression list in Redis ({cfg.shared_redis()}) is not reachable: {exc}",
              file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"mailflow: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, store: Store) -> int:
    action = args.suppress_command
    now = time.time()
    if action == "list":
        entries = [e for e in store.entries() if e.live(now)]
        if args.json:
            print(json.dumps([{"address": e.address, "reason": e.reason, "since": int(e.since),
                               **({"expires": int(e.expires)} if e.expires else {})} for e in entries]))
        else:
            for e in entries:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.since))
                print(f"{e.address} since={when} reason={e.reason!r}")
            print(f"-- {len(entries)} addresses")
        return 0
    if action == "add":
        address = _checked(args.address, "the address")
        try:
            expires = now + parse_duration(args.duration) if args.duration else None
        except ValueError as exc:
            raise ConfigError("--for", None, str(exc)) from None
        store.add(Entry(address=address, reason=args.reason, since=now, expires=expires))
        print(f"{address} suppressed")
        return 0
    if action == "remove":
        address = normal(args.address)
        if store.remove(address):
            print(f"{address} removed")
            return 0
        print(f"mailflow: {address} is not on the suppression list", file=sys.stderr)
        return 1
    entries = _read(args.file, now)
    for entry in entries:
        store.add(entry)
    print(f"{len(entries)} addresses suppressed")
    return 0


def _checked(text: str, where: str) -> str:
    try:
        return normal(parse_address(text.strip()).address)
    except AddressError as exc:
        raise ConfigError(where, None, f"{text!r} is not an address: {exc}") from None


def _read(path: Path, now: float) -> list[Entry]:
    """Every line checked before anything is added: a bad line adds nothing (FILE:LINE)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        address, _, reason = line.partition(",")
        try:
            parsed = normal(parse_address(address.strip()).address)
        except AddressError as exc:
            raise ConfigError(path, lineno, f"{address.strip()!r} is not an address: {exc}") from None
        out.append(Entry(address=parsed, reason=reason.strip() or f"imported from {path.name}", since=now))
    return out
