"""Signing a message once, when it is queued, with dkimpy.

The signing domain is the From header's domain (DMARC alignment), else
``fallback_domain``.  Every way in -- SMTP, ``send_email``, ``mailflow send`` and
``sendmail``, bounces -- passes through the queue's one door
(mailflow/queue/submission.py), which asks :meth:`Signer.signature` for the
header lines to put on top; Haraka signs only SMTP mail (its #883).

A domain's key files are read again when they change (a stat per message), so
a new key is used without a restart, and a key that became unreadable is a
:class:`~mailflow.dkim.keys.KeyProblem` for the caller to log and count: the
mail is queued unsigned rather than refused or held.
"""

from __future__ import annotations

import logging
import os
import threading
from email.utils import getaddresses
from pathlib import Path

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from mailflow import message as msg
from mailflow.config.settings import Dkim
from mailflow.dkim.keys import FILES, Key, KeyProblem, domain_keys

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int] | None, ...]

ALWAYS_IF_PRESENT = ("tls-report-domain", "tls-report-submitter")
NO_FILES: Stamp = (None,) * sum(len(names) for names in FILES.values())


class Signer:
    """The keys under one ``dkim/`` directory and ``dkim.ini``'s settings."""

    def __init__(self, keys_dir: Path, settings: Dkim):
        self.keys_dir = keys_dir
        self.settings = settings
        self._cache: dict[str, tuple[Stamp, list[Key]]] = {}
        self._lock = threading.Lock()
        #: the keys directory's (mtime, links) when last listed, and whether it held anything
        self._listed: tuple[tuple[int, int], bool] | None = None

    def keys(self, domain: str) -> list[Key]:
        """The domain's keys as the files are now; KeyProblem when one cannot be used."""
        stamp = self._stamp(domain)
        with self._lock:
            cached = self._cache.get(domain)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = domain_keys(self.keys_dir, domain) if any(stamp) else []
        with self._lock:
            self._cache[domain] = (stamp, found)
        return found

    def _stamp(self, domain: str) -> Stamp:
        """(mtime, size) of each key file; a domain without a directory costs one stat."""
        if not os.path.isdir(self.keys_dir / domain):
            return NO_FILES
        out: list[tuple[int, int] | None] = []
        for names in FILES.values():
            for name in names:
                try:
                    st = os.stat(self.keys_dir / domain / name)
                    out.append((st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append(None)
        return tuple(out)

    def any_keys(self) -> bool:
        """Whether the keys directory holds anything: a stat of it per call, a listing only
        when it changed -- a domain's directory made there (``mailflow dkim keygen``) changes
        both its mtime and its link count.  Without, no message is signed and none is read."""
        try:
            st = os.stat(self.keys_dir)
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_nlink)
        listed = self._listed
        if listed is None or listed[0] != stamp:
            with os.scandir(self.keys_dir) as entries:
                listed = (stamp, any(True for _ in entries))
            self._listed = listed
        return listed[1]

    def signing_keys(self, message: bytes) -> list[Key]:
        """The keys this message is to be signed with: its From domain's, else the fallback's."""
        if not self.any_keys():  # most relays that sign nothing: not even the From is read
            return []
        domain = from_domain(message)
        keys = self.keys(domain) if domain else []
        if not keys and self.settings.fallback_domain:
            keys = self.keys(self.settings.fallback_domain)
        if not keys:
            log.debug("no DKIM key for %s: not signed", domain or "a message without a From domain")
        return keys

    def signature(self, message: bytes) -> bytes:
        """The DKIM-Signature header lines for ``message`` (CRLF, not dot-stuffed), or b''.

        Raises KeyProblem when a key cannot be used now.
        """
        keys = self.signing_keys(message)
        if not keys:
            return b""
        present = existing_signatures(message)
        headers = self.headers_for(message)
        canon = tuple(c.encode() for c in self.settings.canonicalization)
        out = b""
        for key in keys:
            if (key.domain, key.selector.lower()) in present:
                continue  # signed on an earlier pass (a message re-submitted, a relay loop)
            try:
                out += dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private,
                                 signature_algorithm=key.algorithm, canonicalize=canon,
                                 include_headers=headers)
            except dkim.DKIMException as exc:
                raise KeyProblem(key.path, f"signing failed: {exc}") from None
        return out

    def headers_for(self, message: bytes) -> list[bytes]:
        """``headers_to_sign`` that the message has (From always: RFC 6376 5.4), and a TLS
        report's own two headers, which its receiver checks are signed (RFC 8460 5.3)."""
        names = msg.header_names(message)
        wanted = [h.lower() for h in self.settings.headers_to_sign] + list(ALWAYS_IF_PRESENT)
        return [h.encode() for h in dict.fromkeys(wanted) if h in names or h == "from"]


def from_domain(message: bytes) -> str:
    """The domain of the From header's (first) address, lower case; '' when there is none."""
    value = msg.header_value(message, "from")
    if not value:
        return ""
    addresses = [addr for _, addr in getaddresses([value]) if "@" in addr]
    if not addresses:
        return ""
    return addresses[0].rpartition("@")[2].strip().strip(">").lower().rstrip(".")


def existing_signatures(message: bytes) -> set[tuple[str, str]]:
    """(d=, s=) of every DKIM-Signature already in the header section."""
    found = set()
    for value in _all_values(message, b"dkim-signature"):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        domain, selector = tags.get(b"d"), tags.get(b"s")
        if domain and selector:
            found.add((domain.decode("ascii", "replace").lower(),
                       selector.decode("ascii", "replace").lower()))
    return found


def _all_values(message: bytes, wanted: bytes) -> list[bytes]:
    """The unfolded values of every header named ``wanted`` (lower case)."""
    values: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in msg.header_block(message).split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.strip())
            continue
        name, sep, value = line.partition(b":")
        current = None
        if sep and name.strip().lower() == wanted:
            current = [value.strip()]
            values.append(current)
    return [b" ".join(parts) for parts in values]
