"""Log lines operators and log shippers read.

:func:`event` writes ``<kind> key=value ...`` in text mode; with
``--log-format json`` (or ``MAILFLOW_LOG_FORMAT=json``) the same fields come
out as one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from mailflow.config import environ

log = logging.getLogger("mailflow.events")

#: Fields whose values are always quoted in text mode (they are free text).
_QUOTED = {"response", "reason", "error"}


def _text_value(key: str, value: Any) -> str:
    text = "-" if value is None else str(value)
    if key in _QUOTED or not text or any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return text


def format_event(kind: str, fields: dict[str, Any]) -> str:
    return " ".join([kind] + [f"{k}={_text_value(k, v)}" for k, v in fields.items()])


def event(kind: str, **fields: Any) -> None:
    """Log one operator-facing event line."""
    log.info(format_event(kind, fields), extra={"mf_event": kind, "mf_fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; mailflow events carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        kind = getattr(record, "mf_event", None)
        if kind:
            obj["event"] = kind
            obj.update(getattr(record, "mf_fields", {}))
        else:
            obj["message"] = record.getMessage()
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def log_format() -> str:
    """The configured format; an unknown one reads as text here (``environ.check`` refuses it)."""
    fmt = os.environ.get("MAILFLOW_LOG_FORMAT", "text").lower()
    return fmt if fmt in ("text", "json") else "text"


def format_handlers(logger: logging.Logger) -> None:
    """Give ``logger``'s handlers (Celery's own, in a worker) the configured format.

    Text keeps Celery's format; JSON replaces it, so that every line a worker
    writes -- delivery records, task results, errors -- is one JSON object.
    """
    if log_format() == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


def setup(fmt: str | None = None, level: int = logging.INFO) -> None:
    """Configure the root logger for a mailflow command (EnvError for a bad MAILFLOW_LOG_FORMAT)."""
    fmt = (fmt or environ.log_format()).lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    os.environ["MAILFLOW_LOG_FORMAT"] = fmt  # child processes (workers) follow
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs four INFO lines per connection (peer, AUTH mechanisms...); mailflow's
    # own event line per message says what an operator needs, at a fraction of the cost
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING))
