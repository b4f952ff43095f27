"""Module paths of mailflow 0.1 that moved when the code was split into sides, still importable.

A plugin written against 0.1 may import ``mailflow.hmail`` or ``mailflow.mx`` (for
type hints, or to build a get_mx answer); those names keep working, with a
DeprecationWarning naming the new path.  The public API
(``mailflow.hooks``, ``mailflow.codes``, ``mailflow.outbound``) never moved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

#: The release in which the old paths stop working.
GONE_IN = "0.3"

#: old module -> where it lives now
MOVED = {
    "mailflow.application": "mailflow.runtime.application",
    "mailflow.atomic": "mailflow.util.atomic",
    "mailflow.batch": "mailflow.queue.claims",
    "mailflow.bounce": "mailflow.queue.dsn",
    "mailflow.client": "mailflow.relay.client",
    "mailflow.compat": "mailflow.runtime.compat",
    "mailflow.configfiles": "mailflow.config.files",
    "mailflow.counters": "mailflow.queue.counters",
    "mailflow.delivery": "mailflow.queue.outcomes",
    "mailflow.descriptors": "mailflow.util.descriptors",
    "mailflow.embedded": "mailflow.runtime.embedded",
    "mailflow.environ": "mailflow.config.environ",
    "mailflow.flower": "mailflow.cli.flower",
    "mailflow.flush": "mailflow.queue.flush",
    "mailflow.hmail": "mailflow.queue.hmail",
    "mailflow.lease": "mailflow.wire.lease",
    "mailflow.metrics": "mailflow.observation.metrics",
    "mailflow.mx": "mailflow.relay.mx",
    "mailflow.payloads": "mailflow.wire.payloads",
    "mailflow.plugins": "mailflow.config.plugins",
    "mailflow.pool": "mailflow.relay.pool",
    "mailflow.proctitle": "mailflow.observation.proctitle",
    "mailflow.qfile": "mailflow.queue.entry",
    "mailflow.qmgr": "mailflow.queue.manager",
    "mailflow.queuetools": "mailflow.queue.tools",
    "mailflow.sampler": "mailflow.observation.sampler",
    "mailflow.schedule": "mailflow.config.schedule",
    "mailflow.seal": "mailflow.wire.seal",
    "mailflow.sendmail": "mailflow.cli.sendmail",
    "mailflow.settings": "mailflow.config.settings",
    "mailflow.spool": "mailflow.queue.spool",
    "mailflow.startup": "mailflow.config.startup",
    "mailflow.state": "mailflow.config.state",
    "mailflow.tally": "mailflow.observation.tally",
    "mailflow.tls": "mailflow.util.tls",
    "mailflow.tlspolicy": "mailflow.relay.tlspolicy",
    "mailflow.todo": "mailflow.queue.todo",
    "mailflow.worker": "mailflow.runtime.worker",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and gives a module with everything the new one has."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} is now {new} (the old path goes in mailflow {GONE_IN})",
                      DeprecationWarning, stacklevel=2)
        module.__dict__.update({k: v for k, v in vars(importlib.import_module(new)).items()
                                if not k.startswith("__")})


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
