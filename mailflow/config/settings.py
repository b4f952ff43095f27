"""Every configuration key, declared once: name, type, default and meaning.

Like Postfix's ``postconf.proto``, this is the one registry the loader, the
validation errors and the shipped commented ``config/`` files agree with (a
test keeps ``config/`` in step with these defaults).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from mailflow.config.files import parse_bool, parse_list
from mailflow.config.schedule import DEFAULT_INTERVALS, format_intervals, parse_duration, parse_intervals

Parser = Callable[[str], Any]


def setting(default: Any, parse: Parser, doc: str) -> Any:
    """Declare one key: its default, how its text is read, and what it means."""
    return field(default=default, metadata={"parse": parse, "doc": doc})


def positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("must be a positive integer") from None
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("must be a whole number, 0 or more") from None
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text.strip().rstrip("s"))
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if value < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise ValueError("must be a number of seconds above 0")
    return value


def boolean(text: str) -> bool:
    return parse_bool(text)


def domain_name(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if value and not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+",
                                  value):
        raise ValueError(f"{value!r} is not a domain name")
    return value


def text(value: str) -> str:
    return value.strip()


def intervals(value: str) -> tuple[int, ...]:
    return tuple(parse_intervals(value))


def duration(value: str) -> int:
    return parse_duration(value)


def auto_duration(value: str) -> int | None:
    """A duration, or ``auto`` (None: decided from the broker where it is used)."""
    return None if value.strip().lower() == "auto" else parse_duration(value)


def parse_hostport(item: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, a bare host or IPv6 address (with ``default_port``)."""
    item = item.strip()
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep:
            raise ValueError(f"{item!r}: missing ']'")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{item!r}: expected [address]:port")
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:
        host, port_text = item, ""
    if not host:
        raise ValueError(f"{item!r}: no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{item!r}: no port")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{item!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{item!r}: port out of range")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """``host:port``, ``[v6]:port``: what :func:`parse_hostport` reads."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_list(value: str) -> tuple[tuple[str, int], ...]:
    out = tuple(parse_hostport(item) for item in parse_list(value))
    if not out:
        raise ValueError("needs at least one host:port")
    return out


def nameserver_list(value: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in parse_list(value):
        host, port = parse_hostport(item, default_port=53)
        ipaddress.ip_address(host)  # nameservers are addresses, not names
        out.append((host, port))
    return tuple(out)


def resolver_address(value: str) -> tuple[str, int] | None:
    """One ``ip[:port]`` (port 53 by default), or empty for none."""
    if not value.strip():
        return None
    found = nameserver_list(value)
    if len(found) != 1:
        raise ValueError("must be one address, ip[:port]")
    return found[0]


def size(value: str) -> int:
    """A byte count, with an optional k/m/g suffix (binary units)."""
    v = value.strip().lower().rstrip("b")
    mult = 1
    if v and v[-1] in "kmg":
        mult = {"k": 1024, "m": 1024**2, "g": 1024**3}[v[-1]]
        v = v[:-1]
    try:
        n = int(float(v) * mult)
    except ValueError:
        raise ValueError("must be a size in bytes (suffix k, m or g allowed)") from None
    if n < 1:
        raise ValueError("must be a positive size")
    return n


def nodes(value: str) -> int:
    """A process count, or ``cpus`` for one per CPU (Haraka's smtp.ini ``nodes``)."""
    if value.strip().lower() == "cpus":
        return os.cpu_count() or 1
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError("must be a positive integer or 'cpus'") from None


def failures_window(value: str) -> tuple[int, float]:
    """``N/DURATION`` (``10/600s``, ``10/10m``; also ``N per DURATION``)."""
    count, sep, window = value.replace(" per ", "/").partition("/")
    if not sep:
        raise ValueError("must be N/DURATION, e.g. 10/10m")
    return positive_int(count.strip()), float(duration(window.strip()))


def optional_bool(value: str) -> bool | None:
    return None if value.strip() == "" else parse_bool(value)


@dataclass(frozen=True)
class Outbound:
    """``outbound.ini``: delivery settings."""

    disabled: bool = setting(
        False, boolean, "pause delivery while still accepting and queueing (read live, <= 5 s)")
    concurrency_max: int = setting(
        100, positive_int, "most simultaneous outbound connections of one worker node")
    enable_tls: bool = setting(
        False, boolean, "opportunistic STARTTLS when the remote end offers it")
    ipv6_enabled: bool = setting(
        False, boolean, "look up AAAA before A for each MX host and use those addresses first")
    always_split: bool = setting(
        False, boolean, "one queue entry and one SMTP session per recipient")
    delay_warning: int = setting(
        4 * 3600, duration, "a sender whose mail has waited this long gets one delay notice (DSN, "
        "Action: delayed) per entry, for recipients that asked for one or gave no NOTIFY; 0: never")
    verp_domain: str = setting(
        "", domain_name, "send each message from b+<queue id>=<recipient, = for @>@this domain, so "
        "that late bounces and complaints sent back name it (mailflow ingest, inbound.ini); each "
        "recipient gets an entry of its own; empty: off")
    received_header: str = setting(
        "mailflow outbound", text, "text of the Received: header; 'disabled' adds none")
    connect_timeout: float = setting(30.0, positive_seconds, "TCP connect timeout (s)")
    timeout_banner: float = setting(300.0, positive_seconds, "wait for the 220 banner (RFC 5321 4.5.3.2.1)")
    timeout_command: float = setting(
        300.0, positive_seconds, "wait for EHLO/HELO/STARTTLS/AUTH/RSET replies")
    timeout_mail: float = setting(300.0, positive_seconds, "wait for the MAIL reply (4.5.3.2.2)")
    timeout_rcpt: float = setting(300.0, positive_seconds, "wait for each RCPT reply (4.5.3.2.3)")
    timeout_data: float = setting(120.0, positive_seconds, "wait for the DATA 354 reply (4.5.3.2.4)")
    timeout_data_block: float = setting(
        180.0, positive_seconds, "most time one block of message data may take to send (4.5.3.2.5)")
    timeout_end_of_data: float = setting(
        600.0, positive_seconds, "wait for the reply to the final dot (4.5.3.2.6)")
    pool_timeout: float = setting(
        50.0, seconds, "idle pooled connections send QUIT after this long; 0 disables pooling")
    pool_concurrency_max: int = setting(
        10, positive_int, "most pooled connections of one worker node to one destination IP")
    temp_fail_intervals: tuple[int, ...] = setting(
        DEFAULT_INTERVALS, intervals,
        "waits after the 1st, 2nd, ... temporary failure; 'none' bounces at once")
    countdown_max: int | None = setting(
        None, auto_duration,
        "longest wait a deferral spends as a Celery countdown (longer: parked in pending/ for "
        "the scan); 0: no countdowns; auto: half of Redis's visibility_timeout, 15m on RabbitMQ "
        "(consumer_timeout is 30 min), 30m on the embedded broker")
    countdown_grace: int = setting(
        60, duration, "how long past its due time an entry whose countdown is armed is left to "
        "it, before the queue manager claims it itself")
    local_mx_ok: bool = setting(
        False, boolean, "allow MX hosts resolving to loopback, private or own addresses")
    queue_dir: str = setting("queue", text, "the queue directory (relative to the working dir)")
    mx_port: int = setting(25, positive_int, "port for MX hosts found in DNS")
    relay_host: str = setting(
        "", text, "host[:port] or [ip]:port: every domain without a routes.ini route or a get_mx "
        "answer goes through this smarthost, no MX lookup (Postfix's relayhost)")
    relay_auth_user: str = setting("", text, "the user name for AUTH to relay_host")
    relay_auth_pass_file: str = setting(
        "", text, "a file whose first line is relay_auth_user's password (relative to the config "
        "directory)")
    nameservers: tuple[tuple[str, int], ...] = setting(
        (), nameserver_list, "comma list of ip or ip:port for every DNS query (default: system)")
    max_bounce_body: int = setting(
        256 * 1024, size, "originals larger than this are returned with headers only in bounces")


@dataclass(frozen=True)
class Smtp:
    """``smtp.ini``: the submission listener."""

    listen: tuple[tuple[str, int], ...] = setting(
        (("127.0.0.1", 2525),), listen_list, "comma list of host:port ([v6]:port) to listen on")
    max_message_size: int = setting(
        25 * 1024 * 1024, size, "largest message accepted (bytes; SIZE is advertised)")
    max_recipients: int = setting(1000, positive_int, "most RCPT TO per transaction")
    auth_require_tls: bool | None = setting(
        None, optional_bool, "refuse AUTH before STARTTLS (default: true except on loopback)")
    nodes: int = setting(1, nodes, "submission processes sharing the listeners (a number, or cpus)")
    max_connections: int = setting(
        1000, positive_int, "most simultaneous client connections to one submission process")
    max_connections_per_client: int = setting(
        50, positive_int, "most simultaneous connections from one client address, per process "
        "(Postfix's smtpd_client_connection_count_limit)")
    auth_fail_delay: float = setting(
        1.0, seconds, "wait before answering a failed AUTH: this many seconds times the "
        "connection's failures so far (Postfix's smtpd_error_sleep_time)")
    auth_max_failures: int = setting(
        3, positive_int, "failed AUTH attempts after which a connection is closed (421 4.7.0)")
    auth_max_failures_window: tuple[int, float] = setting(
        (10, 600.0), failures_window, "failed AUTH attempts per client address, and per user name, "
        "within a window (N/DURATION, e.g. 10/10m), across connections and processes (and hosts, "
        "with Redis); past it AUTH is answered 454 4.7.0 unchecked until the window passes")


TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: What a route may ask of TLS to its next hop (routes.ini ``tls``).
TLS_MODES = ("none", "opportunistic", "required", "verify")


def tls_version(value: str) -> str:
    value = value.strip()
    if value and value not in TLS_VERSIONS:
        raise ValueError(f"must be one of {', '.join(TLS_VERSIONS)}")
    return value


_HOST_PATTERN = re.compile(r"^[A-Za-z0-9*._-]+$")


def host_patterns(value: str) -> tuple[str, ...]:
    """A list of IPs, CIDRs or host/domain names (``*.`` allowed in front)."""
    items = tuple(parse_list(value))
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            if not _HOST_PATTERN.match(item):
                raise ValueError(f"{item!r} is neither an IP, a CIDR nor a host name") from None
    return items


@dataclass(frozen=True)
class Tls:
    """``tls.ini``: one section; ``[outbound]`` inherits ``[main]`` (Haraka's key names).

    ``key``, ``cert`` and ``ca`` are read relative to the config directory.
    """

    key: str = setting("tls_key.pem", text, "private key of our certificate (PEM)")
    cert: str = setting("tls_cert.pem", text, "our certificate chain (PEM)")
    ciphers: str = setting("", text, "OpenSSL cipher list (default: Python's)")
    minVersion: str = setting(  # noqa: N815 - Haraka's key name
        "", tls_version, "lowest TLS version: TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")
    rejectUnauthorized: bool = setting(  # noqa: N815
        False, boolean, "verify the certificate of every server STARTTLS is used with")
    requestCert: bool = setting(False, boolean, "ask clients for a certificate")  # noqa: N815
    ca: str = setting("", text, "CA bundle for verifying servers (default: the system's)")
    no_tls_hosts: tuple[str, ...] = setting(
        (), host_patterns, "IPs, CIDRs or domains never to STARTTLS with")
    force_tls_hosts: tuple[str, ...] = setting(
        (), host_patterns, "IPs, MX names or domains that must have TLS, verified, else defer")
    mta_sts: bool = setting(
        True, boolean, "apply recipient domains' MTA-STS policies (RFC 8461)")
    dane: bool = setting(
        False, boolean, "DANE for SMTP (RFC 7672): TLSA records through dane_resolver")
    dane_resolver: tuple[str, int] | None = setting(
        None, resolver_address, "a validating resolver, ip[:port], whose AD bit is trusted")
    tls_report: bool = setting(
        True, boolean, "send daily TLS reports (RFC 8460) to domains that ask for them")


DKIM_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
                "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe",
                "List-Unsubscribe-Post", "In-Reply-To", "References")

CANONICALIZATIONS = ("simple", "relaxed")


def header_names(value: str) -> tuple[str, ...]:
    """A list of header field names; From must be among them (RFC 6376 5.4)."""
    names = tuple(parse_list(value))
    for name in names:
        if not re.fullmatch(r"[!-9;-~]+", name):
            raise ValueError(f"{name!r} is not a header field name")
    if "from" not in (n.lower() for n in names):
        raise ValueError("must include From (RFC 6376 5.4)")
    return names


def canonicalization(value: str) -> tuple[str, str]:
    """``header/body`` (``relaxed`` alone means ``relaxed/simple``, as RFC 6376 3.5 reads c=)."""
    head, _, body = value.strip().lower().partition("/")
    body = body or "simple"
    if head not in CANONICALIZATIONS or body not in CANONICALIZATIONS:
        raise ValueError("must be simple or relaxed, for the header and the body: relaxed/simple")
    return head, body


@dataclass(frozen=True)
class Dkim:
    """``dkim.ini`` [main]: how mail is signed; the keys are in ``dkim/<domain>/``."""

    headers_to_sign: tuple[str, ...] = setting(
        DKIM_HEADERS, header_names, "header fields signed, those present in the message")
    canonicalization: tuple[str, str] = setting(
        ("relaxed", "simple"), canonicalization, "header/body canonicalisation (RFC 6376 3.4)")
    fallback_domain: str = setting(
        "", domain_name, "sign with this domain's key when the From domain has none")


def redis_url(value: str) -> str:
    value = value.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis:// or rediss:// URL")
    return value


@dataclass(frozen=True)
class Shared:
    """``shaping.ini`` [main]: where the limits and lists every host shares are kept."""

    shaping_redis: str = setting(
        "", redis_url, "Redis for limits and the suppression list shared by every host "
        "(default: the broker's URL when the broker is Redis; else this host alone)")


def optional_hostport(value: str) -> tuple[str, int] | None:
    return parse_hostport(value) if value.strip() else None


@dataclass(frozen=True)
class Metrics:
    """``metrics.ini`` [main]: the Prometheus endpoint, one per host."""

    listen: tuple[str, int] | None = setting(
        None, optional_hostport, "host:port of the /metrics endpoint (off when unset)")


@dataclass(frozen=True)
class Http:
    """``http.ini`` [main]: the HTTP injection API, served by the submission processes."""

    listen: tuple[str, int] | None = setting(
        None, optional_hostport, "host:port of the HTTP injection API (off when unset)")
    cert: str = setting("", text, "TLS certificate (PEM; relative to the config directory); plain "
                        "HTTP is served only on a loopback address")
    key: str = setting("", text, "the certificate's private key (PEM)")
    max_body: int = setting(25 * 1024 * 1024, size, "largest request body (bytes; larger: 413)")
    auth_fail_delay: float = setting(
        1.0, seconds, "wait before answering a request without a valid key (401)")


@dataclass(frozen=True)
class Inbound:
    """``inbound.ini`` [main]: an SMTP listener for reports sent back to the return path."""

    listen: tuple[str, int] | None = setting(
        None, optional_hostport, "host:port taking complaints (ARF) and late bounces (DSN) for "
        "outbound.ini's verp_domain (off when unset)")


@dataclass(frozen=True)
class Key:
    """A key of a section the user names -- a route, a webhook endpoint, a shaping rule --
    whose value its own module reads (the kind and default are said in words here)."""

    name: str
    kind: str
    default: str
    doc: str


_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def tenant_name(value: str) -> str:
    """A tenant's or campaign's name: it goes into log lines, metrics and file names."""
    if not _TENANT.match(value):
        raise ValueError(f"a name is letters, digits, '.', '_' and '-', at most 64: {value!r}")
    return value


TENANT_KEYS = (
    Key("users", "list", "", "SMTP AUTH users whose mail is this tenant's"),
    Key("pool", "text", "", "the egress pool its mail leaves from (egress.ini)"),
)

SOURCE_KEYS = (
    Key("address", "IP address", "", "the address connections are bound to (one of this host's)"),
    Key("ehlo", "host name", "", "the name connections from it greet with (its reverse DNS)"),
    Key("warmup", "list of numbers", "", "at most N1, N2, … messages on its 1st, 2nd, … UTC day "
        "of use; past the list, no cap"),
)
POOL_KEYS = (
    Key("sources", "list of NAME[:weight]", "", "the sources new connections take in weighted turn"),
)

ROUTE_KEYS = (
    Key("via", "list of host[:port]", "", "where the mail goes, tried in order: host[:port], "
        "[ip]:port; no MX lookup (a section with only pool has none)"),
    Key("lmtp", "boolean", "false", "speak LMTP (a mailbox server's LMTP port)"),
    Key("auth_user", "text", "", "AUTH to the next hop as this user"),
    Key("auth_pass_file", "path", "", "a file whose first line is auth_user's password "
        "(relative to the config directory)"),
    Key("tls", "none, opportunistic, required or verify", "",
        "what TLS the next hop must offer; verify checks its certificate against tls.ini's ca "
        "(default: tls.ini's [outbound] policy)"),
    Key("pool", "text", "", "the egress pool (egress.ini) this destination's mail leaves from; "
        "without via, the section picks only the pool and the mail goes by relay_host or DNS"),
    Key("bind", "IP address", "", "the source address to connect from"),
    Key("bind_helo", "host name", "", "the name to greet the next hop with (default: me)"),
)

WEBHOOK_KEYS = (
    Key("url", "http:// or https:// URL", "", "where events are POSTed (required)"),
    Key("events", "list of queued, delivered, deferred, bounced, dropped", "",
        "the events this endpoint receives (required)"),
    Key("secret", "whsec_<base64>", "", "signs each request the Standard Webhooks way "
        "(webhook-id, webhook-timestamp, webhook-signature headers)"),
    Key("timeout", "seconds", "10", "how long one POST may take before it is retried"),
    Key("batch", "integer 1-1000", "1", "events per POST: more than 1 sends a JSON array"),
)

SHAPING_RULE_KEYS = (
    Key("max_connections", "integer >= 1", "", "open connections at once, all hosts together"),
    Key("max_messages_per_connection", "integer >= 1", "",
        "messages over one connection, then QUIT and open a fresh one"),
    Key("messages_per_minute", "integer >= 1", "", "never more in any sliding 60 s, all hosts"),
    Key("messages_per_hour", "integer >= 1", "", "never more in any sliding hour, all hosts"),
    Key("suspend_on", "list of enhanced codes or reply text", "",
        "replies that stop this rule's mail for suspend_for"),
    Key("suspend_for", "duration", "10m", "how long a suspension lasts"),
)

@dataclass(frozen=True)
class ConfigFile:
    """One file of a config directory: what it holds, and when a change to it takes effect."""

    name: str
    doc: str
    #: re-read within seconds of a change; otherwise read when a process starts
    live: bool = False
    #: ``(section, keys)``: a dataclass above, or the keys of sections the user names
    #: (the section is then a pattern: ``[DOMAIN]``)
    sections: tuple[tuple[str, type | tuple[Key, ...]], ...] = ()
    note: str = ""


#: Every file of a config directory, in the order the reference lists them.
FILES = (
    ConfigFile("me", "this host's name, one line: the EHLO name, the Received: header and "
               "{me} in bounces (default: the machine's FQDN)"),
    ConfigFile("outbound.ini", "how mail is delivered", live=True, sections=(("main", Outbound),)),
    ConfigFile("routes.ini", "where mail goes without a line of code (Postfix's transport_maps): "
               "one section per recipient domain, .suffix or *; the most specific wins; a "
               "get_mx plugin's answer wins over a route, a route over relay_host and DNS",
               live=True, sections=(("[example.com] [.example.org] [*]", ROUTE_KEYS),)),
    ConfigFile("tls.ini", "certificates for the listener's STARTTLS ([main]) and the policy of "
               "outbound STARTTLS ([outbound], which inherits every key of [main]); paths are "
               "relative to the config directory", live=True,
               sections=(("main", Tls), ("outbound", Tls)),
               note="[outbound] is read again within seconds of a change; the listener reads "
               "[main] at start"),
    ConfigFile("smtp.ini", "the submission listener", sections=(("main", Smtp),)),
    ConfigFile("auth_flat_file.ini", "who may relay by SMTP AUTH: [core] methods = PLAIN,LOGIN,"
               "CRAM-MD5 and one name = password line per user under [users]"),
    ConfigFile("relay_acl_allow", "clients that may relay without AUTH: one IP address or CIDR "
               "per line"),
    ConfigFile("plugins", "one importable Python module per line, imported at start by every "
               "process; each connects its hook receivers"),
    ConfigFile("outbound.bounce_message", "the bounce template: headers, a blank line, the body; "
               "{me}, {from}, {to}, {reason}, {class}, {date}, {msgid}, {pid} are filled in"),
    ConfigFile("dkim.ini", "how mail is DKIM-signed when it is queued; the keys are in "
               "dkim/<domain>/ (selector, private, optional ed25519.selector and ed25519.private)",
               sections=(("main", Dkim),)),
    ConfigFile("shaping.ini", "traffic shaping per destination, holding across every host: "
               "[domain:NAME], [mx:SUFFIX] (counted per source address), [source:IP or NAME] or "
               "[tenant:NAME] rules, and where their counts live",
               sections=(("main", Shared), ("[domain:NAME] [mx:SUFFIX] [source:IP] [tenant:NAME]",
                                            SHAPING_RULE_KEYS))),
    ConfigFile("webhooks.ini", "delivery events POSTed to your application, one section per "
               "endpoint (any name)", sections=(("[NAME]", WEBHOOK_KEYS),)),
    ConfigFile("metrics.ini", "the Prometheus endpoint, one per host", sections=(("main", Metrics),)),
    ConfigFile("http.ini", "the HTTP injection API (POST /api/inject/v1, /api/v1/send/raw), "
               "served by the submission processes", sections=(("main", Http),)),
    ConfigFile("inbound.ini", "the listener for reports sent back (complaints and late bounces), "
               "served by the submission processes", sections=(("main", Inbound),)),
    ConfigFile("tenants.ini", "the customers or streams mailflow sends for: one [tenant:NAME] "
               "section each; the tenants listed are those metrics count by name",
               sections=(("[tenant:NAME]", TENANT_KEYS),)),
    ConfigFile("egress.ini", "the source addresses mail leaves from ([source:NAME]) and weighted "
               "pools of them ([pool:NAME]); [main] default_pool", sections=(
                   ("[source:NAME]", SOURCE_KEYS), ("[pool:NAME]", POOL_KEYS))),
    ConfigFile("classify.ini", "how replies are classed: [rule:NAME] sections (class, and any of "
               "code, enhanced, text, mx), tried before the shipped rules; the first match wins"),
    ConfigFile("apikeys", "who may use the HTTP API: one key per line, as `mailflow apikey add` "
               "writes it (the name, a hash of the secret, the tenant, the rate); never the "
               "secret itself", live=True, note="read again at the next request after a change"),
    ConfigFile("broker.key", "the secret every host of one installation shares: every broker "
               "message is signed with a key drawn from it (made at the first start; copy it to "
               "each worker host, never to the broker)"),
)

#: The files read again while mailflow runs.
LIVE_FILES = tuple(f.name for f in FILES if f.live)


#: How each value is read, in words, and how a default is written back in that syntax.
KINDS: dict[Parser, tuple[str, Callable[[Any], str]]] = {}


def _duration_text(value: float) -> str:
    n = int(value)
    for unit, size_ in (("d", 86400), ("h", 3600), ("m", 60)):
        if n and n % size_ == 0 and n == value:
            return f"{n // size_}{unit}"
    return f"{value:g}s"


def _size_text(value: int) -> str:
    for unit, size_ in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value % size_ == 0:
            return f"{value // size_}{unit}"
    return str(value)


def _hostports(value: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(format_hostport(h, p) for h, p in value)


def _kinds() -> None:
    def optional(show: Callable[[Any], str]) -> Callable[[Any], str]:
        return lambda v: "" if v is None else show(v)

    def flag(v: bool) -> str:
        return "true" if v else "false"

    KINDS.update({
        positive_int: ("integer >= 1", str),
        non_negative_int: ("integer >= 0", str),
        seconds: ("seconds", lambda v: f"{v:g}"),
        positive_seconds: ("seconds above 0", lambda v: f"{v:g}"),
        boolean: ("boolean", flag),
        optional_bool: ("boolean, or empty", optional(flag)),
        text: ("text", str),
        intervals: ("list of durations (1m, 5m*2, 1h*3) or none", format_intervals),
        duration: ("duration (90, 90s, 15m, 1h, 2d)", _duration_text),
        auto_duration: ("duration, or auto", lambda v: "auto" if v is None else _duration_text(v)),
        listen_list: ("list of host:port", _hostports),
        nameserver_list: ("list of ip[:port]", _hostports),
        resolver_address: ("ip[:port], or empty", optional(lambda v: _hostports((v,)))),
        optional_hostport: ("host:port, or empty", optional(lambda v: _hostports((v,)))),
        size: ("size in bytes (k, m, g suffixes)", _size_text),
        nodes: ("integer >= 1, or cpus", str),
        failures_window: ("N/DURATION", lambda v: f"{v[0]}/{_duration_text(v[1])}"),
        tls_version: ("TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3, or empty", str),
        host_patterns: ("list of IPs, CIDRs or names", ", ".join),
        header_names: ("list of header field names", ", ".join),
        canonicalization: ("simple or relaxed, header/body", "/".join),
        domain_name: ("domain name, or empty", str),
        redis_url: ("redis:// or rediss:// URL, or empty", str),
    })


_kinds()


def kind_of(cls: type, name: str) -> str:
    """The key's type in words."""
    return KINDS[parsers_of(cls)[name]][0]


def default_text(cls: type, name: str) -> str:
    """The key's default as it would be written in its file (empty: unset)."""
    parse = parsers_of(cls)[name]
    return KINDS[parse][1](defaults_of(cls)[name])


def defaults_of(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


def docs_of(cls: type) -> dict[str, str]:
    return {f.name: f.metadata["doc"] for f in fields(cls)}


def parsers_of(cls: type) -> dict[str, Parser]:
    return {f.name: f.metadata["parse"] for f in fields(cls)}
