"""``routes.ini`` and outbound.ini's ``relay_host``: where mail goes without a line of code.

Postfix's ``transport_maps`` and ``relayhost``, Haraka's ``smtp_forward``.  One section per
recipient domain (``[example.com]``: that domain only), per suffix (``[.example.org]``:
its subdomains, not example.org itself), or ``[*]`` (every other domain); the most
specific section wins.  Keys: ``via`` (``host[:port]``, ``[ip]:port``, or a comma list
tried in order; no MX lookup), ``lmtp``, ``auth_user`` with ``auth_pass_file`` (a file
holding the password on its first line, relative to the config directory), ``tls``
(``none``, ``opportunistic``, ``required``, ``verify``), ``bind``, ``bind_helo``, ``pool``
(an egress.ini pool).  A section with ``pool`` and no ``via`` only picks the pool: its
mail goes where it would without it (``relay_host``, else DNS).

A route becomes the same MX list a ``get_mx`` answer would (so its password is sealed
on the broker like one), and wins over ``relay_host`` and DNS; a ``get_mx`` answer wins
over it.  Both files are read again within seconds of a change, like outbound.ini.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailflow.config.files import ConfigError, IniFile, Value, read_ini, unknown
from mailflow.config.settings import ROUTE_KEYS, TLS_MODES, boolean, parse_hostport

KEYS = tuple(k.name for k in ROUTE_KEYS)


@dataclass(frozen=True)
class Route:
    """Where mail for the domains ``pattern`` names goes: ``via``, tried in order (none:
    the section only picks an egress ``pool``)."""

    pattern: str  #: ``example.com``, ``.example.org`` or ``*`` (``relay_host``: ``*`` too)
    via: tuple[tuple[str, int | None], ...] = ()
    lmtp: bool = False
    auth_user: str | None = None
    auth_pass: str | None = field(default=None, repr=False)
    tls: str | None = None
    bind: str | None = None
    bind_helo: str | None = None
    pool: str | None = None  #: the egress pool (egress.ini) its mail leaves from

    def matches(self, domain: str) -> bool:
        if self.pattern == "*":
            return True
        if self.pattern.startswith("."):
            return domain.endswith(self.pattern)
        return domain == self.pattern

    def answer(self) -> list[dict[str, Any]]:
        """The route as a ``get_mx`` answer: one MX a ``via`` host, in order."""
        return [{"exchange": host, "port": port, "priority": n, "using_lmtp": self.lmtp,
                 "auth_user": self.auth_user, "auth_pass": self.auth_pass, "tls": self.tls,
                 "bind": self.bind, "bind_helo": self.bind_helo}
                for n, (host, port) in enumerate(self.via)]


def find(routes: tuple[Route, ...], domain: str, fallback: Route | None = None,
         having: str = "via") -> Route | None:
    """The most specific route for ``domain`` among those that set ``having`` (``via``: the
    routes that say where mail goes; ``pool``: those that pick its egress pool): exact,
    then the longest suffix, then ``*``; else ``fallback`` (``relay_host``)."""
    domain = domain.lower().rstrip(".")
    found = [r for r in routes if getattr(r, having) and r.matches(domain)]
    exact = [r for r in found if r.pattern == domain]
    if exact:
        return exact[0]
    suffixes = sorted((r for r in found if r.pattern.startswith(".")), key=lambda r: -len(r.pattern))
    if suffixes:
        return suffixes[0]
    star = [r for r in found if r.pattern == "*"]
    return star[0] if star else fallback


def via_list(text: str) -> tuple[tuple[str, int | None], ...]:
    """``host[:port]``, ``[ip]:port`` or ``[v6]:port``, comma separated (ValueError if bad)."""
    out: list[tuple[str, int | None]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        bare = item[1:-1] if item.startswith("[") and item.endswith("]") else None
        host, port = (bare, 0) if bare is not None else parse_hostport(item, default_port=0)
        if not host or any(c in host for c in " /@<>"):
            raise ValueError(f"{item!r} is not host[:port]")
        out.append((host.lower(), port or None))
    if not out:
        raise ValueError("names no host")
    return tuple(out)


def password(config_dir: Path, where: Path, raw: Value, key: str = "auth_pass_file") -> str:
    """The first line of the password file ``key`` names (relative to the config directory)."""
    path = Path(raw.text)
    path = path if path.is_absolute() else config_dir / path
    try:
        first = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(where, raw.line, f"{key} {raw.text!r}: cannot read it: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if not first or not first[0].strip():
        raise ConfigError(where, raw.line, f"{key} {raw.text!r} is empty")
    return first[0].strip()


def _pattern(path: Path, name: str, line: int | None) -> str:
    pattern = name.strip().lower().rstrip(".")
    body = pattern[1:] if pattern.startswith(".") else pattern
    if pattern != "*" and (not body or "*" in body or any(c in body for c in " /@[]:")):
        raise ConfigError(path, line, f"[{name}] is not a domain, a .suffix or *")
    return pattern


def route_from(config_dir: Path, path: Path, pattern: str, keys: dict[str, Value],
               line: int | None, names: dict[str, str] | None = None) -> Route:
    """One route from its keys; ``names`` maps the route's key names to this file's (the
    ``relay_*`` keys of outbound.ini)."""
    names = names or {k: k for k in KEYS}
    values: dict[str, Any] = {}
    for key, raw in keys.items():
        ours = next((k for k, n in names.items() if n == key), None)
        if ours is None:
            raise ConfigError(path, raw.line, unknown("key", key, names.values()))
        try:
            if ours == "via":
                values["via"] = via_list(raw.text)
            elif ours == "lmtp":
                values["lmtp"] = boolean(raw.text)
            elif ours == "tls":
                if raw.text.strip().lower() not in TLS_MODES:
                    raise ValueError(f"must be one of {', '.join(TLS_MODES)}")
                values["tls"] = raw.text.strip().lower()
            elif ours == "bind":
                try:
                    ipaddress.ip_address(raw.text.strip())
                except ValueError:
                    raise ValueError("must be an IP address of this host") from None
                values["bind"] = raw.text.strip()
            elif ours == "auth_pass_file":
                values["auth_pass"] = password(config_dir, path, raw, names[ours])
            else:
                values[ours] = raw.text.strip()
        except ValueError as exc:
            raise ConfigError(path, raw.line, f"{names[ours]} {exc}") from None
    if "via" not in values:
        if "pool" not in values:
            raise ConfigError(path, line, f"{names['via']} is missing: where does this mail go?")
        given = sorted(names["auth_pass_file" if k == "auth_pass" else k] for k in values if k != "pool")
        if given:
            raise ConfigError(path, line, f"{', '.join(given)} need {names['via']}: a section "
                              "without it only picks the egress pool (its mail goes by relay_host or DNS)")
    if ("auth_user" in values) != ("auth_pass" in values):
        raise ConfigError(path, line, f"{names['auth_user']} and {names['auth_pass_file']} go together")
    return Route(pattern=pattern, **values)


def load(config_dir: Path, path: Path | None = None) -> tuple[Route, ...]:
    """Every route of ``routes.ini`` (none when there is no such file)."""
    path = path or config_dir / "routes.ini"
    ini: IniFile = read_ini(path)
    if ini.section("main"):
        first = min(v.line for v in ini.section("main").values())
        raise ConfigError(path, first, "a key before any section: routes go in [domain], "
                          "[.suffix] or [*] sections")
    routes = []
    for name, keys in ini.sections.items():
        if name == "main":
            continue
        line = ini.section_lines.get(name)
        routes.append(route_from(config_dir, path, _pattern(path, name, line), keys, line))
    return tuple(routes)


RELAY_KEYS = {"via": "relay_host", "auth_user": "relay_auth_user", "auth_pass_file": "relay_auth_pass_file"}


def relay_host(config_dir: Path, ini: IniFile) -> Route | None:
    """outbound.ini's ``relay_host`` as the route of every domain without one of its own."""
    keys = {k: v for k, v in ini.section("main").items() if k in RELAY_KEYS.values()}
    if not keys:
        return None
    if "relay_host" not in keys:
        first = min(v.line for v in keys.values())
        raise ConfigError(ini.path, first, "relay_auth_user and relay_auth_pass_file need relay_host")
    return route_from(config_dir, ini.path, "*", keys, None, names=RELAY_KEYS)
