"""The ``mailflow.acquire_connection`` step: a ready session to the first MX address that takes one.

The session is parked in this worker process's pool and ``mailflow.transmit``
is handed its ticket, on this worker node's own queue (a socket cannot cross a
task boundary; see docs/architecture.md).  When every address is at its
connection limits the step does not wait in its thread: it leaves a waiter in
the pool, which sends the step again to this node when a slot frees
(mailflow/relay/pool.py says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mailflow import config
from mailflow.config.egress import NoRoom
from mailflow.config.loader import Config
from mailflow.errors import DeliveryError, NothingToDo, Throttled, local_reply
from mailflow.observation import tally
from mailflow.pipeline.shaping import RouteShaping
from mailflow.queue.claims import BROKER_RETRY_MS, give_back, gone, here, holding, load, still_claimed
from mailflow.queue.entry import BadName
from mailflow.queue.hmail import HMail
from mailflow.queue.outcomes import crashed, fail_each
from mailflow.queue.spool import Spool, now_ms
from mailflow.relay import warmup
from mailflow.relay.client import Session
from mailflow.relay.mx import Target, targets
from mailflow.relay.pool import POOL, SLOT_WAIT, NoSlot
from mailflow.relay.security import for_route
from mailflow.wire.payloads import Batch, Route, accepted
from mailflow.wire.seal import SealError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Send ``mailflow.transmit`` with the route and the ticket of its parked session.
HandOn = Callable[[Route, str], None]
#: Send this step again, to this node, for a route that waited for a slot.
Again = Callable[[Route], None]


def acquire(route: Route, hand_on: HandOn, again: Again | None) -> None:
    """Get the route a session and hand it on; ``again`` None means no node to be woken on
    (called eagerly, not by a worker): then the thread waits for a slot, as a client would."""
    cfg = config.current()
    spool = Spool(cfg.queue_path())
    here(spool, route.batch)
    session = None
    with holding(spool, route.batch) as held:
        present = held and still_claimed(spool, route.batch)
        if present:
            session = _session(spool, route, partial(load, spool, route.batch), cfg, again)
    if session is None:
        spool.finish(route.batch.claim)
        if not present:
            raise gone(route.batch)
        return
    _hand_on(spool, route, session, hand_on, cfg)


def route_from(data: Any, cfg: Config, task: str) -> Route:
    """The route a task was given; NothingToDo when it is not this queue's (a log line), or
    after deferring its entries when its get_mx password cannot be opened here."""
    def defer_all(batch: Batch, exc: SealError) -> None:
        spool = Spool(cfg.queue_path())
        here(spool, batch)
        with holding(spool, batch) as held:
            for hmail in load(spool, batch) if held else []:
                crashed(spool, hmail, exc, cfg.outbound)
        spool.finish(batch.claim)
    return payload_from(Route.from_json, data, cfg, task, defer_all)


def payload_from(parse: Callable[[Any, Path], T], data: Any, cfg: Config, task: str,
                 sealed: Callable[[Batch, SealError], None]) -> T:
    """``parse(data, config dir)``; NothingToDo when the payload is not well formed (with a
    log line), or after ``sealed`` dealt with its entries when its get_mx password cannot
    be opened with this host's key."""
    batch = accepted(Batch.from_json, data, task)
    try:
        return parse(data, cfg.directory)
    except BadName as exc:
        log.error("%s refused a payload that is not one of the queue's batches: %s", task, exc)
        raise NothingToDo(f"refused: {exc}") from None
    except SealError as exc:
        log.error("%s cannot open the get_mx credentials of a batch of %s here: %s", task,
                  batch.owner, exc)
        sealed(batch, exc)
        raise NothingToDo(f"its get_mx credentials cannot be opened here: {exc}") from None


def session_for(route: Route, cfg: Config, *, wait: float = 0.0, evict: bool = True) -> Session:
    """Resolve the route's MX addresses and get a session from the pool (``evict``: see
    Pool.acquire).

    Raises DeliveryError (NoSlot among them: every address at its limits).
    """
    settings, tls = cfg.outbound, cfg.tls_outbound
    security = for_route(route.domain, route.mx, tls, settings, exempt=route.tls_exempt)
    found = security.allowed(targets(list(route.mx), settings))
    bind, helo, source = source_for(found[0], route, cfg)
    shaping = RouteShaping(cfg, route.domain, route.tenant)
    rules = [r.name for r in shaping.matched(found[0].mx.exchange, bind)]
    if rules:  # the destination's connection, idle a moment, its place under the rules kept
        kept = POOL.take_leased(found, helo=helo, bind=bind, need_for=security.need, rules=rules)
        if kept is not None:
            POOL.serve(kept, route.turn)
            return kept
    lease = shaping.lease(found[0].mx.exchange, bind)
    try:
        session = POOL.acquire(found, helo=helo, bind=bind, settings=settings, tls=tls,
                               domain=route.domain, wait=wait, evict=evict, need_for=security.need,
                               grant=route.slot_grant)
    except BaseException as exc:
        if lease is not None:
            lease.release()
        if isinstance(exc, DeliveryError) and exc.host and exc.reply.code >= 400 and shaping.watching:
            shaping.observe(exc.host, bind, exc.reply)  # "421 too many connections" at the greeting
        raise
    if lease is not None:
        if session.lease is None:
            session.lease = lease
        else:
            lease.release()
    session.source = source
    POOL.serve(session, route.turn)
    return session


