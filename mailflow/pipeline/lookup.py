"""The ``mailflow.lookup_mx`` step: where each entry of a batch goes, in routes.

For each entry the ``send_email`` hook (DELAY puts it back, not a failure), then
``get_mx``; at most one DNS MX lookup for the whole batch, and only if some
entry needs it.  Entries that go the same way -- same MX list, same source
address and EHLO name -- form one :class:`Route`.  An entry refused or
deferred on the way gets its outcome here; whatever else goes wrong with one
entry defers that entry alone.  A first-seen domain's few entries, once this
step has written its site down and the site has other domains, go back to
``pending/`` to be claimed with that site's mail (``_join_site``); the queue
manager claims such newcomers of many domains together, so that learning their
sites costs one lookup, not one each (``NEWCOMERS``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from mailflow import config, hooks
from mailflow.codes import DELAY, DENY, DENYSOFT, OK
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.config.settings import Outbound
from mailflow.config.tenants import TENANT_NOTE
from mailflow.errors import DeliveryError, Reply, local_reply
from mailflow.observation import tally
from mailflow.queue import lending
from mailflow.queue.claims import BROKER_RETRY_MS, give_back, gone, here, holding, load
from mailflow.queue.hmail import HMail
from mailflow.queue.outcomes import crashed, delay_entry, fail_all, guarded
from mailflow.queue.sites import COMPANY, JOIN_MAX, NEWCOMERS, Sites, site_key, suffix_key
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay.answers import mx_from_hook
from mailflow.relay.mx import MX, query_mx
from mailflow.relay.security import for_route
from mailflow.relay.tlspolicy import names_domain
from mailflow.relay.tlsrpt import TLS_REPORT_NOTE
from mailflow.wire.payloads import Batch, Outcome, Parcel, Route
from mailflow.wire.requiretls import TLS_OPTIONAL_NOTE

log = logging.getLogger(__name__)

#: How long a DELAY from the send_email hook waits when it names no time.
DEFAULT_DELAY = 60.0

#: Send a route on (to this owner's workers) or a parcel (to any worker).
HandOn = Callable[[Route | Parcel], None]


def lookup(batch: Batch, hand_on: HandOn, lend_out: bool = False) -> None:
    """Route the batch's entries and ``hand_on`` each route, holding the claim meanwhile.

    ``lend_out``: other hosts deliver too, so each route goes as parcels any worker
    can take (mailflow/queue/lending.py), but for entries too large to carry.
    """
    spool = Spool(config.current().queue_path())
    here(spool, batch)
    with holding(spool, batch) as held:
        if held:
            routes = _routes(spool, batch)
            if len(routes) > 1:
                apart = (_claimed_apart(spool, route) for route in routes)
                routes = [route for route in apart if route is not None]
            for route in routes:
                for step in _deliveries(spool, route, lend_out):
                    _hand_on(spool, step, hand_on)
    spool.finish(batch.claim)
    if not held:
        raise gone(batch)


def _claimed_apart(spool: Spool, route: Route) -> Route | None:
    """The route in a claim of its own (None: its entries went meanwhile).

    Every step holds its claim's lock while it works -- a transmit for the whole of its
    sending -- so routes sharing one claim would go one after another, each next step
    holding a worker thread while it waits for the lock: a claim of first-seen domains that
    made fifty routes once held a hundred threads waiting, and deliveries fell to a
    twentieth.  Apart, each route also takes mail fed to it as it sends (feed.py)."""
    try:
        claim, got = spool.split(route.batch.claim, list(route.batch.names))
    except OSError as exc:  # no room for a directory: the routes go one after another
        log.warning("could not give a route of claim %s a claim of its own (%s): its routes "
                    "go one at a time", route.batch.claim, exc.strerror or exc)
        return route
    if not got:
        return None
    return dataclasses.replace(route, batch=dataclasses.replace(route.batch.part(got), claim=claim))


def _deliveries(spool: Spool, route: Route, lend_out: bool) -> list[Route | Parcel]:
    if not lend_out:
        return [route]
    parcels, local = lending.pack(spool, route)
    if parcels:
        lending.lend(spool, route.batch.claim, [n for p in parcels for n in p.batch.names])
    return [*parcels, *([local] if local else [])]


class _Dns:
    """The batch's answer where no get_mx receiver gives one -- its routes.ini route or
    relay_host, else DNS -- asked at most once and only if some entry needs it."""

    def __init__(self, domain: str):
        self.domain = domain
        self.answer: list[MX] | DeliveryError | None = None

    def mx(self, settings: Outbound) -> list[MX]:
        if self.answer is None:
            route = config.current().route_for(self.domain)
            try:
                self.answer = query_mx(self.domain, settings) if route is None else mx_from_hook(
                    [{**mx, "port": mx["port"] or settings.mx_port} for mx in route.answer()],
                    settings.mx_port)
            except DeliveryError as exc:
                self.answer = exc
        if isinstance(self.answer, DeliveryError):
            raise self.answer
        return self.answer


def _routes(spool: Spool, batch: Batch) -> list[Route]:
    """Every entry either in a route (by MX list and source) or given its outcome.

    A site batch (entries of several domains, mailflow/queue/sites.py) makes one route of
    the domains that still share an MX set, unless a domain needs what the others may not
    (a TLS policy, a shaping rule of its own): those go alone.  Entries of different egress
    pools (their tenants', their routes') are routes apart.  Each domain's site is
    written down for the queue manager's next claims."""
    cfg = config.current()
    settings = cfg.outbound
    sites = Sites(spool.root)
    dns: dict[str, _Dns] = {}
    groups: dict[tuple[Any, ...], list[str]] = {}
    answers: dict[tuple[Any, ...], tuple[list[MX], set[str]]] = {}
    seen: dict[str, str | None] = {}
    looked: set[str] = set()  # domains whose site was looked at: once each, not per entry
    known: dict[str, bool] = {}  # whether the queue manager could have known the site
    pools: dict[tuple[str, str | None], str | None] = {}
    loaded: dict[str, HMail] = {}
    for hmail in load(spool, batch):
        loaded[hmail.filename] = hmail
        domain = batch.domain or hmail.name.domain
        with guarded(spool, hmail, settings):
            found = _route(spool, hmail, dns.setdefault(domain, _Dns(domain)), settings)
            if found is None:
                continue
            mxs, bind, helo = found
            exempt = _exempt(hmail)
            if domain not in looked:  # a stat of its site's file: once a batch, not 50 times
                looked.add(domain)
                if batch.site is not None or not sites.fresh(domain):
                    known[domain] = sites.known(domain)
                    seen[domain] = _site_of(domain, mxs, exempt, cfg)
            tenant = str(hmail.todo.notes.get(TENANT_NOTE) or "") or None
            if bind or any(mx.bind for mx in mxs):
                pool = None
            else:  # once per domain and tenant of the batch, not per entry
                if (domain, tenant) not in pools:
                    pools[domain, tenant] = pool_for(tenant, domain, cfg)
                pool = pools[domain, tenant]
            if batch.site is None:
                key: tuple[Any, ...] = (tuple(mxs), bind, helo, exempt, pool, tenant)
            else:  # the same MX hosts in any order; a domain with needs of its own alone
                key = (frozenset(mxs), bind, helo, exempt, pool, tenant, seen[domain] or domain)
            answers.setdefault(key, (mxs, set()))[1].add(domain)
            groups.setdefault(key, []).append(hmail.filename)
    joining = set()
    for domain, site in seen.items():
        if sites.learn(domain, site) and _may_join(batch, domain, site, known, cfg):
            joining.add(domain)
    routes = []
    for key, names in groups.items():
        mxs, domains = answers[key]
        if len(names) <= JOIN_MAX and domains <= joining:
            _join_site(spool, [loaded[n] for n in names])
            continue
        part = batch.part(names)
        if len(domains) == 1:  # one domain's route, as from a batch of its own
            part = dataclasses.replace(part, domain=next(iter(domains)), site=None)
        elif batch.site == NEWCOMERS:  # newcomers found to share a site: that site's route
            part = dataclasses.replace(part, site=key[-1])
        routes.append(Route(batch=part, mx=tuple(mxs), bind=key[1], helo=key[2], tls_exempt=key[3],
                            pool=key[4], tenant=key[5]))
    return routes


