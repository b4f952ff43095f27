"""Envelope addresses (RFC 5321 §4.1.2 ``Mailbox``), strictly parsed.

The parser is strict on purpose: an envelope address decides where mail goes,
so the tricks that once opened relays (source routes, ``%`` hacks taken as
routing, a quoted ``@`` taken as the domain separator) must never be read as
anything but literal local-part text.  The domain is always what follows the
*last* ``@`` outside quotes.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import idna

# RFC 5321 §4.1.2: atext, dot-string, quoted-string.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")

#: RFC 5321 §4.5.3.1.1 / 4.5.3.1.2: 64 octets of local part, 255 of domain.
MAX_LOCAL = 64
MAX_DOMAIN = 255


class AddressError(ValueError):
    """An address that is not a valid RFC 5321 mailbox."""


@dataclass(frozen=True)
class Address:
    """One envelope address.  ``user``/``host`` are empty for the null sender."""

    user: str
    host: str

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}" if self.host else ""

    @property
    def is_null(self) -> bool:
        return not self.host

    def __str__(self) -> str:
        return f"<{self.address}>"

    def to_json(self) -> dict[str, str]:
        return {"user": self.user, "host": self.host}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Address:
        return cls(user=str(data.get("user", "")), host=str(data.get("host", "")))

    @classmethod
    def null(cls) -> Address:
        return cls("", "")


def a_label(domain: str) -> str:
    """The domain's ASCII form as DNS knows it: IDNA 2008 A-labels (``xn--…``), with UTS #46's
    mapping for what users type (upper case, full-width dots) -- not Python's ``idna`` codec,
    which is IDNA 2003 (``faß.de`` would become another domain, ``fass.de``).  UnicodeError
    when it is not a valid internationalised name."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UnicodeError(str(exc)) from None


def _check_domain(domain: str) -> str:
    """Validate a domain or address literal and return it lower-cased."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
        return domain.lower()
    try:
        ascii_domain = a_label(domain)
    except UnicodeError as exc:
        raise AddressError(f"invalid domain {domain!r}") from exc
    if len(ascii_domain) > MAX_DOMAIN or not ascii_domain:
        raise AddressError(f"invalid domain {domain!r}")
    labels = ascii_domain.rstrip(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise AddressError(f"invalid domain {domain!r}")
    return domain.lower().rstrip(".")


def parse_address(text: str, *, allow_null: bool = False) -> Address:
    """Parse ``user@host`` or ``<user@host>``; ``<>``/``""`` is the null sender.

    Raises :class:`AddressError` for anything that is not a plain mailbox,
    including RFC 821 source routes (``<@a,@b:user@c>``), which RFC 5321 §4.1.2
    says must be accepted-and-ignored at best; we refuse them so that no one
    mistakes them for a routing request.
    """
    raw = text.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip()
    elif "<" in raw or ">" in raw:
        raise AddressError(f"malformed address {text!r}")
    if raw == "":
        if allow_null:
            return Address.null()
        raise AddressError("empty address")
    if raw.startswith("@"):
        raise AddressError(f"source routes are not accepted: {text!r}")
    if any(ch in raw for ch in "\r\n\x00"):
        raise AddressError("control characters in address")
    local, sep, domain = raw.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"malformed address {text!r}")
    if not (_DOT_STRING.match(local) or _QUOTED.match(local)):
        raise AddressError(f"malformed local part in {text!r}")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(f"local part too long in {text!r}")
    try:
        host = _check_domain(domain)
    except ValueError as exc:
        raise AddressError(f"malformed domain in {text!r}") from exc
    return Address(user=local, host=host)
