"""DSN parameters (RFC 3461): what a client asks to be told of its message, kept with it.

MAIL takes ``RET=FULL|HDRS`` (a failure notice carries the whole message, or its headers)
and ``ENVID=`` (the client's own id for the transaction, quoted back in every notice);
RCPT takes ``NOTIFY=NEVER`` or a comma list of ``SUCCESS``, ``FAILURE``, ``DELAY``, and
``ORCPT=<type>;<address>`` (the recipient as the client first knew it).  ENVID and ORCPT
are *xtext*: printable ASCII with ``+XX`` for ``+``, ``=`` and the rest.  They are read and
checked at the listener, kept in the queue entry's notes (``dsn``), passed on to a next hop
that offers DSN, and honoured in the notices mailflow writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: the queue entry note that holds them
DSN_NOTE = "dsn"
MAIL_KEYS = ("RET", "ENVID")
RCPT_KEYS = ("NOTIFY", "ORCPT")
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
#: RFC 3461 4.4 and 4.2: ENVID at most 100 characters, ORCPT's address at most 500
ENVID_MAX = 100
ORCPT_MAX = 500
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


class ParamError(ValueError):
    """A parameter that is malformed: its reply (``501 5.5.4 …``)."""


def xtext_decode(text: str) -> str:
    if not _XTEXT.fullmatch(text):
        raise ParamError("501 5.5.4 Malformed xtext (RFC 3461 4)")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


@dataclass(frozen=True)
class Recipient:
    notify: tuple[str, ...] = ()  #: () when not given
    orcpt: str = ""  #: ``rfc822;user@example.com``, decoded, as given

    def wants(self, what: str) -> bool:
        """Whether a notice of ``what`` (SUCCESS, FAILURE, DELAY) goes to the sender: as asked,
        or -- NOTIFY not given -- failures and delays, as RFC 3461 4.1 says to assume."""
        return what in self.notify if self.notify else what in ("FAILURE", "DELAY")


@dataclass(frozen=True)
class Dsn:
    ret: str = ""  #: FULL, HDRS or '' (not given)
    envid: str = ""
    rcpts: dict[str, Recipient] = field(default_factory=dict)

    def rcpt(self, address: str) -> Recipient:
        return self.rcpts.get(address) or self.rcpts.get(address.lower()) or Recipient()

    def to_note(self) -> dict[str, Any]:
        return {"ret": self.ret, "envid": self.envid,
                "rcpt": {a: {"notify": list(r.notify), "orcpt": r.orcpt} for a, r in self.rcpts.items()}}

    @classmethod
    def from_notes(cls, notes: dict[str, Any]) -> Dsn | None:
        raw = notes.get(DSN_NOTE)
        if not isinstance(raw, dict):
            return None
        rcpts = {str(a): Recipient(tuple(str(n) for n in r.get("notify") or ()), str(r.get("orcpt") or ""))
                 for a, r in dict(raw.get("rcpt") or {}).items() if isinstance(r, dict)}
        return cls(str(raw.get("ret") or ""), str(raw.get("envid") or ""), rcpts)

    def checked(self, rcpts: list[str]) -> Dsn:
        """The same, held to what a client may give (ParamError otherwise), for ``rcpts`` only:
        for parameters that came from elsewhere than a client (another host's payload)."""
        ret, envid = mail({**({"RET": self.ret} if self.ret else {}),
                           **({"ENVID": xtext_encode(self.envid)} if self.envid else {})})
        kept = {}
        for address, asked in self.rcpts.items():
            if address in rcpts:
                kind, _, addr = asked.orcpt.partition(";")
                kept[address] = rcpt({**({"NOTIFY": ",".join(asked.notify)} if asked.notify else {}),
                                      **({"ORCPT": f"{kind};{xtext_encode(addr)}"} if asked.orcpt else {})})
        return Dsn(ret, envid, kept)

    def mail_options(self) -> list[str]:
        """For a next hop that offers DSN."""
        out = [f"RET={self.ret}"] if self.ret else []
        return out + ([f"ENVID={xtext_encode(self.envid)}"] if self.envid else [])

    def rcpt_options(self, address: str) -> list[str]:
        r = self.rcpt(address)
        out = [f"NOTIFY={','.join(r.notify)}"] if r.notify else []
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            out.append(f"ORCPT={kind};{xtext_encode(addr)}")
        return out


def split(params: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """The parameters named ``keys`` (upper-cased names, values as given) and the others;
    ParamError for one given twice."""
    found: dict[str, str] = {}
    rest = []
    for param in params:
        name, _, value = param.partition("=")
        if name.upper() in keys:
            if name.upper() in found:
                raise ParamError(f"501 5.5.4 {name.upper()} given twice")
            found[name.upper()] = value
        else:
            rest.append(param)
    return found, rest


def mail(found: dict[str, str]) -> tuple[str, str]:
    """(RET, ENVID) of a MAIL command's parameters, checked."""
    ret = found.get("RET", "").upper()
    if "RET" in found and ret not in ("FULL", "HDRS"):
        raise ParamError("501 5.5.4 RET must be FULL or HDRS")
    envid = xtext_decode(found["ENVID"]) if "ENVID" in found else ""
    if "ENVID" in found and not 0 < len(envid) <= ENVID_MAX:
        raise ParamError(f"501 5.5.4 ENVID must be 1 to {ENVID_MAX} characters")
    return ret, envid


def rcpt(found: dict[str, str]) -> Recipient:
    """A RCPT command's NOTIFY and ORCPT, checked."""
    notify: tuple[str, ...] = ()
    if "NOTIFY" in found:
        words = tuple(w.strip().upper() for w in found["NOTIFY"].split(","))
        if words != ("NEVER",) and (not words or any(w not in NOTIFY_WORDS for w in words)
                                    or len(set(words)) != len(words)):
            raise ParamError("501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY "
                             "comma separated")
        notify = words
    orcpt = ""
    if "ORCPT" in found:
        kind, sep, addr = found["ORCPT"].partition(";")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", kind):
            raise ParamError("501 5.5.4 ORCPT must be addr-type;address (rfc822;user@example.com)")
        decoded = xtext_decode(addr)
        if not 0 < len(decoded) <= ORCPT_MAX:
            raise ParamError(f"501 5.5.4 ORCPT's address must be 1 to {ORCPT_MAX} characters")
        orcpt = f"{kind};{decoded}"
    return Recipient(notify, orcpt)


def from_api(given: Any, rcpts: list[str]) -> Dsn:
    """The same options given as an object (``send_email(..., dsn=…)``, the HTTP API's
    ``dsn``): ``ret`` (FULL or HDRS), ``envid``, ``notify`` (NEVER, or a list or comma list of
    SUCCESS, FAILURE, DELAY -- for every recipient) and ``orcpt`` (recipient -> its original
    address, ``rfc822;…`` or a bare address).  Plain text, not xtext; ParamError naming the
    field that is wrong."""
    if not isinstance(given, dict):
        raise ParamError("dsn: an object with ret, envid, notify, orcpt")
    unknown = [k for k in given if k not in ("ret", "envid", "notify", "orcpt")]
    if unknown:
        raise ParamError(f"dsn.{unknown[0]}: not an option (ret, envid, notify, orcpt)")
    envid = given.get("envid") or ""
    if not isinstance(envid, str) or not all(" " <= c <= "~" for c in envid):
        raise ParamError("dsn.envid: printable ASCII text")
    ret, decoded = mail({**({"RET": str(given["ret"])} if given.get("ret") else {}),
                         **({"ENVID": xtext_encode(envid)} if envid else {})})
    notify = given.get("notify") or ""
    words = ",".join(notify) if isinstance(notify, list) else str(notify)
    orcpts = given.get("orcpt") or {}
    if not isinstance(orcpts, dict):
        raise ParamError("dsn.orcpt: an object of recipient -> original address")
    found = {}
    for address in rcpts:
        raw = orcpts.get(address)
        params = {"NOTIFY": words} if words else {}
        if raw:
            kind, sep, addr = str(raw).partition(";")
            params["ORCPT"] = f"{kind};{xtext_encode(addr)}" if sep else f"rfc822;{xtext_encode(kind)}"
        recipient = rcpt(params)
        if recipient != Recipient():
            found[address] = recipient
    return Dsn(ret, decoded, found)
