"""Import the modules listed in ``config/plugins``, so their hook receivers connect.

Every mailflow process (smtpd, every worker) imports them at start; a module
that fails to import stops the process with the file and line that named it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from mailflow.config.files import ConfigError, read_lines
from mailflow.config.loader import Config

log = logging.getLogger(__name__)


def load(cfg: Config) -> list[str]:
    """Import each plugin module once; raise ConfigError naming the bad line."""
    path = cfg.directory / "plugins"
    lines = dict((name, lineno) for lineno, name in read_lines(path))
    config_dir = str(cfg.directory.absolute())
    if config_dir not in sys.path:
        # plugins may live next to the config files, as Haraka's do
        sys.path.insert(0, config_dir)
    loaded = []
    for name in cfg.plugins:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: one line, never a traceback
            raise ConfigError(Path(path), lines.get(name),
                              f"cannot import plugin {name!r}: {type(exc).__name__}: {exc}") from exc
        loaded.append(name)
        log.debug("loaded plugin %s", name)  # every CLI call loads them: not worth a line each
    return loaded
