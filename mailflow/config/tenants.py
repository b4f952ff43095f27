"""``tenants.ini``: the customers or streams mailflow sends for, kept apart.

One section per tenant, ``[tenant:acme]``, with ``users`` (SMTP AUTH users whose mail is
the tenant's) and ``pool`` (the egress pool its mail leaves from).  A message's tenant is
also its API key's, or the ``X-Tenant`` header of a client in relay_acl_allow; tenants
named here are the ones metrics count by name (any other is ``other``, so that a client
cannot grow a metric without bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailflow.config.files import ConfigError, parse_list, read_ini, unknown
from mailflow.config.settings import TENANT_KEYS, tenant_name

KEYS = tuple(k.name for k in TENANT_KEYS)
#: Where a message's tenant and campaign travel: its queue entry's notes.
TENANT_NOTE, CAMPAIGN_NOTE = "tenant", "campaign"


def labels(notes: dict[str, object]) -> dict[str, str]:
    """``tenant=`` and ``campaign=`` for a log line or an event, those the message has."""
    return {k: str(notes[k]) for k in (TENANT_NOTE, CAMPAIGN_NOTE) if notes.get(k)}


@dataclass(frozen=True)
class Tenant:
    name: str
    users: tuple[str, ...] = ()
    pool: str | None = None


@dataclass(frozen=True)
class Tenants:
    by_name: dict[str, Tenant]
    by_user: dict[str, str]  #: AUTH user -> tenant

    def of_user(self, user: str | None) -> str | None:
        return self.by_user.get(user) if user else None

    def label(self, tenant: str | None) -> str:
        """The tenant as a metric label: its name when tenants.ini lists it, else ``other``
        (``-`` for mail of no tenant)."""
        if not tenant:
            return "-"
        return tenant if tenant in self.by_name else "other"


def load(path: Path) -> Tenants:
    ini = read_ini(path)
    by_name: dict[str, Tenant] = {}
    by_user: dict[str, str] = {}
    for section, keys in ini.sections.items():
        if section == "main" and not keys:
            continue
        kind, sep, name = section.partition(":")
        if kind != "tenant" or not sep:
            raise ConfigError(path, None, f"[{section}]: a section is [tenant:NAME]")
        try:
            tenant_name(name)
        except ValueError as exc:
            raise ConfigError(path, None, f"[{section}]: {exc}") from None
        for key, raw in keys.items():
            if key not in KEYS:
                raise ConfigError(path, raw.line, unknown("key", key, KEYS))
        users = tuple(parse_list(keys["users"].text)) if "users" in keys else ()
        for user in users:
            if user in by_user:
                raise ConfigError(path, keys["users"].line,
                                  f"user {user!r} is in [tenant:{by_user[user]}] and [tenant:{name}]")
            by_user[user] = name
        pool = keys["pool"].text.strip() if "pool" in keys else None
        by_name[name] = Tenant(name, users, pool or None)
    return Tenants(by_name, by_user)
