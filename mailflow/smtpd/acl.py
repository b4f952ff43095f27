"""Who may relay: SMTP AUTH, ``relay_acl_allow``, or a ``connect`` receiver.

mailflow is outbound only: every recipient domain is remote, so a client
that is not relaying may queue nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_allowed(remote_ip: str, acl: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in acl)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
