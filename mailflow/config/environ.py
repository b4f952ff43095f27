"""What mailflow reads from the environment, declared once and checked like a config file.

Every variable is in :data:`VARIABLES` with its type, range, default and meaning (the
reference page lists them from here).  A module that needs one at import reads it with
:func:`value`, which never raises: a malformed value reads as the default there, and the
process stops at start -- every command, every worker, ``celeryconfig`` -- with one line
per malformed variable (:func:`check_or_exit`), never a traceback and never a process that
runs half-configured.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailflow.config.settings import boolean, positive_int, positive_seconds, size, text

TRANSPORT_OPTIONS = "MAILFLOW_BROKER_TRANSPORT_OPTIONS"
LOG_FORMAT = "MAILFLOW_LOG_FORMAT"
#: The embedded broker: kombu's filesystem transport in the state directory (a host named:
#: kombu warns of a missing one).
EMBEDDED_BROKER = "filesystem://localhost//"


class EnvError(ValueError):
    """A malformed environment variable; ``str()`` names it."""


def _json_object(value: str) -> dict[str, Any]:
    try:
        found = json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(found, dict):
        raise ValueError('must be a JSON object, like {"visibility_timeout": 7200}')
    return found


def _log_format(value: str) -> str:
    fmt = value.strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"{value!r} is not a log format (text or json)")
    return fmt


def _at_least(minimum: float, parse: Callable[[str], float]) -> Callable[[str], float]:
    def read(value: str) -> float:
        found = parse(value)
        if found < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return found
    return read


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  #: the type and range, in words
    default: Any  #: the value when unset (None: worked out where it is used, as ``shown`` says)
    shown: str  #: the default, as the reference shows it
    doc: str
    parse: Callable[[str], Any] = text


VARIABLES = {v.name: v for v in (
    Variable("MAILFLOW_CONFIG", "path", None, "./config",
             "the config directory (every command's --config sets it for the processes it starts)"),
    Variable("MAILFLOW_STATE_DIR", "path", None, ".mailflow/ beside the config directory",
             "runtime state: the embedded broker, counters, caches, broker.key when the config "
             "directory is read-only"),
    Variable("MAILFLOW_BROKER_URL", "URL", None, "the embedded broker",
             "the Celery broker: redis://, rediss://, amqp:// (CELERY_BROKER_URL is read when "
             "this is unset); unset, kombu's filesystem transport in the state directory"),
    Variable(TRANSPORT_OPTIONS, "JSON object", {}, "",
             'broker transport options, e.g. {"visibility_timeout": 7200} for Redis',
             _json_object),
    Variable(LOG_FORMAT, "text or json", "text", "text", "the log line format", _log_format),
    Variable("MAILFLOW_LEASE_SECONDS", "seconds, at least 2", 300.0, "300",
             "a claim not renewed for this long is given back to the queue (its worker died)",
             _at_least(2.0, positive_seconds)),
    Variable("MAILFLOW_PARCEL_WAIT_SECONDS", "seconds above 0", None, "60, or the lease if shorter",
             "how long a batch lent to another host may wait in the broker before its lease counts",
             positive_seconds),
    Variable("MAILFLOW_BATCH_MAX", "integer >= 1", 50, "50",
             "most entries in one batch (one MX lookup, one connection)", positive_int),
    Variable("MAILFLOW_ACTIVE_BYTES_MAX", "size (k, m, g)", 256 * 1024 * 1024, "256m",
             "most message bytes claimed at once by one queue manager", size),
    Variable("MAILFLOW_PAYLOAD_MAX", "size (k, m, g)", 4 * 1024 * 1024, "4m",
             "most message bytes one task carries to a worker of another host (larger "
             "messages are delivered by the owner's workers)", size),
    Variable("MAILFLOW_WEBHOOK_STALE_SECONDS", "seconds above 0", 300.0, "300",
             "a webhook POST in flight this long is taken to have died and is sent again",
             positive_seconds),
    Variable("FLOWER_BASIC_AUTH", "user:password", None, "",
             "mailflow flower's login; required unless --unauthenticated on loopback"),
    Variable("FLOWER_ADDRESS", "address", "127.0.0.1", "127.0.0.1",
             "where deploy/flower/flowerconfig.py has Flower listen"),
    Variable("FLOWER_PORT", "integer >= 1", 5555, "5555", "Flower's port", positive_int),
    Variable("FLOWER_MAX_TASKS", "integer >= 1", 10000, "10000", "tasks Flower keeps in memory",
             positive_int),
    Variable("FLOWER_PERSISTENT", "boolean", False, "false",
             "keep Flower's task history across restarts", boolean),
    Variable("FLOWER_DB", "path", None, "flower.db in the state directory",
             "where a persistent Flower keeps its history"),
)}


def _read(var: Variable) -> Any:
    """``var``'s value; EnvError naming it when malformed."""
    raw = os.environ.get(var.name)
    if raw is None or raw.strip() == "":
        return var.default
    try:
        return var.parse(raw)
    except ValueError as exc:
        raise EnvError(f"{var.name}={raw!r}: {exc}") from None


def value(name: str) -> Any:
    """The variable's value, or its default when unset -- or malformed: a module reading it
    at import must not raise there; :func:`check_or_exit` stops the process at start."""
    var = VARIABLES[name]
    try:
        return _read(var)
    except EnvError:
        return var.default


def broker_url() -> str:
    return (os.environ.get("MAILFLOW_BROKER_URL") or os.environ.get("CELERY_BROKER_URL")
            or EMBEDDED_BROKER)


def transport_options() -> dict[str, Any]:
    """``$MAILFLOW_BROKER_TRANSPORT_OPTIONS``: a JSON object; EnvError when malformed."""
    options: dict[str, Any] = _read(VARIABLES[TRANSPORT_OPTIONS])
    return options


def log_format() -> str:
    fmt: str = _read(VARIABLES[LOG_FORMAT])
    return fmt


def problems() -> list[str]:
    """One line per malformed variable."""
    found = []
    for var in VARIABLES.values():
        try:
            _read(var)
        except EnvError as exc:
            found.append(str(exc))
    return found


def check() -> None:
    """EnvError for the first malformed variable."""
    found = problems()
    if found:
        raise EnvError(found[0])


def check_or_exit() -> None:
    found = problems()
    if found:
        for line in found:
            print(f"mailflow: {line}", file=sys.stderr, flush=True)
        raise SystemExit(2)