def warm(session: Session, route: Route, cfg: Config) -> tuple[str, str, str] | None:
    """Before each message over ``session``: count it against its source's warm-up
    allowance; None when it may go, else the pool's next source with room (Throttled when
    none has any)."""
    source = cfg.egress.sources.get(session.source) if session.source else None
    if source is None or warmup.take(source):
        return None
    chosen = next_source(session.target, route, cfg)
    if chosen is None:
        raise Throttled(warmup.seconds_to_tomorrow(), f"source {source.name} has sent its warm-up "
                        "allowance for today", f"warmup:{source.name}")
    return chosen


def next_source(target: Target, route: Route, cfg: Config) -> tuple[str, str, str] | None:
    """The next source of the route's egress pool for a new connection to ``target`` (weights
    apply per connection), or None when a bind is set or there is no pool."""
    bind, helo, name = source_for(target, route, cfg)
    return (bind, helo, name) if bind is not None and name is not None else None


def source_for(target: Target, route: Route, cfg: Config) -> tuple[str | None, str, str | None]:
    """Source address, EHLO name and egress source: get_mx's bind/bind_helo, else the
    route's, else the next source of its egress pool (in weighted turn), else defaults."""
    bind = target.mx.bind or route.bind or None
    if bind is None and route.pool is not None:
        try:
            chosen = cfg.egress.choose(route.pool, warmup.has_room)
        except KeyError:
            raise DeliveryError(local_reply("4.3.5", f"egress pool {route.pool} is not in this "
                                            "host's egress.ini")) from None
        except NoRoom:  # not a failure: due again when the next UTC day opens the caps
            raise Throttled(warmup.seconds_to_tomorrow(), f"every source of egress pool {route.pool} "
                            "has sent its warm-up allowance for today",
                            f"warmup:{route.pool}") from None
        return chosen.address, chosen.ehlo, chosen.name
    helo = target.mx.bind_helo or route.helo or cfg.me
    return bind, helo, None


def _session(spool: Spool, route: Route, entries: Callable[[], list[HMail]], cfg: Config,
             again: Again | None) -> Session | None:
    """A session for the route, or None once every entry has its outcome or a waiter is set;
    ``entries`` reads the claim's entries, wanted only when no session is had."""
    settings = cfg.outbound
    try:
        return session_for(route, cfg, wait=0.0 if again else SLOT_WAIT)
    except Throttled as exc:  # not a failure: due again when the rule allows
        back = give_back(spool, entries(), now_ms() + int(exc.wait * 1000), exc.held_by)
        log.info("%s: %d entries for %s due again in %.0f s", exc.reply.text, back, route.domain, exc.wait)
    except NoSlot as exc:
        if again is not None:
            _wait_for_slot(spool, route, entries, exc, again, cfg)
        else:
            fail_each(spool, entries(), exc, settings)
    except DeliveryError as exc:
        fail_each(spool, entries(), exc, settings)
    except Exception as exc:
        for hmail in entries():
            crashed(spool, hmail, exc, settings)
    return None


def _wait_for_slot(spool: Spool, route: Route, entries: Callable[[], list[HMail]], exc: NoSlot,
                   again: Again, cfg: Config) -> None:
    """Come back when a slot frees; after SLOT_WAIT in all, defer the route (4.4.5)."""
    waiting = still_waiting(route)
    if waiting is None:
        fail_each(spool, entries(), exc, cfg.outbound)
        return
    POOL.wait_for_slot(exc.ips, lambda grant: again(waiting.granted(grant)), cfg.outbound, turn=route.turn)


def still_waiting(route: Route) -> Route | None:
    """The route, marked with when it began to wait for a slot; None after SLOT_WAIT in all."""
    since = route.slot_wait_since
    now = time.time()
    if since is None or since > now:
        since = now
    if now - since >= SLOT_WAIT:
        return None
    return route.waiting_since(since)


def _hand_on(spool: Spool, route: Route, session: Session, hand_on: HandOn, cfg: Config) -> None:
    """Park the session for transmit; if the hand-on fails, nothing stays held."""
    ticket = POOL.park(session)
    try:
        hand_on(route, ticket)
        tally.count("handed_on", len(route.batch.names))
        return
    except Exception:
        log.exception("could not hand the route for %s to transmit; due again shortly", route.domain)
    parked = POOL.collect(ticket)
    if parked is not None:
        POOL.release(parked, cfg.outbound)
    with holding(spool, route.batch) as held:
        if held:
            give_back(spool, load(spool, route.batch), now_ms() + BROKER_RETRY_MS)
    spool.finish(route.batch.claim)
