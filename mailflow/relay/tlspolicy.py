"""Outbound TLS policy from ``tls.ini`` [outbound].

``no_tls_hosts``: never STARTTLS with these IPs, CIDRs or domains.
``force_tls_hosts``: these IPs, MX names or domains must have TLS verified
against ``ca`` (chain and MX host name), else the attempt is deferred.
Otherwise STARTTLS is opportunistic (``enable_tls``) and certificates are
checked only when ``rejectUnauthorized`` is set.
"""

from __future__ import annotations

import ipaddress
import ssl
from functools import lru_cache

from mailflow.config.settings import Tls
from mailflow.util import tls


def _matches(patterns: tuple[str, ...], ip: str, names: tuple[str, ...]) -> bool:
    addr = ipaddress.ip_address(ip)
    for pattern in patterns:
        try:
            if addr in ipaddress.ip_network(pattern, strict=False):
                return True
            continue
        except ValueError:
            pass
        p = pattern.lower().lstrip("*.")
        if any(n == p or n.endswith("." + p) for n in names if n):
            return True
    return False


def no_tls(policy: Tls, ip: str, mx_name: str, domain: str) -> bool:
    return _matches(policy.no_tls_hosts, ip, (mx_name.lower(), domain.lower()))


def forced(policy: Tls, ip: str, mx_name: str, domain: str) -> bool:
    return _matches(policy.force_tls_hosts, ip, (mx_name.lower(), domain.lower()))


@lru_cache(maxsize=8)
def client_context(policy: Tls, verify: bool) -> ssl.SSLContext:
    """The outbound context for a policy, built once (verifying ones check chain and name)."""
    return tls.context(policy, server=False, verify=verify)
