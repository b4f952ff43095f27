"""DANE for SMTP (RFC 7672): TLSA records through a validating resolver, and matching them.

mailflow does not validate DNSSEC itself: like Postfix, it asks a validating
resolver (``tls.ini [outbound] dane_resolver``) and trusts the AD bit of its
answers, so that resolver must be local or reached over a trusted path.
The answer for an MX host is one of:

* no usable DANE (insecure zone, no TLSA record): ``None``, delivery as without DANE;
* :class:`Dane` with usable records: STARTTLS is required and the certificate
  must match one (DANE-EE ``3 x x`` always; DANE-TA ``2 x x`` where Python gives
  the peer's chain, 3.13 and later);
* :class:`Dane` with none usable (all PKIX-* or unsupported): STARTTLS required,
  unauthenticated -- Postfix's "encrypt" level (RFC 7672 2.2);
* a bogus answer (the resolver's SERVFAIL) or a lookup failure: a TemporaryError
  4.7.5, never a downgrade.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailflow.errors import TemporaryError, local_reply

log = logging.getLogger(__name__)

DANE_TA, DANE_EE = 2, 3
FULL_CERT, SPKI = 0, 1
EXACT, SHA256, SHA512 = 0, 1, 2

#: Whether ssl gives the peer's whole chain (Python 3.13): DANE-TA needs it.
CHAIN_AVAILABLE = hasattr(ssl.SSLSocket, "get_unverified_chain")


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        if self.selector not in (FULL_CERT, SPKI) or self.mtype not in (EXACT, SHA256, SHA512):
            return False
        return self.usage == DANE_EE or (self.usage == DANE_TA and CHAIN_AVAILABLE)


@dataclass(frozen=True)
class Dane:
    """What DANE asks of one MX host: records to match, or TLS without authentication."""

    name: str  #: the TLSA base name: the MX host
    records: tuple[Tlsa, ...]  #: the usable ones; empty means mandatory unauthenticated TLS


_resolvers: dict[tuple[str, int], dns.resolver.Resolver] = {}
_lock = threading.Lock()


def resolver(address: tuple[str, int]) -> dns.resolver.Resolver:
    """A caching resolver that asks ``address`` with DO and reads the AD bit of its answers."""
    with _lock:
        res = _resolvers.get(address)
        if res is None:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = [address[0]]
            res.port = address[1]
            res.use_edns(0, dns.flags.DO, 1232)
            res.flags = dns.flags.RD | dns.flags.AD
            res.cache = dns.resolver.Cache()
            res.lifetime, res.timeout = 10.0, 5.0
            _resolvers[address] = res
        return res


def _secure(answer: dns.resolver.Answer) -> bool:
    return bool(answer.response.flags & dns.flags.AD)


def tlsa_for(host: str, port: int, address: tuple[str, int]) -> Dane | None:
    """DANE's requirement for ``host`` at ``port``, or None when DANE does not apply."""
    qname = f"_{port}._tcp.{host.rstrip('.')}"
    try:
        answer = resolver(address).resolve(qname, "TLSA", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None  # denial of existence; a bogus denial is a SERVFAIL, below
    except dns.resolver.NoNameservers as exc:  # SERVFAIL: bogus, or the zone is unreachable
        raise TemporaryError(local_reply("4.7.5", f"DNSSEC validation of {qname} TLSA failed "
                                         f"(bogus or unreachable): {_why(exc)}")) from None
    except dns.exception.Timeout:
        raise TemporaryError(local_reply("4.7.5", f"TLSA lookup of {qname} timed out")) from None
    if not _secure(answer) or answer.rrset is None:
        return None
    records = [Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer.rrset]
    return Dane(name=host.lower().rstrip("."), records=tuple(r for r in records if r.usable))


def mx_secure(domain: str, address: tuple[str, int]) -> bool:
    """Whether the domain's MX RRset validates: DANE applies only to MX hosts found securely
    (RFC 7672 2.2.1); an MX answer an attacker could forge could name any host."""
    try:
        answer = resolver(address).resolve(domain, "MX", raise_on_no_answer=False)
    except dns.exception.DNSException:
        return False
    return _secure(answer)


def _why(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    return "; ".join(str(e[3]) for e in errors if len(e) > 3) or "SERVFAIL"


def validates(address: tuple[str, int], name: str = ".") -> bool:
    """Whether the resolver validates: a secure (AD) answer for ``name``'s SOA (the root,
    signed in the real world; a test points it at its own signed zone)."""
    query = dns.message.make_query(name, dns.rdatatype.SOA, want_dnssec=True)
    query.flags |= dns.flags.AD
    try:
        response = dns.query.udp(query, address[0], port=address[1], timeout=5.0)
    except (dns.exception.DNSException, OSError):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AD)


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == SHA256:
        return hashlib.sha256(data).digest()
    if mtype == SHA512:
        return hashlib.sha512(data).digest()
    return data


def _selected(selector: int, der: bytes) -> bytes:
    if selector == FULL_CERT:
        return der
    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(sock: ssl.SSLSocket, dane: Dane) -> bool:
    """Whether the peer's certificate (DANE-EE) or a CA of its chain (DANE-TA) matches.

    DANE-EE binds the key itself: no name check, no expiry (RFC 7672 3.1.1).  DANE-TA
    needs the chain, and the leaf's name checked against the MX host (3.1.2); Python
    before 3.13 offers no chain, so TA records are unusable there (see :class:`Tlsa`).
    """
    leaf = sock.getpeercert(binary_form=True)
    if not leaf:
        return False
    for record in dane.records:
        if record.usage == DANE_EE and _digest(record.mtype, _selected(record.selector, leaf)) == record.data:
            return True
    ta = [r for r in dane.records if r.usage == DANE_TA]
    if ta and CHAIN_AVAILABLE:
        chain: list[bytes] = list(sock.get_unverified_chain()[1:])  # type: ignore[attr-defined]
        if any(_digest(r.mtype, _selected(r.selector, der)) == r.data for r in ta for der in chain):
            return _leaf_names(leaf, dane.name)
    return False


def _leaf_names(der: bytes, name: str) -> bool:
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    for pattern in (n.lower().rstrip(".") for n in names):
        if pattern == name or (pattern.startswith("*.") and name.partition(".")[2] == pattern[2:]):
            return True
    return False
