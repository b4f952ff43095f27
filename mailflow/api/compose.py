"""One message per recipient, from an injection request's content and substitutions.

``content`` is an RFC 5322 message as a string, or the fields a message is built from
(``from``, ``subject``, ``reply_to``, ``headers``, ``text_body``, ``html_body``,
``attachments``): the email package builds the MIME structure -- multipart/alternative
for two bodies, mixed or related around attachments -- so that nothing of it is written
by hand.  With ``template_dialect = "Jinja"`` each text is a MiniJinja template (Jinja's
syntax) rendered with the recipient's substitutions over the request's; the HTML body
escapes what it inserts (a substitution is data, not markup).  Templates are compiled
once per request and run with a bounded amount of fuel: a loop in one cannot hold a
submission process.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate
from typing import Any

import minijinja

#: Instructions one rendering may take (MiniJinja's fuel): plenty for any real template.
FUEL = 200_000
STATIC, JINJA = "Static", "Jinja"


class ComposeError(ValueError):
    """A request field that is missing or wrong, or cannot make a message: ``field`` names
    it for the 400 answer (mailflow/api/requests.py calls it BadField)."""

    def __init__(self, field_name: str, text: str):
        super().__init__(f"{field_name}: {text}")
        self.field = field_name


@dataclass(frozen=True)
class Attachment:
    data: bytes
    content_type: str = "application/octet-stream"
    file_name: str | None = None
    content_id: str | None = None


@dataclass(frozen=True)
class Content:
    """``content`` as the request gave it: ``raw`` (a whole message), or the builder fields."""

    raw: str | None = None
    from_: tuple[str, str] | None = None  #: (name, email)
    subject: str | None = None
    reply_to: tuple[str, str] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    text_body: str | None = None
    html_body: str | None = None
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)


def attachment_from(item: Any, where: str) -> Attachment:
    if not isinstance(item, dict):
        raise ComposeError(where, "must be an object")
    data = item.get("data")
    if not isinstance(data, str):
        raise ComposeError(f"{where}.data", "must be a string")
    if item.get("base64", False) is True:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ComposeError(f"{where}.data", "is not valid base64") from None
    else:
        raw = data.encode("utf-8")
    content_type = item.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or content_type.count("/") != 1 or any(
            c in content_type for c in "\r\n;\"") or not all(content_type.split("/")):
        raise ComposeError(f"{where}.content_type", "must be a MIME type such as image/png")
    for key in ("file_name", "content_id"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or any(c in value for c in "\r\n\"<>")):
            raise ComposeError(f"{where}.{key}", "must be a string without quotes, brackets or "
                               "line breaks")
    return Attachment(raw, content_type.lower(), item.get("file_name"), item.get("content_id"))


class Composer:
    """The request's templates, compiled once; :meth:`message` for each recipient."""

    def __init__(self, content: Content, dialect: str, substitutions: Mapping[str, Any]):
        self.content = content
        self.substitutions = dict(substitutions)
        self.env: minijinja.Environment | None = None
        if dialect == JINJA:
            self.env = minijinja.Environment(auto_escape_callback=lambda name: name.endswith(".html"))
            self.env.fuel = FUEL
            for name, text in self._texts():
                try:
                    self.env.add_template(name, text)
                except minijinja.TemplateError as exc:
                    raise ComposeError(_field_of(name), f"template error: {_first_line(exc)}") from None

    def _texts(self) -> list[tuple[str, str]]:
        c = self.content
        if c.raw is not None:
            return [("content", c.raw)]
        named = [("content.subject", c.subject), ("content.text_body", c.text_body),
                 ("content.html_body.html", c.html_body)]
        named += [(f"content.headers.{k}", v) for k, v in c.headers]
        return [(n, t) for n, t in named if t is not None]

    def _render(self, name: str, text: str | None, context: Mapping[str, Any]) -> str | None:
        if text is None or self.env is None:
            return text
        try:
            return str(self.env.render_template(name, **context))
        except minijinja.TemplateError as exc:
            raise ComposeError(_field_of(name), f"template error: {_first_line(exc)}") from None

    def message(self, email: str, name: str | None, substitutions: Mapping[str, Any]) -> bytes:
        """The message for one recipient (CRLF line endings, not dot-stuffed)."""
        context = {**self.substitutions, **substitutions}
        c = self.content
        if c.raw is not None:
            text = self._render("content", c.raw, context) or ""
            return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        msg = EmailMessage(policy=SMTP)
        try:
            if c.from_ is not None:
                msg["From"] = _address(*c.from_)
            msg["To"] = _address(name or "", email)
            subject = self._render("content.subject", c.subject, context)
            if subject is not None:
                msg["Subject"] = subject
            if c.reply_to is not None:
                msg["Reply-To"] = _address(*c.reply_to)
            msg["Date"] = formatdate(localtime=False, usegmt=True)
            for key, value in c.headers:
                rendered = self._render(f"content.headers.{key}", value, context) or ""
                if key.lower() in ("to", "from", "subject", "reply-to", "date"):
                    del msg[key]
                msg[key] = rendered
        except ComposeError:
            raise
        except (ValueError, TypeError) as exc:  # a line break in a header, a bad address
            raise ComposeError("content", f"cannot make the headers for {email}: {exc}") from None
        self._bodies(msg, context)
        return msg.as_bytes()

    def _bodies(self, msg: EmailMessage, context: Mapping[str, Any]) -> None:
        c = self.content
        text = self._render("content.text_body", c.text_body, context)
        html = self._render("content.html_body.html", c.html_body, context)
        if text is not None:
            msg.set_content(text, subtype="plain", cte="quoted-printable")
        if html is not None:
            if text is not None:
                msg.add_alternative(html, subtype="html", cte="quoted-printable")
            else:
                msg.set_content(html, subtype="html", cte="quoted-printable")
        if text is None and html is None:
            msg.set_content("", subtype="plain")
        for attachment in c.attachments:
            maintype, subtype = attachment.content_type.split("/")
            if attachment.content_id is not None and html is not None:
                target = msg.get_body(("html",)) or msg
                target.add_related(attachment.data, maintype=maintype, subtype=subtype,
                                   cid=f"<{attachment.content_id}>", filename=attachment.file_name,
                                   disposition="inline")
            else:
                msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                                   filename=attachment.file_name)


def _address(name: str, email: str) -> str:
    local, _, domain = email.rpartition("@")
    return str(HeaderAddress(display_name=name, username=local, domain=domain)) if name \
        else formataddr(("", email))


def _field_of(template_name: str) -> str:
    return template_name.removesuffix(".html")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
