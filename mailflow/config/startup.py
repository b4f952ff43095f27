"""What every mailflow process does before it works: config, plugins, queue recovery."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from mailflow import config as configmod
from mailflow.config import plugins
from mailflow.config.files import ConfigError
from mailflow.config.settings import FILES

log = logging.getLogger(__name__)


#: The files of a config directory: one of them at least says this is one.
CONFIG_FILES = tuple(f.name for f in FILES)


def _a_config_directory(directory: Path) -> None:
    """ConfigError unless ``directory`` is one: a typo in ``--config`` ran on built-in defaults
    and refused all mail (550 5.7.1) instead of saying so."""
    if not directory.is_dir():
        raise ConfigError(directory.absolute(), None, "no such config directory (--config or "
                          "MAILFLOW_CONFIG; the repository's config/ is an example of every file)")
    if not any((directory / name).exists() for name in CONFIG_FILES):
        raise ConfigError(directory.absolute(), None, "not a config directory: none of "
                          f"{', '.join(CONFIG_FILES[:4])}… is in it")


def load_or_exit(directory: Path | str | None = None) -> configmod.Config:
    """Load config and plugins; on any error print ``FILE:LINE: what`` and exit 2."""
    try:
        _a_config_directory(Path(directory) if directory is not None else configmod.default_directory())
        cfg = configmod.load(directory)
        # the state directory, the embedded broker and a relative queue_dir follow the config
        # directory in this process and its children (mailflow/config/state.py)
        os.environ["MAILFLOW_CONFIG"] = str(cfg.directory.absolute())
        plugins.load(cfg)
    except ConfigError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return cfg
