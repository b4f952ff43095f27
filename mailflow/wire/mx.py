"""An MX as it travels: the value both sides exchange -- in a get_mx answer, a route, a
batch on the broker -- and the check every field of one passes when it arrives from outside
(a plugin, or the broker).  Nothing here looks anything up: that is the network side's
(mailflow/relay/mx.py).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mailflow.config.files import parse_bool
from mailflow.config.settings import TLS_MODES


@dataclass(frozen=True)
class MX:
    """One mail exchanger and how to talk to it."""

    exchange: str
    priority: int = 0
    port: int | None = None
    bind: str | None = None
    bind_helo: str | None = None
    using_lmtp: bool = False
    auth_user: str | None = None
    auth_pass: str | None = field(default=None, repr=False)
    auth_type: str | None = None
    from_dns: bool = True  #: only DNS answers are subject to the local_mx_ok check
    #: a route's own TLS (routes.ini ``tls``): none, opportunistic, required, verify; None: tls.ini's
    tls: str | None = None


MX_KEYS = ("priority", "exchange", "port", "bind", "bind_helo", "using_lmtp", "auth_user",
            "auth_pass", "auth_type", "tls")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def mx_from_fields(data: Any, *, from_dns: bool) -> MX:
    """An MX from a mapping of its fields, each checked (ValueError names the bad one)."""
    unknown = set(data) - set(MX_KEYS) - {"from_dns"}
    if unknown:
        raise ValueError(f"unknown MX fields {sorted(unknown)}")
    auth_type = _optional_text(data, "auth_type")
    if auth_type is not None and auth_type.upper() not in ("PLAIN", "LOGIN", "CRAM-MD5"):
        raise ValueError(f"auth_type {auth_type!r} is not PLAIN, LOGIN or CRAM-MD5")
    bind = _optional_text(data, "bind")
    if bind is not None and not is_ip(bind):
        raise ValueError(f"bind {bind!r} is not an IP address")
    helo = _optional_text(data, "bind_helo")
    if helo is not None and not _HOST_TEXT.match(helo):
        raise ValueError(f"bind_helo {helo!r} is not a host name")
    tls = _optional_text(data, "tls")
    if tls is not None and tls not in TLS_MODES:
        raise ValueError(f"tls {tls!r} is not one of {', '.join(TLS_MODES)}")
    return MX(exchange=exchange_name(data.get("exchange")), priority=_priority(data.get("priority")),
              port=_port(data.get("port")), bind=bind, bind_helo=helo,
              using_lmtp=_flag(data.get("using_lmtp"), "using_lmtp"),
              auth_user=_optional_text(data, "auth_user"), auth_pass=_optional_text(data, "auth_pass"),
              auth_type=auth_type, from_dns=from_dns, tls=tls)


#: A host name, an IPv4 or IPv6 address: printable, no spaces, no brackets left.
_HOST_TEXT = re.compile(r"[A-Za-z0-9.:_\-\u0080-\U0010ffff]{1,255}\Z")


def exchange_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"exchange {value!r} is not a host name")
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not _HOST_TEXT.match(host):
        raise ValueError(f"exchange {value!r} is not a host name or address")
    return host.lower()


def _port(value: Any) -> int | None:
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"port {value!r} is not a number")
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"port {value!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return port


def _priority(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"priority {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"priority {value!r} is not a number") from None
    if not (math.isfinite(number) and number.is_integer() and 0 <= number <= 65535):
        raise ValueError(f"priority {value!r} is not a whole number from 0 to 65535")
    return int(number)


def _flag(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return parse_bool(value)
    raise ValueError(f"{name} {value!r} is not true or false")


def _optional_text(data: Any, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"{key} {value!r} is not text")
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{key} holds control characters")
    return text
