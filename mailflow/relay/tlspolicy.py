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


def _matches(patterns: tuple[str, ...], ip: str | None, names: tuple[str, ...]) -> bool:
    """Whether a pattern is a network holding ``ip`` (None: networks are passed over) or a
    domain that is one of ``names`` or a parent of one."""
    addr = ipaddress.ip_address(ip) if ip is not None else None
    for pattern in patterns:
        try:
            if addr is not None and addr in ipaddress.ip_network(pattern, strict=False):
                return True
            if addr is None:
                ipaddress.ip_network(pattern, strict=False)
            continue
        except ValueError:
            pass
        p = pattern.lower().lstrip("*.")
        if any(n == p or n.endswith("." + p) for n in names if n):
            return True
    return False


def names_domain(policy: Tls, domain: str) -> bool:
    """Whether ``no_tls_hosts`` or ``force_tls_hosts`` name the recipient domain itself: then
    its mail needs what other domains on the same MX hosts may not (mailflow/pipeline/lookup.py)."""
    return _matches((*policy.no_tls_hosts, *policy.force_tls_hosts), None, (domain.lower(),))


def no_tls(policy: Tls, ip: str, mx_name: str, domain: str) -> bool:
    return _matches(policy.no_tls_hosts, ip, (mx_name.lower(), domain.lower()))


def forced(policy: Tls, ip: str, mx_name: str, domain: str) -> bool:
    return _matches(policy.force_tls_hosts, ip, (mx_name.lower(), domain.lower()))


@lru_cache(maxsize=8)
def client_context(policy: Tls, verify: bool) -> ssl.SSLContext:
    """The outbound context for a policy, built once (verifying ones check chain and name)."""
    return tls.context(policy, server=False, verify=verify)
