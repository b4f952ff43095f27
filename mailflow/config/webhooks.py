"""``webhooks.ini``: where delivery events are POSTed.

One section per endpoint, any name: ``url``, ``events`` (a comma list of
``queued delivered deferred bounced dropped``), ``secret`` (``whsec_<base64>``, the
Standard Webhooks form; the request is signed with it), ``timeout`` (s) and ``batch``
(events per POST, default 1).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mailflow.config.files import ConfigError, Value, parse_list, read_ini, unknown
from mailflow.config.settings import WEBHOOK_KEYS, positive_int

EVENTS = ("queued", "delivered", "deferred", "bounced", "dropped", "complained")
KEYS = tuple(k.name for k in WEBHOOK_KEYS)
#: The most events one POST may carry with ``batch``.
BATCH_MOST = 1000


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    events: tuple[str, ...]
    secret: bytes | None  #: the HMAC key: the base64 after ``whsec_``
    timeout: float = 10.0
    #: events per POST: 1 is one event per request (Standard Webhooks); more sends a JSON
    #: array of up to that many, for receivers that take a high volume
    batch: int = 1


def _url(path: Path, raw: Value) -> str:
    parts = urlsplit(raw.text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, raw.line, f"url {raw.text!r} is not an http:// or https:// URL")
    return raw.text


def _events(path: Path, raw: Value) -> tuple[str, ...]:
    events = tuple(e.lower() for e in parse_list(raw.text))
    bad = [e for e in events if e not in EVENTS]
    if bad or not events:
        raise ConfigError(path, raw.line, f"events must be from {', '.join(EVENTS)}"
                          + (f" (not {', '.join(bad)})" if bad else ""))
    return events


def _secret(path: Path, raw: Value) -> bytes:
    text = raw.text
    if not text.startswith("whsec_"):
        raise ConfigError(path, raw.line, "secret must be whsec_ followed by base64")
    try:
        key = base64.b64decode(text[len("whsec_"):], validate=True)
    except binascii.Error:
        key = b""
    if len(key) < 16:
        raise ConfigError(path, raw.line, "secret must be whsec_ followed by the base64 of at least "
                          "16 random bytes")
    return key


def _timeout(path: Path, raw: Value) -> float:
    try:
        value = float(raw.text.rstrip("s"))
    except ValueError:
        value = -1
    if not 0 < value <= 60:
        raise ConfigError(path, raw.line, "timeout must be a number of seconds, above 0, at most 60")
    return value


def _batch(path: Path, raw: Value) -> int:
    try:
        value = positive_int(raw.text)
    except ValueError:
        value = 0
    if not 0 < value <= BATCH_MOST:
        raise ConfigError(path, raw.line, f"batch must be a whole number from 1 to {BATCH_MOST}")
    return value


def load(path: Path) -> tuple[Endpoint, ...]:
    ini = read_ini(path)
    out = []
    for name, keys in ini.sections.items():
        if name == "main" and not keys:
            continue
        for key, raw in keys.items():
            if key not in KEYS:
                raise ConfigError(path, raw.line, unknown("key", key, KEYS))
        if "url" not in keys or "events" not in keys:
            first = min((v.line for v in keys.values()), default=None)
            raise ConfigError(path, first, f"[{name}] needs url and events")
        out.append(Endpoint(name=name, url=_url(path, keys["url"]), events=_events(path, keys["events"]),
                            secret=_secret(path, keys["secret"]) if "secret" in keys else None,
                            timeout=_timeout(path, keys["timeout"]) if "timeout" in keys else 10.0,
                            batch=_batch(path, keys["batch"]) if "batch" in keys else 1))
    return tuple(out)
