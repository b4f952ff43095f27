"""What one delivery requires of a session's TLS, decided before a session is chosen: the
level it must reach and the name its certificate must be valid for, from a route's ``tls``,
tls.ini's lists and switches (MTA-STS and DANE add theirs in mailflow/relay/security.py).
The pool compares it with each idle session before reuse (mailflow/relay/client.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mailflow.config.settings import Outbound, Tls
from mailflow.relay.dane import Dane
from mailflow.relay.mx import Target
from mailflow.relay.tlspolicy import forced, no_tls
from mailflow.relay.tlsrpt import PolicyRef

#: TLS levels of a delivery, weakest first: ``verified`` is a certificate
#: checked against ``ca`` for the MX name (force_tls_hosts, rejectUnauthorized); ``mta-sts``
#: the same under a recipient domain's enforced policy; ``dane`` matched to TLSA records.
LEVELS = ("none", "opportunistic", "verified", "mta-sts", "dane")
RANK = {"none": 0, "opportunistic": 1, "verified": 2, "mta-sts": 3, "dane": 3}


@dataclass(frozen=True)
class TlsNeed:
    """What one delivery requires of a session's TLS, decided before a session is chosen.

    The pool compares it with each idle session (:meth:`Session.meets`) before reuse,
    so a session opened for a weaker need never carries mail that needs a stronger one:
    a plaintext session never takes mail that must have TLS at the same address.
    """

    want: bool  #: STARTTLS when offered (enable_tls, or must)
    must: bool  #: no delivery without TLS (force_tls_hosts, MTA-STS enforce, DANE)
    verify: bool  #: the certificate must verify against ``ca`` (force_tls_hosts, rejectUnauthorized)
    name: str  #: what it must be valid for: the MX host name, or the IP of an IP-literal MX
    level: str = "none"  #: the least level a session must have been opened at
    dane: Dane | None = None  #: DANE: the certificate must match these TLSA records instead
    policy: PolicyRef | None = None  #: the MTA-STS or DANE policy sessions are reported under
    soft: bool = False  #: MTA-STS testing: a certificate that fails is reported, then not verified

    @property
    def achieves(self) -> str:
        """The level a session that met this need at STARTTLS was opened at."""
        if self.dane is not None and self.dane.records:
            return "dane"
        if self.verify:
            return self.level if self.level in ("verified", "mta-sts") else "verified"
        return "opportunistic"


def tls_need(target: Target, domain: str, policy: Tls, settings: Outbound) -> TlsNeed:
    """tls.ini's own requirement for a target (MTA-STS and DANE are mailflow/relay/security.py)."""
    mx = target.mx
    if mx.tls is not None:  # a route's own choice for its next hop wins over tls.ini
        must, verify = mx.tls in ("required", "verify"), mx.tls == "verify"
        return TlsNeed(want=mx.tls != "none", must=must, verify=verify, name=mx.exchange,
                       level="verified" if verify else "opportunistic" if must else "none")
    must = forced(policy, target.ip, mx.exchange, domain)
    want = (settings.enable_tls or must) and not no_tls(policy, target.ip, mx.exchange, domain)
    verify = must or policy.rejectUnauthorized
    return TlsNeed(want=want, must=must, verify=verify, name=mx.exchange,
                   level="verified" if must else "none")


def why_tls(need: TlsNeed) -> str:
    """What asked for TLS, as a deferral names it."""
    if need.dane is not None:
        return "DANE"
    return "MTA-STS" if need.level == "mta-sts" else "force_tls_hosts"
