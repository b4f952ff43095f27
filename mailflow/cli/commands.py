"""The ``mailflow`` commands, each registered by the module that holds it.

A module says what its command is called, how its arguments are read and what it does
(``@command("flush", add_parser)``); the ``mailflow`` entry point lists them in
``--help`` in the order they were registered and calls the one asked for -- with the
config directory loaded and checked first, unless the command works without one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``add_parser(subparsers, common)``: adds the command's parser; ``common`` adds --config
#: and --log-format to a parser
AddParser = Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]
Run = Callable[..., int]


@dataclass(frozen=True)
class Command:
    name: str
    add_parser: AddParser
    run: Run
    #: called as ``run(args, cfg)`` with the config directory loaded (a bad one: one line,
    #: exit 2); otherwise ``run(args)``
    needs_config: bool = True


#: Every command, in the order ``mailflow --help`` lists them.
REGISTRY: dict[str, Command] = {}


def command(name: str, add_parser: AddParser, *, needs_config: bool = True) -> Callable[[Run], Run]:
    """Register the decorated function as the command ``name``."""
    def register(run: Run) -> Run:
        REGISTRY[name] = Command(name, add_parser, run, needs_config)
        return run
    return register
