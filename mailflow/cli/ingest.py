"""``mailflow ingest [FILE|-]``: a complaint or a late bounce that came back, acted on.

Made for a pipe from the MTA that receives mail for the return-path domain (Postfix's
pipe(8): ``flags=Rq user=mailflow argv=mailflow ingest -``).  Exit 0 when the report was
read (matched or not: an unmatched one is logged); 65 (EX_DATAERR, which pipe(8) turns
into a bounce) for mail that is not a report; 75 (EX_TEMPFAIL: the MTA keeps it and tries
again) when what it needs cannot be written now.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mailflow.cli.commands import command
from mailflow.config.loader import Config
from mailflow.queue.ingest import take
from mailflow.reports.returned import NotAReport, parse

EX_DATAERR = 65
EX_TEMPFAIL = 75
#: a report bigger than this is not read (a feedback report is a few hundred KiB at most)
MAX_BYTES = 50 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction,
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("ingest", help="act on a complaint (ARF) or a late bounce (DSN) sent back",
                       description="Reads one message -- an ARF feedback report (RFC 5965) or a "
                       "delivery status notification (RFC 3464) -- matches it to the message "
                       "mailflow sent (by its VERP return path or Message-ID), suppresses the "
                       "recipient and emits the complained or bounced event.")
    common(p)
    p.add_argument("file", nargs="?", default="-", help="the message (- or nothing: standard input)")
    p.add_argument("--rcpt", action="append", default=[], metavar="ADDRESS",
                   help="the envelope recipient it was delivered to (pipe(8)'s ${recipient})")


@command("ingest", add_parser)
def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(args.file, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        print(f"mailflow ingest: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EX_DATAERR
    if len(data) > MAX_BYTES:
        print(f"mailflow ingest: over {MAX_BYTES} bytes, not a report", file=sys.stderr)
        return EX_DATAERR
    try:
        report = parse(data, args.rcpt)
    except NotAReport as exc:
        print(f"mailflow ingest: not a report: {exc}", file=sys.stderr)
        return EX_DATAERR
    try:
        print(take(cfg, report))
    except OSError as exc:
        print(f"mailflow ingest: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0
