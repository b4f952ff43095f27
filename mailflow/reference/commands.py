"""``commands.md``: every ``mailflow`` command with its arguments, from the parsers that read
them, and the Celery calls an operator makes."""

from __future__ import annotations

import argparse

from mailflow import cli
from mailflow.cli import sendmail
from mailflow.reference.markdown import GENERATED, code, table

INTRO = """\
# Commands

`mailflow COMMAND --help` prints each of these. Every command but `sendmail` also takes
`--config DIR` (default `$MAILFLOW_CONFIG`, else `./config`) and `--log-format text|json`
(default `$MAILFLOW_LOG_FORMAT`, else text), left out of the tables below.

"""

CELERY = """\
## Celery

mailflow is a Celery application: `celery -A mailflow worker` starts a worker on any host
(the config directory it is given must hold the owners' `broker.key`), and these calls reach
every worker on the broker:

"""

CELERY_CALLS = (
    ("celery -A mailflow call mailflow.flush_queue",
     "every deferred entry of every owner host is attempted now, once (from any host, any "
     "directory, given the same config)"),
    ("celery -A mailflow call mailflow.flush_queue --args='[\"example.com\"]'",
     "the same, for one recipient domain"),
    ("celery -A mailflow inspect ping", "which workers answer"),
    ("celery -A mailflow inspect mailflow_stats",
     "each owner host's queue statistics (what `mailflow queue stats --cluster` adds up)"),
)

#: options every command has, said once in the introduction
COMMON = {"-h", "--config", "--log-format"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's sub-commands by name (argparse keeps them among its actions)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each sub-command, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _argument(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if not action.option_strings:
        return metavar or action.dest.upper()
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    value = metavar or (f"{{{','.join(map(str, action.choices))}}}" if action.choices
                        else action.dest.upper())
    return ", ".join(f"{o} {value}" for o in action.option_strings)


def _rows(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    rows = []
    for action in parser._actions:
        if (action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction)
                or COMMON & set(action.option_strings)):
            continue
        meaning = action.help or ""
        if action.choices and not action.option_strings:
            meaning = (meaning + "; " if meaning else "") + "one of " + ", ".join(map(str, action.choices))
        if action.required and action.option_strings:
            meaning = "(required) " + meaning
        rows.append((code(_argument(action)), meaning))
    return rows


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    out = []
    helps = _helps(parser)
    for name, sub in _subcommands(parser).items():
        full = f"{path} {name}"
        if full == "mailflow sendmail":
            sub = sendmail.build_parser()
        level = "#" * min(full.count(" ") + 1, 4)
        text = [f"{level} {full}\n", (sub.description or helps.get(name, "")).strip() + "\n"]
        rows = _rows(sub)
        if rows:
            text.append(table(("Argument", "Meaning"), rows))
        out.append("\n".join(text))
        out.extend(_walk(sub, full))
    return out


def page() -> str:
    return (GENERATED + INTRO + "\n".join(_walk(cli.build_parser(), "mailflow")) + "\n"
            + CELERY + table(("Command", "Does"), [(code(c), d) for c, d in CELERY_CALLS]))
