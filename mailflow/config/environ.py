"""What mailflow reads from the environment, checked like a config file.

A malformed variable stops a process with one line naming it -- never a
traceback, and never a process that starts half-configured.  Every command
checks at start (:func:`check_or_exit`); ``celeryconfig`` reads the same values.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TRANSPORT_OPTIONS = "MAILFLOW_BROKER_TRANSPORT_OPTIONS"
LOG_FORMAT = "MAILFLOW_LOG_FORMAT"


class EnvError(ValueError):
    """A malformed environment variable; ``str()`` names it."""


def broker_url() -> str:
    return (os.environ.get("MAILFLOW_BROKER_URL") or os.environ.get("CELERY_BROKER_URL")
            or "filesystem://localhost//")  # a host named: kombu warns of a missing one


def transport_options() -> dict[str, Any]:
    """``$MAILFLOW_BROKER_TRANSPORT_OPTIONS``: a JSON object, e.g. ``{"visibility_timeout": 7200}``."""
    text = os.environ.get(TRANSPORT_OPTIONS)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise EnvError(f"{TRANSPORT_OPTIONS}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise EnvError(f"{TRANSPORT_OPTIONS}: must be a JSON object, like "
                       '{"visibility_timeout": 7200}')
    return value


def log_format() -> str:
    fmt = os.environ.get(LOG_FORMAT, "text").lower()
    if fmt not in ("text", "json"):
        raise EnvError(f"{LOG_FORMAT}: {fmt!r} is not a log format (text or json)")
    return fmt


def check() -> None:
    """Every variable mailflow reads; EnvError for the first malformed one."""
    transport_options()
    log_format()


def check_or_exit() -> None:
    try:
        check()
    except EnvError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
