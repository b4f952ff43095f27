"""The whole config directory, parsed and validated.

``load(dir)`` reads every file and raises :class:`ConfigError` at the first
problem, so a process never starts half-configured.  ``outbound.ini`` is the
file read live, with ``tls.ini``'s outbound policy: :meth:`Config.outbound`
re-reads them when their mtime changes (checked at most once a second), and
keeps the last good settings, with a log line, if the new text is broken.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailflow.classify import actions as classify_actions
from mailflow.classify import rules as classify_rules
from mailflow.config import egress, environ, routes, shaping, tenants, webhooks
from mailflow.config.files import ConfigError, IniFile, parse_list, read_ini, read_lines, unknown
from mailflow.config.settings import (
    FILES,
    LIVE_FILES,
    Dkim,
    Http,
    Inbound,
    Metrics,
    Outbound,
    Shared,
    Smtp,
    Tls,
    parsers_of,
)
from mailflow.dkim.keys import KeyProblem, domain_keys, domains
from mailflow.dkim.signer import Signer
from mailflow.util import tls

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often (s) the config files are stat()ed for changes; changes take effect within 5 s.
RELOAD_CHECK_INTERVAL = 1.0
CONFIG_NAMES = tuple(f.name for f in FILES)

AUTH_METHODS = ("PLAIN", "LOGIN", "CRAM-MD5")

DEFAULT_BOUNCE_TEMPLATE = """\
Received: (Mailflow {pid} invoked for bounce); {date}
Message-Id: <{msgid}>
Date: {date}
From: Mail Delivery System <MAILER-DAEMON@{me}>
To: {from}
Subject: Mail delivery failed: returning message to sender

This is the mail system at host {me}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

{recipients}: {reason}

