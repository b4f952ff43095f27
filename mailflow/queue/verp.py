"""VERP return paths: each message leaves from an address that says which it was.

With ``outbound.ini verp_domain = bounces.example.com`` the envelope sender of an entry
for one recipient is ``b+<entry id>=<local part>=<domain>@bounces.example.com`` (Postfix's
and qmail's variable envelope return path, the ``@`` written as ``=``).  A bounce that comes
back late, or a complaint from a feedback loop, is addressed to it: the entry and the
recipient are in the address itself, whatever the report quotes.  Entries for several
recipients (made before verp_domain was set) leave from their own sender.
"""

from __future__ import annotations

import re

from mailflow.queue.todo import ToDo

PREFIX = "b+"
#: an entry id as mailflow makes them: ``<UUID>[.t<8 hex>].<n>`` (mailflow/queue/entry.py)
_ID = re.compile(r"^[0-9a-f-]{36}(\.t[0-9a-f]{8})?\.\d+$", re.IGNORECASE)


def sender(mail_from: str, entry_id: str, rcpts: list[str], verp_domain: str) -> str:
    """The envelope sender to use: the VERP form when it applies, else ``mail_from``."""
    if not verp_domain or not mail_from or len(rcpts) != 1 or "@" not in rcpts[0]:
        return mail_from  # a bounce (null sender) never gets one: nothing may answer it
    local, _, domain = rcpts[0].rpartition("@")
    return f"{PREFIX}{entry_id}={local}={domain}@{verp_domain}"


def envelope_sender(todo: ToDo, verp_domain: str) -> str:
    """The envelope sender an entry leaves from."""
    return sender(todo.mail_from.address, todo.uuid, [r.address for r in todo.rcpt_to], verp_domain)


def parse(address: str, verp_domain: str) -> tuple[str, str] | None:
    """``(entry id, recipient)`` from a VERP address of ``verp_domain``, else None."""
    address = address.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    if not verp_domain or domain.lower() != verp_domain.lower() or not local.lower().startswith(PREFIX):
        return None
    entry_id, sep, rest = local[len(PREFIX):].partition("=")
    rcpt_local, sep2, rcpt_domain = rest.rpartition("=")
    if not sep or not sep2 or not rcpt_local or not rcpt_domain or not _ID.match(entry_id):
        return None
    uuid, _, rest = entry_id.partition(".")  # as written, whatever case a receiver gave it
    return f"{uuid.upper()}.{rest.lower()}", f"{rcpt_local}@{rcpt_domain}"
