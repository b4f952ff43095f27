"""Where the delivery steps meet shaping.ini's rules (mailflow/relay/shaping.py decides).

Before a connection: a lease under every matching rule's ``max_connections`` (or
:class:`~mailflow.errors.Throttled`).  Before each message: the rates -- places for the
batch's next messages taken at once, up to ``TAKE_MAX``, and used within CREDIT_TTL --
and a fresh connection after ``max_messages_per_connection``.  After each message: a reply named
in ``suspend_on`` suspends its rule, and one whose class asks to slow down puts its site in
backoff for its source (mailflow/relay/backoff.py), enforced from then on as one more rule.
A wait is never spent in a thread: the entries go back to pending/ due when the rule
allows, not counted as failures.
"""

from __future__ import annotations

import logging
import threading
import time

from mailflow import config
from mailflow.classify.actions import Policy
from mailflow.classify.rules import classify
from mailflow.config.loader import Config
from mailflow.config.shaping import Rule
from mailflow.errors import Reply, Throttled
from mailflow.observation import tally
from mailflow.observation.sampler import SAMPLER
from mailflow.relay import backoff
from mailflow.relay.backoff import Backoffs, Meter, key_of, site_of
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
        self.policy: Policy = cfg.classify_actions.backoff
        self.shaper: Shaper | None = shaper_for(cfg.shared_redis()) if self.rules or self.policy.on \
            else None
        #: whether anything is decided per message: shaping.ini's rules, or backoff's watch
        self.watching = bool(self.rules) or self.policy.on
        self._cfg = cfg
        #: places taken for the batch's next messages, by the rules they were taken under:
        #: (how many, until when on the monotonic clock)
        self._credit: dict[tuple[str, ...], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def matched(self, mx_host: str, source: str | None) -> list[Rule]:
        """shaping.ini's rules over the connection, and its site's backoff when one is in force."""
        found = rules_for(self.rules, self.domain, mx_host, source, self.tenant) if self.rules else []
        if self.shaper is not None and self.policy.on:
            states = backoffs(self.shaper).states()
            if states:
                key = key_of(site_of(mx_host), source_label(self._cfg, source))
                state, now = states.get(key), backoff_now()
                if state is not None and state.active(now, self.policy):
                    found.append(backoff.rule(key, state, now, self.policy))
        return found

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
        """Seconds the route must now wait: a reply in a rule's ``suspend_on`` suspends it, one
        of a suspend class may suspend its site for the source."""
        rules = [r for r in self.matched(session.host, session.key.bind) if r.suspend_on]
        pause = 0.0
        for rule in rules:
            if any(rule.suspends_on(str(reply)) for reply in outcome.results.values()):
                assert self.shaper is not None
                self.shaper.suspend(rule)
                pause = max(pause, float(rule.suspend_for))
        if self.policy.on:
            key = key_of(site_of(session.host), source_label(self._cfg, session.key.bind))
            METER.count(key)
            for reply in outcome.results.values():
                if reply.code >= 400:
                    pause = max(pause, self.observe(session.host, session.key.bind, reply))
        return pause

    def observe(self, mx_host: str, source: str | None, reply: Reply) -> float:
        """A refusal from ``mx_host`` to ``source``: when its class asks to slow down, the site
        goes into backoff (or deeper); seconds to wait when it is now suspended."""
        cls = classify(reply, mx_host, self._cfg.classify)[0]
        policy = self.policy
        if self.shaper is None or (cls not in policy.classes and cls not in policy.suspend):
            return 0.0
        try:
            return self._slow_down(mx_host, source, reply, cls)
        except OSError as exc:  # the local store unwritable: the delivery itself goes on
            log.warning("backoff: cannot record %s's %s reply: %s", mx_host, cls, exc)
            return 0.0

    def _slow_down(self, mx_host: str, source: str | None, reply: Reply, cls: str) -> float:
        assert self.shaper is not None
        policy = self.policy
        site, label = site_of(mx_host), source_label(self._cfg, source)
        key, now = key_of(site, label), backoff_now()
        if cls in policy.classes:
            ruled = rules_for(self.rules, self.domain, mx_host, source, self.tenant)
            conns, rate = normal_limits(ruled, self._cfg, key)
            state = self.shaper.change_backoff(key, lambda st: backoff.hit(st, now, policy, conns, rate),
                                               lambda st: keep(st, now, policy))
            log.warning("backoff: %s sending to %s at %d connections and %d messages a minute "
                        "after %r (%s), for %d s", label, site, *state.limits(now, policy),
                        str(reply)[:120], cls, (state.ends_ms(policy) - now) // 1000)
        else:
            state = self.shaper.change_backoff(key, lambda st: backoff.strike(st, now, policy),
                                               lambda st: keep(st, now, policy))
        backoffs(self.shaper).known(key, state)
        if state.suspended_ms > now:
            wait = (state.suspended_ms - now) / 1000
            rule = backoff.rule(key, state, now, policy)
            self.shaper.suspend_until(rule, state.suspended_ms)
            log.warning("backoff: %s suspended from sending to %s for %.0f s after %d %s replies",
                        label, site, wait, policy.suspend_after, cls)
            return wait
        return 0.0


#: what this process sent to each site from each source lately (a backoff's normal rate)
METER = Meter()
_BACKOFFS: dict[int, Backoffs] = {}


def backoffs(shaper: Shaper) -> Backoffs:
    """The backoffs in force as this process knows them (one view per store)."""
    found = _BACKOFFS.get(id(shaper))
    if found is None:
        found = _BACKOFFS.setdefault(id(shaper), Backoffs(shaper.backoffs))
    return found


def backoff_now() -> int:
    return int(time.time() * 1000)


def source_label(cfg: Config, bind: str | None) -> str:
    """A source as backoffs name it: its egress.ini name, else its address, else ``default``."""
    if bind is None:
        return "default"
    for source in cfg.egress.sources.values():
        if source.address == bind:
            return source.name
    return bind


def normal_limits(rules: list[Rule], cfg: Config, key: str) -> tuple[int, int]:
    """The connections and the rate (a minute) a backoff halves: the tightest shaping.ini rule
    over the connection's, else the pool's limit per destination and what this process has
    been sending at."""
    conns = [r.max_connections for r in rules if r.max_connections]
    rates = [r.messages_per_minute for r in rules if r.messages_per_minute] + \
        [max(1, r.messages_per_hour // 60) for r in rules if r.messages_per_hour]
    return (min(conns) if conns else cfg.outbound.pool_concurrency_max,
            min(rates) if rates else max(1, METER.per_minute(key)))


def keep(state: backoff.State, now_ms: int, policy: Policy) -> bool:
    """Whether a backoff's state still matters: in force, or counting strikes."""
    return state.active(now_ms, policy) or any(t > now_ms - policy.suspend_window * 1000
                                               for t in state.strikes)


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


def in_force(cfg: Config) -> dict[str, tuple[int, float]]:
    """Every backoff in force now, ``<site>/<source>`` -> (seconds until the normal limits
    hold again, the share of the normal rate allowed): for ``queue stats`` and the metrics."""
    policy = cfg.classify_actions.backoff
    if not policy.on:
        return {}
    now = backoff_now()
    states = shaper_for(cfg.shared_redis()).backoffs()
    return {key: (max(0, (st.ends_ms(policy) - now) // 1000), st.fraction(now, policy))
            for key, st in sorted(states.items()) if st.active(now, policy)}
