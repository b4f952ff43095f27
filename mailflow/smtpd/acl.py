"""Who may relay: SMTP AUTH, ``relay_acl_allow``, or a ``connect`` receiver.

mailflow is outbound only: every recipient domain is remote, so a client
that is not relaying may queue nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_allowed(remote_ip: str, acl: Iterable[Network]) -> bool:
    ip = client_ip(remote_ip)
    return ip is not None and any(ip.version == net.version and ip in net for net in acl)


@lru_cache(maxsize=4096)
def client_ip(remote_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as the ACL compares it (an IPv4-mapped one as IPv4), None when it
    is none.  Parsed once per client, not once per connection: most connections come from
    the few hosts that send."""
    try:
        ip = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
