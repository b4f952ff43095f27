"""``mailflow dkim keygen|check``: make a domain's keys, and see that DNS publishes them.

``keygen`` prints the TXT record to publish (as ``dknewkey`` and Haraka's
``dkim_key_gen.sh`` do); ``check`` asks the configured ``nameservers`` for it and
exits 0 only when every key of the domain is published as it is on disk, so a
deployment script can wait on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value

from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.dkim.keys import DEFAULT_RSA_BITS, Key, KeyProblem, domain_keys, generate
from mailflow.relay.mx import resolver


def add_parser(sub: argparse._SubParsersAction,
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    d = sub.add_parser("dkim", help="DKIM keys: make one, check its DNS record",
                       description="DKIM signing keys under the config directory's dkim/.")
    common(d)
    dsub = d.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    p = dsub.add_parser("keygen", help="write a new key for DOMAIN and print its TXT record")
    common(p)
    p.add_argument("domain", metavar="DOMAIN", help="the signing domain (the From: domain)")
    p.add_argument("--selector", default=None,
                   help="the selector (default: the month, as mail2026-12)")
    p.add_argument("--bits", type=int, default=DEFAULT_RSA_BITS, help="RSA key size (default 2048)")
    p.add_argument("--ed25519", action="store_true", help="also an Ed25519 key (signed beside RSA)")
    p = dsub.add_parser("check", help="look DOMAIN's records up and compare them with its keys")
    common(p)
    p.add_argument("domain", metavar="DOMAIN", help="a domain with a key under dkim/")


@command("dkim", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    keys_dir = cfg.directory / "dkim"
    domain = args.domain.strip().lower().rstrip(".")
    if args.dkim_command == "keygen":
        return _keygen(keys_dir, domain, args)
    return _check(keys_dir, domain, cfg)


def _keygen(keys_dir: Path, domain: str, args: argparse.Namespace) -> int:
    selector = args.selector or _default_selector()
    try:
        keys = generate(keys_dir, domain, selector, bits=args.bits, with_ed25519=args.ed25519)
    except KeyProblem as exc:
        print(f"mailflow: {exc}", file=sys.stderr)
        return 1
    for key in keys:
        print(f"; {key.path}: publish this TXT record")
        print(f"{key.record_name}. IN TXT {_quoted(key.record())}")
    return 0


def _default_selector() -> str:
    return time.strftime("mail%Y-%m")


def _quoted(record: str) -> str:
    """TXT strings are at most 255 bytes each (RFC 1035 3.3.14): split, quoted, in parentheses."""
    parts = [record[i:i + 250] for i in range(0, len(record), 250)]
    return "( " + " ".join(f'"{p}"' for p in parts) + " )" if len(parts) > 1 else f'"{record}"'


def _check(keys_dir: Path, domain: str, cfg: Config) -> int:
    try:
        keys = domain_keys(keys_dir, domain)
    except KeyProblem as exc:
        print(f"mailflow: {exc}", file=sys.stderr)
        return 1
    if not keys:
        print(f"mailflow: no DKIM key for {domain} in {keys_dir / domain}", file=sys.stderr)
        return 1
    good = True
    for key in keys:
        verdict = _verdict(key, cfg)
        good &= verdict == "ok"
        print(f"{key.record_name} ({key.algorithm.decode()}): {verdict}")
    return 0 if good else 1


def _verdict(key: Key, cfg: Config) -> str:
    """'ok', or what is wrong with the published record."""
    try:
        answer = resolver(cfg.outbound).resolve(key.record_name, "TXT")
    except dns.resolver.NXDOMAIN:
        return "not published (NXDOMAIN)"
    except dns.resolver.NoAnswer:
        return "not published (no TXT record)"
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        return f"lookup failed ({type(exc).__name__})"
    published = [b"".join(r.strings) for r in answer]
    wanted = _tags(key.record().encode())
    for text in published:
        tags = _tags(text)
        if tags.get(b"p") == wanted[b"p"] and tags.get(b"k", b"rsa") == wanted[b"k"]:
            return "ok"
    return "published, but not this key (p= differs)" if published else "not published"


def _tags(text: bytes) -> dict[bytes, bytes]:
    try:
        tags = parse_tag_value(text)
    except InvalidTagValueList:
        return {}
    return {k: b"".join(v.split()) for k, v in tags.items()}
