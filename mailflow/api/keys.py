"""API keys: ``config/apikeys``, one key per line, as ``mailflow apikey add`` writes it.

Only a SHA-256 of each secret is kept: the secret is 32 random bytes, so a fast hash is
enough (nothing to guess at), and a copy of the file lets nobody call the API.  A line::

    billing 6f1c…e2 tenant=acme rate=600

``tenant`` is the tenant every message of the key belongs to (``*``: the request names
its own), ``rate`` the messages per minute it may queue (0: no limit).  The file is read
again when it changes, so a key added or removed counts without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mailflow.config.files import ConfigError
from mailflow.util.atomic import replace_text

FILE = "apikeys"
#: What a key's name and a tenant's may be: they go into log lines and file names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ANY_TENANT = "*"
#: The secret's prefix, so that a key found in a repository or a log is recognisable.
PREFIX = "mf_"


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: str  #: SHA-256 of the secret, hex
    tenant: str | None = None
    rate: int = 0  #: messages per minute; 0 = no limit


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str, what: str = "a key name") -> str:
    if not NAME.match(name):
        raise ValueError(f"{what} is letters, digits, '.', '_' and '-', at most 64: {name!r}")
    return name


def parse(path: Path, text: str) -> dict[str, ApiKey]:
    """Every key of the file, by name; a line that is not one stops the start (one line)."""
    keys: dict[str, ApiKey] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = line.split()
        try:
            if len(words) < 2:
                raise ValueError("a line is a name, a SHA-256 and optional tenant= and rate=")
            name, digest = words[:2]
            fields = dict(item.partition("=")[::2] for item in words[2:])
            check_name(name)
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("the second word is not a SHA-256 in hex")
            tenant = fields.pop("tenant", "") or None
            if tenant not in (None, ANY_TENANT):
                check_name(tenant, "a tenant")
            rate = int(fields.pop("rate", "0") or 0)
            if rate < 0:
                raise ValueError("rate must be 0 or more")
            if fields:
                raise ValueError(f"unknown field {next(iter(fields))!r}")
        except ValueError as exc:
            raise ConfigError(path, lineno, str(exc)) from None
        if name in keys:
            raise ConfigError(path, lineno, f"the key {name!r} is there twice")
        keys[name] = ApiKey(name, digest, tenant, rate)
    return keys


def format_line(key: ApiKey) -> str:
    extra = (f" tenant={key.tenant}" if key.tenant else "") + (f" rate={key.rate}" if key.rate else "")
    return f"{key.name} {key.digest}{extra}"


class Keys:
    """The key file of one config directory, read again when it changes."""

    def __init__(self, config_dir: Path):
        self.path = Path(config_dir) / FILE
        self._stamp: tuple[int, int] | None = None
        self._by_name: dict[str, ApiKey] = {}
        self._by_digest: dict[str, ApiKey] = {}

    def all(self) -> dict[str, ApiKey]:
        """Every key by name (ConfigError for a broken file)."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            text = self.path.read_text(encoding="utf-8") if stamp is not None else ""
            self._by_name = parse(self.path, text)
            self._by_digest = {k.digest: k for k in self._by_name.values()}
            self._stamp = stamp
        return self._by_name

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None."""
        self.all()
        digest = digest_of(secret)
        found = self._by_digest.get(digest)
        if found is not None and hmac.compare_digest(found.digest, digest):
            return found
        return None

    def add(self, name: str, tenant: str | None = None, rate: int = 0) -> str:
        """Make a key, keep its hash, and return its secret (shown once, never stored)."""
        check_name(name)
        if tenant not in (None, ANY_TENANT):
            check_name(tenant, "a tenant")
        if rate < 0:
            raise ValueError("--rate must be 0 or more")
        keys = dict(self.all())
        if name in keys:
            raise ValueError(f"there is already a key named {name!r} (apikey remove it first)")
        secret = PREFIX + secrets.token_urlsafe(32)
        keys[name] = ApiKey(name, digest_of(secret), tenant, rate)
        self._write(keys)
        return secret

    def remove(self, name: str) -> bool:
        keys = dict(self.all())
        if keys.pop(name, None) is None:
            return False
        self._write(keys)
        return True

    def _write(self, keys: dict[str, ApiKey]) -> None:
        text = "".join(format_line(k) + "\n" for k in keys.values())
        replace_text(self.path, "# mailflow apikey add/remove: name, SHA-256 of the secret, tenant, "
                     "rate (messages a minute)\n" + text)
        os.chmod(self.path, 0o600)
