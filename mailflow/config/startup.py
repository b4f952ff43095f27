"""What every mailflow process does before it works: config, plugins, queue recovery."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mailflow import config as configmod
from mailflow.config import plugins
from mailflow.config.files import ConfigError

log = logging.getLogger(__name__)


def load_or_exit(directory: Path | str | None = None) -> configmod.Config:
    """Load config and plugins; on any error print ``FILE:LINE: what`` and exit 2."""
    try:
        cfg = configmod.load(directory)
        plugins.load(cfg)
    except ConfigError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return cfg
