"""What a route's deliveries require of TLS: tls.ini, the domain's MTA-STS policy, DANE.

Decided once per route, before a session is chosen (:func:`for_route`), and then
per address (:meth:`RouteSecurity.need`).  DANE wins over MTA-STS for the same
MX host; both apply only to MX hosts found in DNS, never to a
``get_mx`` answer (a smarthost is the operator's choice, as in Postfix, where a
relayhost ignores the recipient domain's policy).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mailflow.config.settings import Outbound, Tls
from mailflow.config.state import state_dir
from mailflow.errors import TemporaryError, local_reply
from mailflow.relay import dane, mtasts, tlsrpt
from mailflow.relay.dane import Dane
from mailflow.relay.mx import MX, Target
from mailflow.relay.tlsneed import TlsNeed, tls_need
from mailflow.relay.tlsrpt import PolicyRef

log = logging.getLogger(__name__)

_caches: dict[Path, mtasts.Cache] = {}
_caches_lock = threading.Lock()


def sts_cache() -> mtasts.Cache:
    """This process's MTA-STS cache, under the state directory (kept across restarts)."""
    directory = state_dir() / "mta-sts"
    with _caches_lock:
        return _caches.setdefault(directory, mtasts.Cache(directory))


@dataclass
class RouteSecurity:
    domain: str
    tls: Tls
    settings: Outbound
    sts: mtasts.Policy | None = None  #: the recipient domain's policy in enforce or testing mode
    dane: dict[str, Dane | None] = field(default_factory=dict)  #: by MX host; DANE applies
    refused: dict[str, TemporaryError] = field(default_factory=dict)  #: MX hosts DANE rules out

    def allowed(self, targets: list[Target]) -> list[Target]:
        """The addresses this route may use; TemporaryError 4.7.5 when policy leaves none."""
        kept = []
        for target in targets:
            host = target.mx.exchange
            if host in self.refused:
                continue
            if self._sts_refuses(target):
                continue
            kept.append(target)
        if kept:
            return kept
        if self.refused:
            raise next(iter(self.refused.values()))
        raise TemporaryError(local_reply("4.7.5", f"no MX host of {self.domain} matches its MTA-STS "
                                         f"policy (mx: {', '.join(self.sts.mx if self.sts else ())})"))

    def _sts_refuses(self, target: Target) -> bool:
        """An MX host outside an MTA-STS policy: left out under enforce, reported under testing."""
        sts = self.sts
        host = target.mx.exchange
        if sts is None or not target.mx.from_dns or host in self.dane or sts.allows(host):
            return False
        tlsrpt.note(self._sts_ref(), host, target.ip, "validation-failure",
                    f"{host} does not match the policy's mx")
        if sts.mode == mtasts.ENFORCE:
            log.info("MTA-STS: %s is not an MX host of %s's policy: not used", host, self.domain)
            return True
        return False

    def _sts_ref(self) -> PolicyRef:
        assert self.sts is not None
        return PolicyRef(self.domain, "sts", tuple(line.strip() for line in
                                                   self.sts.text.strip().splitlines()))

    def need(self, target: Target) -> TlsNeed:
        base = tls_need(target, self.domain, self.tls, self.settings)
        host = target.mx.exchange
        if not target.mx.from_dns:
            return base
        found = self.dane.get(host)
        if found is not None:
            ref = PolicyRef(self.domain, "tlsa", tuple(_tlsa_text(r) for r in found.records))
            return TlsNeed(want=True, must=True, verify=False, name=host,
                           level="dane" if found.records else "opportunistic", dane=found, policy=ref)
        if self.sts is None:
            return base
        if self.sts.mode == mtasts.ENFORCE:
            return TlsNeed(want=True, must=True, verify=True, name=host, level="mta-sts",
                           policy=self._sts_ref())
        if base.verify:  # tls.ini already verifies: testing mode only reports
            return TlsNeed(want=base.want, must=base.must, verify=True, name=host, level=base.level,
                           policy=self._sts_ref())
        return TlsNeed(want=base.want, must=base.must, verify=base.want, name=host, level=base.level,
                       policy=self._sts_ref(), soft=True)


def _tlsa_text(record: dane.Tlsa) -> str:
    return f"{record.usage} {record.selector} {record.mtype} {record.data.hex()}"


def for_route(domain: str, mxs: tuple[MX, ...], tls: Tls, settings: Outbound, *,
              exempt: bool = False) -> RouteSecurity:
    """The route's requirements, looking up the MTA-STS policy and TLSA records it needs.

    ``exempt``: a TLS report, which must reach a domain whose TLS is broken (RFC 8460 5.3):
    tls.ini's own policy only."""
    security = RouteSecurity(domain=domain, tls=tls, settings=settings)
    from_dns = [mx for mx in mxs if mx.from_dns]
    if exempt or not from_dns or domain.startswith("["):
        return security
    if tls.mta_sts:
        outcome = mtasts.policy_for(domain, settings, tls, sts_cache())
        if outcome.policy is not None and outcome.policy.mode != mtasts.NONE:
            security.sts = outcome.policy
        if outcome.failure is not None:
            ref = PolicyRef(domain, "sts", ())
            tlsrpt.note(ref, f"mta-sts.{domain}", "-", outcome.failure.kind, str(outcome.failure))
    if tls.dane and tls.dane_resolver is not None and dane.mx_secure(domain, tls.dane_resolver):
        for mx in from_dns:
            port = mx.port or settings.mx_port
            try:
                found = dane.tlsa_for(mx.exchange, port, tls.dane_resolver)
            except TemporaryError as exc:
                ref = PolicyRef(domain, "tlsa", ())
                tlsrpt.note(ref, mx.exchange, "-", "dnssec-invalid", str(exc.reply))
                security.refused[mx.exchange] = exc
                continue
            if found is not None:
                security.dane[mx.exchange] = found
    return security