def _exempt(hmail: HMail) -> bool:
    """A TLS report, or a message whose sender said TLS-Required: No: tls.ini's policy only."""
    return bool(hmail.todo.notes.get(TLS_REPORT_NOTE) or hmail.todo.notes.get(TLS_OPTIONAL_NOTE))


def same_way(spool: Spool, route: Route, hmail: HMail, cfg: Config,
             answers: dict[str, _Dns] | None = None) -> bool | None:
    """Whether an entry fed into ``route``'s claim while it sends (mailflow/queue/feed.py)
    goes the route's way: through the hooks this step calls for every entry (send_email,
    get_mx) to the same MX hosts, from the same source and pool, with the same TLS
    exemption, for the same tenant.  None: the hooks gave it its outcome here (a DELAY, a
    refusal), as this step would have.  ``answers``: the DNS answers of one look at the
    fed entries, by domain (asked once per domain, as in a batch)."""
    settings = cfg.outbound
    domain = hmail.name.domain
    dns = (answers if answers is not None else {}).setdefault(domain, _Dns(domain))
    found = None
    with guarded(spool, hmail, settings):
        found = _route(spool, hmail, dns, settings)
    if found is None:
        return None
    mxs, bind, helo = found
    tenant = str(hmail.todo.notes.get(TENANT_NOTE) or "") or None
    pool = None if bind or any(mx.bind for mx in mxs) else pool_for(tenant, domain, cfg)
    return (frozenset(mxs) == frozenset(route.mx) and bind == route.bind and helo == route.helo
            and _exempt(hmail) == route.tls_exempt and pool == route.pool and tenant == route.tenant)


