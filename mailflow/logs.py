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
from dataclasses import dataclass
from typing import Any

from mailflow.config import environ

log = logging.getLogger("mailflow.events")

#: Fields whose values are always quoted in text mode (they are free text).
_QUOTED = {"response", "reason", "error"}


@dataclass(frozen=True)
class Event:
    """One kind of line: its keyword, when it is written, and its fields in order."""

    kind: str
    doc: str
    fields: tuple[tuple[str, str], ...]


_ATTEMPT = (
    ("id", "the queue entry's id (one per destination domain of a message)"),
    ("domain", "the recipient domain"),
    ("host", "the next hop's name (- when none was reached)"),
    ("ip", "its address"),
    ("port", "its port (the last one tried, when none answered)"),
    ("mode", "SMTP or LMTP"),
    ("tls", "Y when the session was encrypted"),
    ("tlslevel", "none, opportunistic, verified, mta-sts or dane"),
    ("auth", "Y when mailflow authenticated to the next hop"),
    ("response", "the first reply of the attempt, quoted"),
    ("delay", "seconds since the message was queued"),
    ("fails", "temporary failures before this attempt"),
    ("rcpts", "recipients delivered/deferred/failed"),
    ("via", "the worker node of another host that made the attempt, when one did"),
    ("source", "the egress source (egress.ini) the connection left from, when one did"),
    ("class", "the reply's class (mailflow classify), on deferred and failed lines"),
    ("tenant", "the message's tenant, when it has one (tenants.ini, its API key, X-Tenant)"),
    ("campaign", "its campaign, when it has one (X-Campaign, the API's campaign)"),
)

#: Every line :func:`event` writes (a test holds each call to its kind's fields).
EVENTS = {e.kind: e for e in (
    Event("queued", "a message was accepted and is on disk, fsync'd (written before the 250)", (
        ("id", "the transaction's id"),
        ("from", "the envelope sender"),
        ("rcpts", "the envelope recipients, comma separated"),
        ("size", "bytes"),
        ("client", "the client's address, or local for the Python API"),
        ("auth", "the AUTH user name, - when none"),
        ("tenant", "the message's tenant, when it has one"),
        ("campaign", "its campaign, when it has one"))),
    Event("delivered", "an attempt after which at least one recipient was delivered", _ATTEMPT),
    Event("deferred", "an attempt that failed temporarily for its recipients: retried later",
          _ATTEMPT),
    Event("failed", "an attempt that failed permanently for its recipients: a bounce follows",
          _ATTEMPT),
    Event("bounced", "a bounce (DSN) was queued to the sender", (
        ("id", "the queue entry that failed"),
        ("to", "the bounce's recipient, the original sender"),
        ("status", "the enhanced status code"),
        ("reason", "why, quoted"),
        ("bounce_id", "the bounce's own queue id"))),
    Event("delayed", "a delay notice (DSN, Action: delayed) was queued to the sender, once per "
          "entry, after outbound.ini delay_warning", (
              ("id", "the queue entry still waiting"),
              ("to", "the notice's recipient, the original sender"),
              ("waited", "seconds since the message was queued"),
              ("notice_id", "the notice's own queue id"))),
    Event("notified", "a success notice (DSN) was queued to the sender: recipients that asked "
          "(NOTIFY=SUCCESS) were delivered to a next hop that offers no DSN", (
              ("id", "the queue entry delivered"),
              ("to", "the notice's recipient, the original sender"),
              ("action", "relayed, or delivered for LMTP"),
              ("rcpts", "the recipients it speaks of, comma separated"),
              ("notice_id", "the notice's own queue id"))),
    Event("dropped", "a queue entry was removed without delivery or bounce", (
        ("id", "the queue entry"),
        ("reason", "a null sender, a hook's answer, the operator, or no bounce could be made"),)),
    Event("refused", "a recipient was refused at the door", (
        ("rcpt", "the recipient (escaped)"),
        ("client", "the client's address, or local"),
        ("reason", "suppressed"),
        ("since", "when the address was suppressed (Unix time)"))),
    Event("complained", "a feedback-loop complaint (ARF) about a message was taken: its "
          "recipient is suppressed", (
              ("id", "the original's entry (VERP) or queue id"),
              ("rcpt", "the complainant"),
              ("type", "the report's Feedback-Type: abuse, fraud, other …"),
              ("reporter", "who sent the report (Reporting-MTA or User-Agent)"),
              ("tenant", "the original's tenant, when it had one"),
              ("campaign", "its campaign, when it had one"))),
    Event("returned", "a bounce (DSN) sent back after delivery was taken for one recipient", (
        ("id", "the original's entry (VERP) or queue id"),
        ("rcpt", "the recipient that failed"),
        ("status", "the DSN's status"),
        ("response", "the reply it quotes (Diagnostic-Code), quoted"),
        ("class", "the reply's class"),
        ("suppressed", "Y when the recipient was put on the suppression list"),
        ("tenant", "the original's tenant, when it had one"),
        ("campaign", "its campaign, when it had one"))),
    Event("unmatched", "a report sent back named no message mailflow knows (nothing done)", (
        ("report", "complaint or bounce"),
        ("message_id", "the Message-ID it quotes, - when none"),
        ("reporter", "who sent it"))),
)}


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
