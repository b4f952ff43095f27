"""Where to deliver: MX lookup with dnspython, and the addresses to try.

RFC 5321 §5.1: MX records in preference order, equal preferences shuffled;
no MX record means the domain itself is the MX (implicit MX); a single MX of
"." is a null MX (RFC 7505): the domain accepts no mail.  Answers are cached
for their TTL by the resolver, so a batch, and the batches after it, cost one
lookup.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import socket
import threading
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver

from mailflow.address import a_label
from mailflow.config.settings import Outbound
from mailflow.errors import PermanentError, TemporaryError, local_reply
from mailflow.wire.mx import MX, MX_KEYS, is_ip  # noqa: F401  (where they were)


@dataclass(frozen=True)
class Target:
    """One address to try, in order."""

    mx: MX
    ip: str
    port: int


_resolvers: dict[tuple[tuple[str, int], ...], dns.resolver.Resolver] = {}
_resolvers_lock = threading.Lock()


def resolver(settings: Outbound) -> dns.resolver.Resolver:
    """A caching resolver per nameserver list, shared by the process's threads."""
    key = settings.nameservers
    with _resolvers_lock:
        res = _resolvers.get(key)
        if res is None:
            if key:
                res = dns.resolver.Resolver(configure=False)
                res.nameservers = [host for host, _ in key]
                res.nameserver_ports = {host: port for host, port in key}
            else:
                res = dns.resolver.Resolver()
            res.cache = dns.resolver.Cache()
            res.lifetime = 10.0
            res.timeout = 5.0
            _resolvers[key] = res
        return res


def _ascii(domain: str) -> str:
    return a_label(domain)


def query_mx(domain: str, settings: Outbound) -> list[MX]:
    """The domain's MX hosts in the order to try them; raise on null MX, NXDOMAIN, SERVFAIL."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
        return [MX(exchange=literal)]
    try:
        answer = resolver(settings).resolve(_ascii(domain), "MX")
    except dns.resolver.NXDOMAIN:
        raise PermanentError(local_reply("5.1.2", f"domain {domain} does not exist")) from None
    except dns.resolver.NoAnswer:
        return [MX(exchange=domain)]  # implicit MX, RFC 5321 5.1
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
        raise TemporaryError(local_reply("4.4.3", f"DNS lookup of {domain} MX failed: "
                                         f"{type(exc).__name__}")) from None
    records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
    if any(exchange in ("", ".") for _, exchange in records):
        raise PermanentError(local_reply("5.1.10", f"null MX: {domain} accepts no mail"))
    random.shuffle(records)  # equal preferences stay shuffled by the stable sort below
    records.sort(key=lambda r: r[0])
    return [MX(exchange=exchange.lower(), priority=pref) for pref, exchange in records]


def resolve_host(host: str, settings: Outbound) -> tuple[list[str], bool]:
    """Addresses of an MX host (AAAA first with ipv6_enabled) and whether a lookup failed."""
    if is_ip(host):
        return [host], False
    order = ("AAAA", "A") if settings.ipv6_enabled else ("A", "AAAA")
    addresses: list[str] = []
    failed = False
    for rdtype in order:
        try:
            addresses += [r.to_text() for r in resolver(settings).resolve(_ascii(host), rdtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout):
            failed = True
    return addresses, failed


@functools.lru_cache(maxsize=1)
def own_addresses() -> frozenset[str]:
    """This host's addresses, as well as the resolver can tell (looked up once per process)."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    return frozenset(found)


def is_local(ip: str, own: frozenset[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return (addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_unspecified
            or ip in own)


def targets(mxs: list[MX], settings: Outbound) -> list[Target]:
    """Every address to try, in MX order; local addresses of DNS MX hosts dropped unless allowed.

    Raises TemporaryError when no address is left and a lookup failed,
    PermanentError when no MX host has an address (or all are local: a loop).
    """
    result: list[Target] = []
    any_failed = skipped_local = False
    own = own_addresses() if not settings.local_mx_ok else frozenset()
    for mx in mxs:
        addresses, failed = resolve_host(mx.exchange, settings)
        any_failed |= failed
        for ip in addresses:
            if mx.from_dns and not settings.local_mx_ok and is_local(ip, own):
                skipped_local = True
                continue
            result.append(Target(mx=mx, ip=ip, port=mx.port or settings.mx_port))
    if result:
        return result
    if any_failed:
        raise TemporaryError(local_reply("4.4.3", "DNS lookup of the MX hosts' addresses failed"))
    if skipped_local:
        raise PermanentError(local_reply("5.4.6", "MX hosts resolve to local addresses (mail loop; "
                                         "see local_mx_ok)"))
    raise PermanentError(local_reply("5.1.2", "no address for any MX host"))