def _may_join(batch: Batch, domain: str, site: str | None, known: dict[str, bool], cfg: Config) -> bool:
    """Whether ``domain``'s entries of this batch should go back to be claimed with its
    site's: a domain batch or a batch of newcomers (the queue manager did not know the
    site), whose site this lookup is the first to write down, and which another domain
    was placed at lately."""
    return (batch.site in (None, NEWCOMERS) and bool(site) and not known.get(domain, True)
            and cfg.route_for(domain) is None and COMPANY.joins(str(site), domain))


def _join_site(spool: Spool, hmails: list[HMail]) -> None:
    """Give a first-seen domain's few entries back to pending/, as due as they were: the
    queue manager, which now reads their site, claims them with that site's mail -- a
    batch, a lookup and a connection shared -- rather than a batch of their own (a claim
    and three tasks for a message or two: the long tail of a sending platform's traffic).
    The next lookup finds the site written down and routes them as it finds them."""
    back = sum(give_back(spool, [hmail], hmail.name.next_attempt_ms) for hmail in hmails)
    log.debug("%d entries of %s go with their site's mail", back, hmails[0].name.domain)


def pool_for(tenant_name: str | None, domain: str, cfg: Config) -> str | None:
    """The egress pool mail leaves from: its tenant's, else its route's, else egress.ini's
    default_pool (None: this host's own address and name)."""
    tenant = cfg.tenants.by_name.get(tenant_name or "")
    if tenant is not None and tenant.pool is not None:
        return tenant.pool
    return cfg.route_pool(domain) or cfg.egress.default_pool


