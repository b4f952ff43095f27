"""``shaping.ini``: traffic shaping rules per destination.

One section per rule: ``[domain:example.com]`` (the recipient domain),
``[mx:.mail.example.net]`` (an MX host suffix: every domain hosted there shares the
rule, as Gmail's, Microsoft's and Yahoo's throttles count), ``[source:192.0.2.7]``
(the source address, or an egress.ini source's name), ``[tenant:acme]`` (a tenant's mail,
whatever its destination).  Keys: ``max_connections``, ``max_messages_per_connection``,
``messages_per_minute``, ``messages_per_hour``, ``suspend_on`` (enhanced codes or
reply substrings), ``suspend_for`` (a duration, default 10m).  ``[main]`` holds
``shaping_redis`` (mailflow/config/settings.py ``Shared``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from mailflow.config.files import ConfigError, Value, parse_list, read_ini, unknown
from mailflow.config.schedule import parse_duration
from mailflow.config.settings import SHAPING_RULE_KEYS, positive_int

KINDS = ("domain", "mx", "source", "tenant")
LIMITS = ("max_connections", "max_messages_per_connection", "messages_per_minute", "messages_per_hour")
KEYS = tuple(k.name for k in SHAPING_RULE_KEYS)
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Rule:
    name: str  #: the section name, as metrics and logs show it: ``domain:example.com``
    kind: str
    pattern: str
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    messages_per_minute: int | None = None
    messages_per_hour: int | None = None
    suspend_on: tuple[str, ...] = ()
    suspend_for: int = 600

    def matches(self, domain: str, mx_host: str, source: str | None, tenant: str | None = None) -> bool:
        if self.kind == "domain":
            return domain.lower() == self.pattern
        if self.kind == "source":
            return source is not None and source == self.pattern
        if self.kind == "tenant":
            return tenant is not None and tenant.lower() == self.pattern
        host, suffix = mx_host.lower().rstrip("."), self.pattern.lstrip(".")
        return host == suffix or host.endswith("." + suffix)

    def suspends_on(self, reply_text: str) -> bool:
        """Whether a reply (``421 4.7.28 …``) is one this rule stops sending on."""
        words = reply_text.split()
        return any(word in words[:2] or word.lower() in reply_text.lower() for word in self.suspend_on)


def _positive(path: Path, key: str, raw: Value) -> int:
    try:
        return positive_int(raw.text)
    except ValueError as exc:
        raise ConfigError(path, raw.line, f"{key} {exc}") from None


def _rule(path: Path, name: str, keys: dict[str, Value], line: int | None,
          sources: dict[str, str]) -> Rule:
    kind, sep, pattern = name.partition(":")
    pattern = pattern.strip().lower()
    if not sep or kind not in KINDS or not pattern:
        raise ConfigError(path, line, f"[{name}]: a rule is [domain:NAME], [mx:SUFFIX], "
                          "[source:IP or NAME] or [tenant:NAME]")
    shown = pattern  # a source's rule is named as written: source:mta1
    if kind == "source":
        try:
            pattern = shown = str(ipaddress.ip_address(pattern))
        except ValueError:  # an egress.ini source's name: its address
            if pattern not in sources:
                raise ConfigError(path, line, f"[{name}]: {pattern!r} is neither an IP address nor "
                                  "an egress.ini source") from None
            pattern = sources[pattern]
    elif kind == "tenant":
        if not _TENANT.match(pattern):
            raise ConfigError(path, line, f"[{name}]: {pattern!r} is not a tenant's name")
    elif not _NAME.match(pattern):
        raise ConfigError(path, line, f"[{name}]: {pattern!r} is not a domain name")
    values: dict[str, object] = {}
    for key, raw in keys.items():
        if key not in KEYS:
            raise ConfigError(path, raw.line, unknown("key", key, KEYS))
        if key in LIMITS:
            values[key] = _positive(path, key, raw)
        elif key == "suspend_on":
            values[key] = tuple(parse_list(raw.text))
        else:
            try:
                values[key] = parse_duration(raw.text)
            except ValueError as exc:
                raise ConfigError(path, raw.line, f"suspend_for {exc}") from None
    if not any(k in values for k in (*LIMITS, "suspend_on")):
        raise ConfigError(path, line, f"[{name}] sets no limit and no suspend_on")
    return Rule(name=f"{kind}:{shown}", kind=kind, pattern=pattern, **values)  # type: ignore[arg-type]


def load(path: Path, sources: dict[str, str] | None = None) -> tuple[Rule, ...]:
    """Every rule; ``sources``: egress.ini's source names and their addresses, which a
    ``[source:NAME]`` rule may name."""
    ini = read_ini(path)
    rules = []
    for name, keys in ini.sections.items():
        if name == "main":
            continue
        rules.append(_rule(path, name, keys, _section_line(path, name), sources or {}))
    return tuple(rules)


def _section_line(path: Path, name: str) -> int | None:
    try:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() == f"[{name}]":
                return lineno
    except OSError:
        pass
    return None


def matching(rules: tuple[Rule, ...], domain: str, mx_host: str, source: str | None = None,
             tenant: str | None = None) -> list[Rule]:
    """The rules over mail to ``domain`` via ``mx_host``, from ``source``, of ``tenant``."""
    return [r for r in rules if r.matches(domain, mx_host, source, tenant)]
