"""The ``mailflow`` command: every sub-command is registered by the module that holds it
(mailflow/cli/commands.py); the modules are imported here in the order ``--help`` lists
them."""

from __future__ import annotations

import argparse
import logging
import sys

from mailflow import logs
from mailflow.api import command as apikey_command
from mailflow.classify import command as classify_command
from mailflow.cli import flower, ingest, queue, send, sendmail, serve
from mailflow.cli.commands import REGISTRY, Command
from mailflow.config import environ, startup
from mailflow.dkim import command as dkim_command
from mailflow.reports import command as tlsrpt_command
from mailflow.smtpd import sink
from mailflow.suppress import command as suppress_command

#: The modules whose commands ``mailflow`` offers, in the order ``--help`` lists them.
COMMAND_MODULES = (serve, send, sendmail, queue, dkim_command, suppress_command, apikey_command,
                   classify_command, ingest, sink, flower, tlsrpt_command)


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--config and --log-format, accepted before or after the command name."""
    # a subcommand's own default would overwrite a value given before the command name
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", metavar="DIR", default=default,
                        help="config directory (default: $MAILFLOW_CONFIG or ./config)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="log line format (default: $MAILFLOW_LOG_FORMAT or text)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailflow", description="mailflow: outbound mail delivery on Celery")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for registered in in_order():
        registered.add_parser(sub, _common)
    return parser


def in_order() -> list[Command]:
    """The registered commands, module by module in ``COMMAND_MODULES``' order."""
    return [c for module in COMMAND_MODULES for c in REGISTRY.values() if c.run.__module__ == module.__name__]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:  # sendmail's own flag syntax (-oi, -F name …), not ours
        _setup_or_exit(None, logging.WARNING)
        return sendmail.main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_or_exit(getattr(args, "log_format", None))
    chosen = REGISTRY[args.command]
    if not chosen.needs_config:
        return chosen.run(args)
    return chosen.run(args, startup.load_or_exit(getattr(args, "config", None)))


def _setup_or_exit(log_format: str | None, level: int = logging.INFO) -> None:
    """Every environment variable checked (one line each that is bad, and exit 2), then logging."""
    environ.check_or_exit()
    try:
        logs.setup(log_format, level=level)
    except environ.EnvError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
