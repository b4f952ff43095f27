"""Where runtime state other than the queue lives: ``.mailflow/`` beside the config directory.

The embedded broker's files, counters, caches and locks go under ``$MAILFLOW_STATE_DIR``,
else ``.mailflow/`` in the config directory's parent (the config directory is
``$MAILFLOW_CONFIG``, ``--config``, or ``./config``); a relative ``queue_dir`` is relative to
that same parent.  So every command given the same config directory reaches the same
instance from whatever working directory -- ``celery -A mailflow call``, ``mailflow
queue``, Flower -- and two instances with two config directories never meet.
"""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The config directory this process runs with (``--config`` sets the variable)."""
    return Path(os.environ.get("MAILFLOW_CONFIG") or "config").absolute()


def home() -> Path:
    """What relative paths of an instance are relative to: the config directory's parent."""
    return config_dir().parent


def state_dir() -> Path:
    path = Path(os.environ.get("MAILFLOW_STATE_DIR") or home() / ".mailflow").absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path
