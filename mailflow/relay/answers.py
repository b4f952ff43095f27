"""What a ``get_mx`` answer means: every form a plugin may give, checked field by field.

A plugin's answer is untrusted input, as is an MX list that came through the
broker: anything that is not one of those forms, or has a field of the wrong
type or out of range, is a ValueError naming it, never a TypeError deep in
delivery.
"""

from __future__ import annotations

from typing import Any

from mailflow.config.settings import parse_hostport
from mailflow.wire.mx import MX, MX_KEYS, exchange_name, mx_from_fields


def mx_from_hook(value: Any, default_port: int) -> list[MX]:
    """A ``get_mx`` answer in any form a plugin may give, as a list of MX (never DNS-checked).

    A plugin's answer is untrusted input: anything that is not one of those forms,
    or has a field of the wrong type or out of range, is a ValueError naming it
    (the entry is deferred with 4.3.5), never a TypeError deep in delivery.
    """
    if isinstance(value, list | tuple):
        out: list[MX] = []
        for item in value:
            out.extend(mx_from_hook(item, default_port))
        if not out:
            raise ValueError("get_mx answered an empty list")
        return out
    if isinstance(value, MX):
        return [mx_from_fields(value.__dict__, from_dns=False)]
    if isinstance(value, str):
        host, port = parse_hostport(value, default_port=default_port)
        return [MX(exchange=exchange_name(host), port=port, from_dns=False)]
    if isinstance(value, dict):
        data = {k: value[k] for k in MX_KEYS if k in value}
    else:
        data = {k: getattr(value, k) for k in MX_KEYS if getattr(value, k, None) is not None}
    if "exchange" not in data:
        raise ValueError(f"get_mx answer without an exchange: {value!r}")
    return [mx_from_fields(data, from_dns=False)]