def _site_of(domain: str, mxs: list[MX], exempt: bool, cfg: Config) -> str | None:
    """The site ``domain``'s mail may share with other domains': its MX set, unless it needs
    what they may not -- an MTA-STS or DANE policy, a tls.ini rule naming it, a shaping
    rule of its own, a TLS report's exemption.  None: it travels alone.  Where a shaping
    ``[mx:SUFFIX]`` rule covers all its MX hosts, the rule's site: domains with other MX
    sets under the same provider are claimed with it (and routed apart, by MX set)."""
    if exempt or domain.startswith("["):
        return None
    if any(rule.kind == "domain" and rule.matches(domain, "", None) for rule in cfg.shaping):
        return None
    if names_domain(cfg.tls_outbound, domain):
        return None
    security = for_route(domain, tuple(mxs), cfg.tls_outbound, cfg.outbound)
    if security.sts is not None or security.dane or security.refused:
        return None
    for rule in cfg.shaping:  # the operator's word that these hosts are one provider
        if rule.kind == "mx" and mxs and all(rule.matches(domain, mx.exchange, None) for mx in mxs):
            return suffix_key(rule.name)
    return site_key(mxs)


def _route(spool: Spool, hmail: HMail, dns: _Dns, settings: Outbound
           ) -> tuple[list[MX], str | None, str | None] | None:
    answer = hooks.decide(hooks.send_email, hmail=hmail)
    if answer.code is DELAY:
        delay_entry(spool, hmail, _seconds(answer.value))
        return None
    if answer.failed:  # a plugin's error: deferred on the schedule, like any temporary failure
        fail_all(spool, hmail, local_reply("4.3.0", str(answer.value)), Outcome(), settings)
        return None
    answer = hooks.decide(hooks.get_mx, hmail=hmail, domain=dns.domain)
    if answer.failed:
        fail_all(spool, hmail, local_reply("4.3.0", str(answer.value)), Outcome(), settings)
        return None
    if answer.code is DENY:
        fail_all(spool, hmail, Reply(550, f"5.1.2 {answer.value or 'get_mx refused delivery'}"),
                 Outcome(), settings)
        return None
    if answer.code is DENYSOFT:
        fail_all(spool, hmail, Reply(451, f"4.1.2 {answer.value or 'get_mx deferred delivery'}"),
                 Outcome(), settings)
        return None
    try:
        mxs = mx_from_hook(answer.value, settings.mx_port) if answer.code is OK else dns.mx(settings)
    except DeliveryError as exc:
        fail_all(spool, hmail, exc.reply, Outcome(), settings)
        return None
    except ValueError as exc:
        fail_all(spool, hmail, local_reply("4.3.5", f"bad get_mx answer: {exc}"), Outcome(), settings)
        return None
    notes = hmail.todo.notes
    return mxs, notes.get("outbound_ip"), notes.get("outbound_helo")


def _seconds(value: Any) -> float:
    """A hook's DELAY value as seconds; anything unusable means the default, with a log line."""
    if value is None:
        return DEFAULT_DELAY
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < 10 * 365 * 86400:
        log.error("send_email hook answered DELAY with %r, not seconds: waiting %d s", value,
                  DEFAULT_DELAY)
        return DEFAULT_DELAY
    return seconds


def _hand_on(spool: Spool, route: Route | Parcel, hand_on: HandOn) -> None:
    """Hand a route on; if that fails, its entries get an outcome rather than a lease wait."""
    try:
        hand_on(route)
        tally.count("handed_on", len(route.batch.names))
    except ConfigError as exc:  # no key to seal get_mx credentials with
        for hmail in load(spool, route.batch):
            crashed(spool, hmail, exc, config.current().outbound)
    except Exception:  # the broker did not take it: the queue manager claims them again
        log.exception("could not hand %d entries for %s on; due again shortly",
                      len(route.batch.names), route.domain)
        give_back(spool, load(spool, route.batch), now_ms() + BROKER_RETRY_MS)