The kind of failure: {class}
"""


def build_section(cls: type[T], ini: IniFile, section: str, *, base: dict[str, Any] | None = None) -> T:
    """Make a settings dataclass from one ini section, naming file and line on error (an
    unknown key too: ``rejectUnauthorised = true`` must not leave verification off)."""
    parsers = parsers_of(cls)
    values: dict[str, Any] = dict(base or {})
    for key, raw in ini.section(section).items():
        parse = parsers.get(key)
        if parse is None:
            raise ConfigError(ini.path, raw.line, unknown("key", key, parsers))
        try:
            values[key] = parse(raw.text)
        except ValueError as exc:
            raise ConfigError(ini.path, raw.line, f"{key} {exc}") from None
    return cls(**values)


def _ini(path: Path, *sections: str) -> IniFile:
    """``path`` read, with no section but ``main`` and ``sections``."""
    ini = read_ini(path)
    ini.only_sections(*sections)
    return ini


def _tls_section(ini: IniFile, section: str, base: Tls, config_dir: Path) -> Tls:
    """One tls.ini section over ``base``; file names made absolute in the config directory."""
    policy = build_section(Tls, ini, section, base=dataclasses.asdict(base))
    if policy.dane and policy.dane_resolver is None:
        raw = ini.section(section).get("dane")
        raise ConfigError(ini.path, raw.line if raw else None,
                          "dane = true needs dane_resolver (a validating resolver, ip[:port])")

    def where(name: str) -> str:
        value: str = getattr(policy, name)
        return str(config_dir / value) if value and value != getattr(base, name) else value

    return dataclasses.replace(policy, key=where("key"), cert=where("cert"), ca=where("ca"))


def _check_tls_files(policy: Tls) -> None:
    """A certificate and key that exist must load, and so must a ``ca`` that is set.

    Found at start, a garbage key is ``FILE: what is wrong``; found at the first
    STARTTLS, it would be a traceback, or a listener that never offers TLS.
    """
    cert, key = Path(policy.cert), Path(policy.key)
    if cert.exists() != key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise ConfigError(present, None, f"{missing.name} is missing (both or neither)")
    for server, what, where in ((True, f"the TLS key with {cert.name}", key),
                                (False, "the CA bundle", Path(policy.ca))):
        if (server and not tls.has_certificate(policy)) or (not server and not policy.ca):
            continue
        try:
            tls.context(policy, server=server)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(where, None, f"cannot load {what}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None


@dataclass(frozen=True)
class Auth:
    """``auth_flat_file.ini``: who may relay by SMTP AUTH."""

    methods: tuple[str, ...] = AUTH_METHODS
    users: dict[str, str] = field(default_factory=dict)


def _load_auth(path: Path) -> Auth:
    ini = _ini(path, "core", "users")
    methods: tuple[str, ...] = AUTH_METHODS
    core = ini.section("core")
    for section, known in (("main", ()), ("core", ("methods",))):
        for key, raw in ini.section(section).items():
            if key not in known:
                raise ConfigError(path, raw.line, unknown("key", key, known))
    if "methods" in core:
        raw = core["methods"]
        methods = tuple(m.upper() for m in parse_list(raw.text))
        bad = [m for m in methods if m not in AUTH_METHODS]
        if bad or not methods:
            raise ConfigError(path, raw.line, f"methods must be from {', '.join(AUTH_METHODS)}")
    users = {name: value.text for name, value in ini.section("users").items()}
    return Auth(methods=methods, users=users)


def _load_acl(path: Path) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for lineno, line in read_lines(path):
        try:
            out.append(ipaddress.ip_network(line, strict=False))
        except ValueError:
            raise ConfigError(path, lineno, f"{line!r} is not an IP address or CIDR") from None
    return tuple(out)


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _load_plugins(path: Path) -> tuple[str, ...]:
    out = []
    for lineno, line in read_lines(path):
        if not _MODULE.match(line):
            raise ConfigError(path, lineno, f"{line!r} is not an importable module name")
        out.append(line)
    return tuple(out)


def _load_me(path: Path) -> str:
    lines = read_lines(path)
    if not lines:
        return socket.getfqdn()
    lineno, name = lines[0]
    if " " in name or "\t" in name:
        raise ConfigError(path, lineno, f"{name!r} is not a host name")
    return name


def _load_bounce_template(path: Path) -> str:
    if not path.exists():
        return DEFAULT_BOUNCE_TEMPLATE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from exc
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if line == "":
            break
        if line[0] in " \t":
            continue
        if ":" not in line:
            raise ConfigError(path, lineno, f"header line without ':' ({line!r}); "
                              "the template is headers, a blank line, then the body")
    else:
        raise ConfigError(path, len(lines), "no blank line between the headers and the body")
    return text


def _load_http(config_dir: Path) -> Http:
    """``http.ini``: a listener off loopback needs a certificate (an API key must never cross a
    network in the clear), and a certificate must load now, not at the first request."""
    path = config_dir / "http.ini"
    http = build_section(Http, _ini(path), "main")
    if bool(http.cert) != bool(http.key):
        raise ConfigError(path, None, "cert and key go together (both or neither)")
    if http.cert:
        http = dataclasses.replace(http, cert=str(config_dir / http.cert), key=str(config_dir / http.key))
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(http.cert, http.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(path, None, f"cannot load the certificate {http.cert}: {exc}") from None
    if http.listen is not None and not http.cert:
        try:
            loopback = ipaddress.ip_address(http.listen[0]).is_loopback
        except ValueError:
            loopback = http.listen[0] == "localhost"
        if not loopback:
            raise ConfigError(path, None, f"listen = {http.listen[0]} is not a loopback address: "
                              "set cert and key (plain HTTP is served only on loopback)")
    return http


def _load_dkim(config_dir: Path) -> Signer:
    """``dkim.ini`` and every key under ``dkim/``, checked now: a broken key stops the start."""
    settings = build_section(Dkim, _ini(config_dir / "dkim.ini"), "main")
    keys_dir = config_dir / "dkim"
    for domain in domains(keys_dir):
        try:
            domain_keys(keys_dir, domain)
        except KeyProblem as exc:
            raise ConfigError(exc.path, None, exc.message) from None
    return Signer(keys_dir, settings)


class Config:
    """Everything under one config directory.  Cheap to share; read-only but for reloads."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._queue_path: tuple[Outbound, Path] | None = None  #: queue_path(), as last made
        d = self.directory
        self.me = _load_me(d / "me")
        self.smtp: Smtp = build_section(Smtp, _ini(d / "smtp.ini"), "main")
        self.tls_main, self._tls_outbound = self._load_tls()
        self.auth = _load_auth(d / "auth_flat_file.ini")
        self.relay_acl = _load_acl(d / "relay_acl_allow")
        self.plugins = _load_plugins(d / "plugins")
        self.bounce_template = _load_bounce_template(d / "outbound.bounce_message")
        self.dkim = _load_dkim(d)
        self.shared: Shared = build_section(Shared, read_ini(d / "shaping.ini"), "main")

        self.webhooks = webhooks.load(d / "webhooks.ini")
        self.metrics: Metrics = build_section(Metrics, _ini(d / "metrics.ini"), "main")
        self.http = _load_http(d)
        self.inbound: Inbound = build_section(Inbound, _ini(d / "inbound.ini"), "main")
        self.tenants = tenants.load(d / "tenants.ini")
        self.classify = classify_rules.load(d / "classify.ini")
        self.classify_actions = classify_actions.load(d / "classify.ini")
        self.egress = egress.load(d / "egress.ini")
        self.shaping = shaping.load(d / "shaping.ini",
                                    {n: src.address for n, src in self.egress.sources.items()})
        for tenant in self.tenants.by_name.values():
            if tenant.pool is not None and tenant.pool not in self.egress.pools:
                raise ConfigError(d / "tenants.ini", None, f"[tenant:{tenant.name}] pool = {tenant.pool}: "
                                  "egress.ini has no such pool")
        self._outbound_path = d / "outbound.ini"
        self._stamps = self._stamp()
        outbound_ini = _ini(self._outbound_path)
        self._outbound: Outbound = build_section(Outbound, outbound_ini, "main")
        self._routes = self._with_known_pools(routes.load(d))
        self._relay = routes.relay_host(d, outbound_ini)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _with_known_pools(self, found: tuple[routes.Route, ...]) -> tuple[routes.Route, ...]:
        for route in found:
            if route.pool is not None and route.pool not in self.egress.pools:
                raise ConfigError(self.directory / "routes.ini", None,
                                  f"[{route.pattern}] pool = {route.pool}: egress.ini has no such pool")
        return found

    def _load_tls(self) -> tuple[Tls, Tls]:
        d = self.directory
        tls_ini = _ini(d / "tls.ini", "outbound")
        defaults = Tls(key=str(d / "tls_key.pem"), cert=str(d / "tls_cert.pem"))
        main = _tls_section(tls_ini, "main", defaults, d)
        outbound = _tls_section(tls_ini, "outbound", main, d)
        for policy in (main, outbound):
            _check_tls_files(policy)
        return main, outbound

    def restamp(self) -> None:
        """Take the files as they are now as read: for a file this process has just made
        (broker.key at the first start), which no operator changed."""
        with self._lock:
            self._stamps = self._stamp()

    def _stamp(self) -> dict[str, tuple[int, int] | None]:
        """(mtime, size) of every file of the directory, by name."""
        out: dict[str, tuple[int, int] | None] = {}
        for name in CONFIG_NAMES:
            try:
                st = os.stat(self.directory / name)
                out[name] = (st.st_mtime_ns, st.st_size)
            except OSError:
                out[name] = None
        return out

    def _say_restart(self, changed: list[str]) -> None:
        """A file read only at start changed: say so, once per change, rather than let an
        operator believe an edit to smtp.ini or webhooks.ini is in force."""
        for name in changed:
            if name not in LIVE_FILES:
                log.warning("%s changed: it is read when mailflow starts; restart mailflow "
                            "(and every worker host) for the change to take effect",
                            self.directory / name)

    def reload_if_changed(self) -> None:
        """Read the live files again if one changed (at most once a reload interval)."""
        self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_INTERVAL:
            return
        with self._lock:
            self._checked = now
            stamps = self._stamp()
            if stamps == self._stamps:
                return
            changed = [name for name in stamps if stamps[name] != self._stamps.get(name)]
            self._stamps = stamps
            self._say_restart(changed)
            if not any(name in LIVE_FILES for name in changed):
                return
            try:
                outbound_ini = _ini(self._outbound_path)
                outbound = build_section(Outbound, outbound_ini, "main")
                _, tls_outbound = self._load_tls()
                found = self._with_known_pools(routes.load(self.directory))
                relay = routes.relay_host(self.directory, outbound_ini)
            except ConfigError as exc:
                log.error("%s (keeping the previous outbound settings)", exc)
                return
            self._outbound, self._tls_outbound = outbound, tls_outbound
            self._routes, self._relay = found, relay
            log.info("reloaded %s from %s", ", ".join(n for n in changed if n in LIVE_FILES),
                     self.directory)

    @property
    def outbound(self) -> Outbound:
        """The current ``outbound.ini`` settings, re-read when the file has changed."""
        self._reload_if_changed()
        return self._outbound

    @property
    def tls_outbound(self) -> Tls:
        """The current ``tls.ini`` [outbound] policy, re-read like outbound.ini."""
        self._reload_if_changed()
        return self._tls_outbound

    def route_for(self, domain: str) -> routes.Route | None:
        """routes.ini's most specific route with a ``via`` for ``domain``, else relay_host's;
        None: DNS."""
        self._reload_if_changed()
        return routes.find(self._routes, domain, self._relay)

    def route_pool(self, domain: str) -> str | None:
        """The egress pool routes.ini's most specific section with a ``pool`` gives ``domain``."""
        self._reload_if_changed()
        found = routes.find(self._routes, domain, having="pool")
        return found.pool if found is not None else None

    def shared_redis(self) -> str | None:
        """The Redis every host shares (shaping_redis, else a Redis broker), or None."""
        if self.shared.shaping_redis:
            return self.shared.shaping_redis
        broker = environ.broker_url()
        return broker if broker.startswith(("redis://", "rediss://")) else None

    def queue_path(self) -> Path:
        """``queue_dir``; a relative one is relative to the config directory's parent, as the
        state directory is (mailflow/config/state.py), not to the working directory.  Made
        once per reading of outbound.ini: asked several times per message on both sides."""
        outbound = self.outbound
        made = self._queue_path
        if made is not None and made[0] is outbound:
            return made[1]
        path = Path(outbound.queue_dir)
        path = path if path.is_absolute() else self.directory.absolute().parent / path
        self._queue_path = (outbound, path)
        return path


def default_directory() -> Path:
    return Path(os.environ.get("MAILFLOW_CONFIG") or "config")


_current: Config | None = None
_current_lock = threading.RLock()


def load(directory: Path | str | None = None) -> Config:
    """Load and validate ``directory`` (default: $MAILFLOW_CONFIG or ./config) and make it current."""
    global _current
    cfg = Config(Path(directory) if directory is not None else default_directory())
    with _current_lock:
        _current = cfg
    return cfg


def current() -> Config:
    """The config this process runs with, loaded on first use."""
    if _current is None:
        with _current_lock:
            if _current is None:
                return load()
    assert _current is not None
    return _current
