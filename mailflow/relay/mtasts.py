"""MTA-STS (RFC 8461): a recipient domain's published TLS policy, fetched, cached, applied.

For a domain, the ``_mta-sts`` TXT record says a policy exists and its ``id``;
the policy itself comes from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
(certificate verified, no redirects, at most 64 KiB in 10 s, ``text/plain``).
It is cached for its ``max_age`` in memory and under the state directory, so a
restart keeps it (8461 5.1: a sender must keep enforcing across restarts, or
an attacker need only wait for one).  The TXT record is asked for every
delivery (through the resolver's cache); a new ``id`` means a new fetch.  A
fetch that fails keeps the cached policy; with none cached, delivery is
opportunistic (8461 5.2, "fail open" on first contact).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dns.exception
import dns.resolver

from mailflow.config.settings import Outbound, Tls
from mailflow.relay import http
from mailflow.relay.mx import resolver
from mailflow.util.atomic import replace_text

log = logging.getLogger(__name__)

MAX_POLICY = 64 * 1024
FETCH_TIMEOUT = 10.0
MAX_AGE_LIMIT = 31557600  # 8461 3.2: at most a year
ENFORCE, TESTING, NONE = "enforce", "testing", "none"
#: After a failed fetch, the same policy id is fetched again no sooner than this (s).
RETRY_FAILED = 300.0


class PolicyError(Exception):
    """The policy could not be had; ``kind`` is the TLS-RPT result type (RFC 8460 4.3)."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class Policy:
    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    fetched: float
    text: str  #: the policy as served, for TLS reports (RFC 8460 policy-string)

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def allows(self, mx_host: str) -> bool:
        """8461 4.1: an exact name, or ``*.`` standing for exactly one leftmost label."""
        host = mx_host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                if host.partition(".")[2] == pattern[2:] and "." in host:
                    return True
            elif host == pattern:
                return True
        return False


_TXT = re.compile(r"^v=STSv1;")


def txt_id(domain: str, settings: Outbound) -> str | None:
    """The ``id`` of the domain's one ``v=STSv1`` TXT record; None when there is none."""
    try:
        answer = resolver(settings).resolve(f"_mta-sts.{domain}", "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException:
        return None  # 8461 5.1: a failed lookup is treated as no record (the cache applies)
    texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    records = [t for t in texts if _TXT.match(t.replace(" ", ""))]
    if len(records) != 1:
        return None
    fields = dict(p.strip().partition("=")[::2] for p in records[0].split(";") if "=" in p)
    found = fields.get("id", "").strip()
    return found if re.fullmatch(r"[A-Za-z0-9]{1,32}", found) else None


def parse(domain: str, policy_id: str, text: str, now: float) -> Policy:
    """8461 3.2: ``key: value`` lines; version STSv1, mode, max_age, mx (one or more)."""
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError("sts-policy-invalid", f"line without ':': {line[:60]!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("sts-policy-invalid", "version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyError("sts-policy-invalid", f"mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((values.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("sts-policy-invalid", "max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError("sts-policy-invalid", f"max_age {max_age} out of range")
    mx = tuple(m.lower().rstrip(".") for m in values.get("mx", []))
    if mode != NONE and not mx:
        raise PolicyError("sts-policy-invalid", "no mx line")
    return Policy(domain=domain, id=policy_id, mode=mode, mx=mx, max_age=max_age, fetched=now,
                  text=text)


def fetch(domain: str, settings: Outbound, tls: Tls) -> str:
    """The policy text, or PolicyError: 8461 3.3, from ``mta-sts.<domain>`` over verified HTTPS,
    200 only (no redirect followed), ``text/plain``, at most 64 KiB within 10 s."""
    url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    try:
        response = http.request(url, settings, tls, timeout=FETCH_TIMEOUT, max_size=MAX_POLICY)
    except http.HttpError as exc:
        raise PolicyError("sts-webpki-invalid" if exc.untrusted else "sts-policy-fetch-error",
                          str(exc)) from None
    if response.status != 200:
        raise PolicyError("sts-policy-fetch-error", f"{url} answered HTTP {response.status}")
    if response.content_type != "text/plain":
        raise PolicyError("sts-policy-invalid",
                          f"{url} served {response.content_type or 'no type'}, not text/plain")
    return response.body.decode("utf-8", "replace")


class Cache:
    """Policies by domain, in memory and as one JSON file per domain under ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._memory: dict[str, Policy | None] = {}
        self._failed: dict[tuple[str, str], tuple[float, PolicyError]] = {}
        self._lock = threading.Lock()

    def get(self, domain: str) -> Policy | None:
        with self._lock:
            if domain in self._memory:
                return self._memory[domain]
        policy: Policy | None
        try:
            data = json.loads((self.directory / f"{domain}.json").read_text())
            policy = Policy(**{**data, "mx": tuple(data["mx"])})
        except (OSError, ValueError, TypeError, KeyError):
            policy = None
        with self._lock:
            self._memory[domain] = policy
        return policy

    def put(self, policy: Policy) -> None:
        replace_text(self.directory / f"{policy.domain}.json", json.dumps(asdict(policy)))
        with self._lock:
            self._memory[policy.domain] = policy


    def failed(self, domain: str, policy_id: str, now: float) -> PolicyError | None:
        """A fetch of this policy id that failed less than RETRY_FAILED ago: not tried again
        yet, so that a dead policy server costs one timeout, not one per delivery."""
        with self._lock:
            found = self._failed.get((domain, policy_id))
        return found[1] if found is not None and now < found[0] + RETRY_FAILED else None

    def fail(self, domain: str, policy_id: str, now: float, exc: PolicyError) -> None:
        with self._lock:
            self._failed[(domain, policy_id)] = (now, exc)


class Outcome:
    """What looking the policy up gave: the policy to apply (or None) and any failure to report."""

    def __init__(self, policy: Policy | None, failure: PolicyError | None = None):
        self.policy = policy
        self.failure = failure


def policy_for(domain: str, settings: Outbound, tls: Tls, cache: Cache,
               now: float | None = None) -> Outcome:
    """The policy in force for ``domain`` (8461 5.1), fetching a new one when the TXT id changed."""
    now = time.time() if now is None else now
    cached = cache.get(domain)
    live = cached if cached is not None and not cached.expired(now) else None
    policy_id = txt_id(domain, settings)
    if policy_id is None or (live is not None and live.id == policy_id):
        return Outcome(live)
    failed = cache.failed(domain, policy_id, now)
    if failed is not None:
        return Outcome(live, failed)
    try:
        policy = parse(domain, policy_id, fetch(domain, settings, tls), now)
    except PolicyError as exc:
        cache.fail(domain, policy_id, now, exc)
        log.warning("MTA-STS policy of %s not fetched (%s): %s", domain,
                    "keeping the cached one" if live else "delivering as without one", exc)
        return Outcome(live, exc)
    cache.put(policy)
    if cached is None or cached.id != policy.id:
        log.info("MTA-STS policy of %s: mode=%s mx=%s max_age=%d id=%s", domain, policy.mode,
                 ",".join(policy.mx), policy.max_age, policy.id)
    return Outcome(policy)
