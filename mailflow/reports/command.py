"""``mailflow tlsrpt send``: the finished days' TLS reports now (the workers send them hourly)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.reports import tls as tls_reports


def add_tlsrpt(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("tlsrpt", help="send the finished days' TLS reports (RFC 8460) now",
                       description="Send every finished UTC day's TLS reports not sent yet (the "
                       "workers do so once an hour).")
    common(p)
    p.add_argument("action", choices=("send",))


@command("tlsrpt", add_tlsrpt)
def cmd_tlsrpt(args: argparse.Namespace, cfg: Config) -> int:
    print(f"{tls_reports.send_due_locked(cfg)} TLS reports sent")
    return 0
