"""Where the delivery steps meet shaping.ini's rules (mailflow/relay/shaping.py decides).

Before a connection: a lease under every matching rule's ``max_connections`` (or
:class:`~mailflow.errors.Throttled`).  Before each message: the rates -- places for the
batch's next messages taken at once, up to ``TAKE_MAX``, and used within CREDIT_TTL --
and a fresh connection after ``max_messages_per_connection``.  After each message: a reply named
in ``suspend_on`` suspends its rule.  A wait is never spent in a thread: the entries
go back to pending/ due when the rule allows, not counted as failures.
"""

from __future__ import annotations

import logging
import threading
import time

from mailflow import config
from mailflow.config.loader import Config
from mailflow.config.shaping import Rule
from mailflow.errors import Throttled
from mailflow.observation import tally
from mailflow.observation.sampler import SAMPLER
from mailflow.relay.client import Session
from mailflow.relay.shaping import CREDIT_TTL, Lease, Shaper, rules_for, shaper_for
from mailflow.wire.payloads import Outcome

log = logging.getLogger(__name__)

#: what :meth:`RouteShaping.before` answers when the session has sent its share
NEW_CONNECTION = -1.0


#: Rate places taken at once for a batch, at most (mailflow/relay/shaping.py CREDIT_TTL).
TAKE_MAX = 50


class RouteShaping:
    """One batch's shaping: the rules, and the rate places it has taken but not yet used."""

    def __init__(self, cfg: Config, domain: str, tenant: str | None = None):
        self.rules = cfg.shaping
        self.domain = domain
        self.tenant = tenant  #: the batch's tenant: its [tenant:NAME] rules hold too
        self.shaper: Shaper | None = shaper_for(cfg.shared_redis()) if self.rules else None
        #: places taken for the batch's next messages, by the rules they were taken under:
        #: (how many, until when on the monotonic clock)
        self._credit: dict[tuple[str, ...], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def matched(self, mx_host: str, source: str | None) -> list[Rule]:
        return rules_for(self.rules, self.domain, mx_host, source, self.tenant) if self.rules else []

    def destination(self, mx_host: str, source: str | None) -> str:
        """The label of an attempt in the metrics: its first shaping rule, or ``other`` (a
        bounded set, whatever the number of domains)."""
        rules = self.matched(mx_host, source)
        return rules[0].name if rules else "other"

    def lease(self, mx_host: str, source: str | None) -> Lease | None:
        """A place for one more connection, or Throttled."""
        rules = self.matched(mx_host, source)
        if not rules or self.shaper is None:
            return None
        got = self.shaper.lease(rules)
        if isinstance(got, float):
            throttled(rules, "connections")
            raise Throttled(got, f"shaping: {', '.join(r.name for r in rules)} at its limit "
                            f"(connections or suspended); due again in {got:.0f} s",
                            held_by=hold_reason(rules))
        return got

    def before(self, session: Session, wanted: int = 1) -> float:
        """0 to send the next message now, NEW_CONNECTION, or seconds to wait.  ``wanted``:
        the messages the batch still has, for which places are taken at once."""
        rules = self.matched(session.host, session.key.bind)
        if not rules or self.shaper is None:
            return 0.0
        if session.lease is not None:
            session.lease.renew()
        per_connection = [r.max_messages_per_connection for r in rules if r.max_messages_per_connection]
        if per_connection and session.messages >= min(per_connection):
            return NEW_CONNECTION
        return self._place(rules, max(1, min(wanted, TAKE_MAX)))

    def _place(self, rules: list[Rule], wanted: int) -> float:
        """A rate place for one message: one the batch already holds, or a take of several."""
        assert self.shaper is not None
        key = tuple(r.name for r in rules)
        with self._lock:
            count, until = self._credit.get(key, (0, 0.0))
            if count > 0 and time.monotonic() < until:
                self._credit[key] = (count - 1, until)
                return 0.0
            until = time.monotonic() + CREDIT_TTL
            granted, wait = self.shaper.take(rules, wanted)
            if granted <= 0:
                throttled(rules, "rate")
                return wait
            self._credit[key] = (granted - 1, until)
            return 0.0

    def after(self, session: Session, outcome: Outcome) -> float:
        """Seconds the route must now wait: a reply in a rule's ``suspend_on`` suspends it."""
        rules = [r for r in self.matched(session.host, session.key.bind) if r.suspend_on]
        pause = 0.0
        for rule in rules:
            if any(rule.suspends_on(str(reply)) for reply in outcome.results.values()):
                assert self.shaper is not None
                self.shaper.suspend(rule)
                pause = max(pause, float(rule.suspend_for))
        return pause


def throttled(rules: list[Rule], why: str) -> None:
    tally.count("throttled")
    for rule in rules:
        SAMPLER.add(f"throttled:{rule.name}")
    log.debug("shaping: %s (%s)", ", ".join(r.name for r in rules), why)


def hold_reason(rules: list[Rule]) -> str:
    """What ``queue list`` says held an entry back: ``shaping:domain:x`` (rules comma separated)."""
    return "shaping:" + ",".join(r.name for r in rules)


def held(domain: str) -> tuple[float, str]:
    """For the queue manager: how long a domain's mail must wait before it is even claimed --
    one of its ``[domain:…]`` rules (the only ones known before the MX lookup) suspended,
    or its window full.  A look only: no place is taken.  A shared store that does not
    answer holds nothing back."""
    cfg = config.current()
    rules = [r for r in cfg.shaping if r.kind == "domain" and r.matches(domain, "", None)]
    if not rules:
        return 0.0, ""
    wait = shaper_for(cfg.shared_redis()).take(rules, 0)[1]
    if wait > 0:
        throttled(rules, "held before the claim")
    return wait, hold_reason(rules)
