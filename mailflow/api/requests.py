"""What an API request says, checked field by field before anything is queued.

Every refusal names the field (``recipients[3].email: not an address``): the 400 answer
is the client's only way to find its mistake, and nothing of a refused request is queued.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from mailflow.address import Address, AddressError, parse_address
from mailflow.api.compose import JINJA, STATIC, ComposeError, Content, attachment_from
from mailflow.api.keys import NAME as TENANT_NAME
from mailflow.wire import dsnparams

#: More recipients than this in one request: split it (one message is made per recipient).
MAX_RECIPIENTS = 10_000
#: Header names a request may set (RFC 5322 field names, printable and without a colon).
_HEADER_NAME = frozenset(chr(c) for c in range(33, 127)) - {":"}


#: A field of the request that is missing or wrong: answered 400, naming it.
BadField = ComposeError


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    substitutions: dict[str, Any]


@dataclass(frozen=True)
class Inject:
    """``POST /api/inject/v1``."""

    envelope_sender: Address
    content: Content
    recipients: tuple[Recipient, ...]
    substitutions: dict[str, Any]
    dialect: str
    tenant: str | None
    campaign: str | None
    dsn: dict[str, Any] | None = None  #: checked: mailflow/wire/dsnparams.py from_api


@dataclass(frozen=True)
class Raw:
    """``POST /api/v1/send/raw``."""

    mail_from: Address
    rcpt_to: tuple[str, ...]
    data: bytes
    dsn: dict[str, Any] | None = None


def body_json(body: bytes) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadField("body", f"not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise BadField("body", "must be a JSON object")
    return found


def _string(obj: dict[str, Any], key: str, where: str = "", required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadField(where + key, "is required, a string" if value is None else "must be a string")
    return value


def _sender(text: str, where: str) -> Address:
    try:
        return parse_address(text, allow_null=True)
    except AddressError as exc:
        raise BadField(where, str(exc)) from None


def _object(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise BadField(where + key, "must be an object")
    return value


def _name_email(value: Any, where: str) -> tuple[str, str]:
    """``{"email", "name"}`` or a plain address string."""
    if isinstance(value, str):
        name, email = "", value
    elif isinstance(value, dict) and isinstance(value.get("email"), str):
        name, email = value.get("name") or "", value["email"]
        if not isinstance(name, str):
            raise BadField(f"{where}.name", "must be a string")
    else:
        raise BadField(where, "must be an address or {\"email\", \"name\"}")
    try:
        parse_address(email)
    except AddressError as exc:
        raise BadField(where, str(exc)) from None
    return name, email


def _label(obj: dict[str, Any], key: str) -> str | None:
    value = _string(obj, key, required=False)
    if value is not None and not TENANT_NAME.match(value):
        raise BadField(key, "letters, digits, '.', '_' and '-', at most 64")
    return value


def content_of(value: Any) -> Content:
    if isinstance(value, str):
        return Content(raw=value)
    if not isinstance(value, dict):
        raise BadField("content", "must be a message (a string) or an object of its parts")
    headers = _object(value, "headers", "content.")
    for key, text in headers.items():
        if not key or not set(key) <= _HEADER_NAME:
            raise BadField(f"content.headers.{key}", "is not a header name")
        if not isinstance(text, str):
            raise BadField(f"content.headers.{key}", "must be a string")
    attachments = value.get("attachments", [])
    if not isinstance(attachments, list):
        raise BadField("content.attachments", "must be a list")
    parts = tuple(attachment_from(a, f"content.attachments[{n}]") for n, a in enumerate(attachments))
    texts = {k: _string(value, k, "content.", required=False)
             for k in ("subject", "text_body", "html_body")}
    return Content(
        from_=_name_email(value["from"], "content.from") if "from" in value else None,
        reply_to=_name_email(value["reply_to"], "content.reply_to") if "reply_to" in value else None,
        headers=tuple(headers.items()), attachments=parts, subject=texts["subject"],
        text_body=texts["text_body"], html_body=texts["html_body"])


def inject(body: dict[str, Any]) -> Inject:
    sender = _sender(_string(body, "envelope_sender") or "", "envelope_sender")
    if "content" not in body:
        raise BadField("content", "is required")
    content = content_of(body["content"])
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise BadField("recipients", "is required, a list of at least one {\"email\"}")
    if len(recipients) > MAX_RECIPIENTS:
        raise BadField("recipients", f"at most {MAX_RECIPIENTS} in one request")
    found = []
    for n, item in enumerate(recipients):
        where = f"recipients[{n}]"
        if not isinstance(item, dict):
            raise BadField(where, "must be an object with an email")
        email = _string(item, "email", where + ".") or ""
        name = _string(item, "name", where + ".", required=False)
        found.append(Recipient(email, name, _object(item, "substitutions", where + ".")))
    dialect = body.get("template_dialect", STATIC)
    if dialect not in (STATIC, JINJA):
        raise BadField("template_dialect", f"must be {STATIC!r} or {JINJA!r}")
    return Inject(sender, content, tuple(found), _object(body, "substitutions"), dialect,
                  _label(body, "tenant"), _label(body, "campaign"), _dsn(body))


def raw(body: dict[str, Any]) -> Raw:
    sender = _sender(_string(body, "mail_from") or "", "mail_from")
    rcpts = body.get("rcpt_to")
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    if not isinstance(rcpts, list) or not rcpts or not all(isinstance(r, str) for r in rcpts):
        raise BadField("rcpt_to", "is required, a list of addresses")
    if len(rcpts) > MAX_RECIPIENTS:
        raise BadField("rcpt_to", f"at most {MAX_RECIPIENTS} in one request")
    try:
        data = base64.b64decode(_string(body, "data") or "", validate=True)
    except (binascii.Error, ValueError):
        raise BadField("data", "is not valid base64") from None
    if not data.strip():
        raise BadField("data", "is an empty message")
    return Raw(sender, tuple(rcpts), data, _dsn(body))


def _dsn(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``dsn`` object, its options checked now (its orcpt's recipients when each
    message is made)."""
    given = body.get("dsn")
    if given is None:
        return None
    try:
        dsnparams.from_api(given, [])
    except dsnparams.ParamError as exc:
        text = str(exc)
        raise BadField("dsn", text[10:] if text[:3].isdigit() else text) from None
    return dict(given)
