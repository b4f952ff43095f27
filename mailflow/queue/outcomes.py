"""What happens to an entry after an attempt: delivered, deferred, failed.

Accepted recipients fire ``delivered``; temporarily refused ones stay in the
entry, rescheduled by ``temp_fail_intervals`` through the ``deferred`` hook
and keeping their failure count; permanently refused ones move to
``failed/`` with their status, for their bounce.  New files are durable
before the active file is removed, so a crash in between can repeat an
attempt but never lose a recipient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from mailflow import config, hooks, logs
from mailflow.classify.rules import classify
from mailflow.codes import CONT, DENYSOFT, OK
from mailflow.config.settings import Outbound
from mailflow.config.shaping import matching
from mailflow.config.tenants import labels
from mailflow.errors import DeliveryError, Reply, local_reply
from mailflow.observation import tally
from mailflow.observation.sampler import observe_delivery, tls_counter
from mailflow.queue import bounces, countdowns, counters, events
from mailflow.queue.hmail import HMail
from mailflow.queue.spool import FAILED, PENDING, Spool, now_ms
from mailflow.suppress import store as suppression
from mailflow.wire.dsnparams import DSN_NOTE
from mailflow.wire.payloads import Outcome

log = logging.getLogger(__name__)


def reply_class(reply: Reply, host: str = "") -> str:
    """The reply's class (mailflow/classify): classify.ini's rules, then the shipped ones."""
    return classify(reply, host, config.current().classify)[0]


def destination_label(domain: str, host: str) -> str:
    """A bounded label for where a reply came from: the first shaping rule over it, else
    ``other`` (as the attempt-time metric labels it)."""
    rules = matching(config.current().shaping, domain, host)
    return rules[0].name if rules else "other"


def _classify(reply: Reply, host: str, retried: dict[str, list[int]]) -> str:
    """What becomes of a recipient: a permanent refusal of a class with a retry schedule of its
    own (``retry.QuotaIssues``: a full mailbox, which RFC 5321 4.5.3.1.10 says to treat as
    temporary however it is answered) is retried on it."""
    if 200 <= reply.code < 300:
        return "delivered"
    if reply.is_permanent and not (retried and reply_class(reply, host) in retried):
        return "failed"
    return "deferred"


def record(spool: Spool, hmail: HMail, outcome: Outcome, settings: Outbound, *,
           via: str | None = None) -> None:
    """Apply one outcome's per-recipient results to the entry; ``via``: the worker node of
    another host that made the attempt (its report), named in the attempt line."""
    groups: dict[str, list[str]] = {"delivered": [], "deferred": [], "failed": []}
    retried = config.current().classify_actions.retry
    for rcpt in hmail.todo.rcpt_to:
        reply = outcome.results.get(rcpt.address)
        if reply is None:
            continue
        groups[_classify(reply, outcome.host, retried)].append(rcpt.address)
    ok, deferred, failed = groups["delivered"], groups["deferred"], groups["failed"]
    first = outcome.results[(ok or deferred or failed)[0]] if (ok or deferred or failed) else None
    keyword = "delivered" if ok else "deferred" if deferred else "failed"
    tally.count(keyword)
    delay = round(time.time() - hmail.todo.queue_time / 1000, 3)
    cls = reply_class(first, outcome.host) if first is not None and not ok else None
    if cls is not None:  # mailflow_replies_total{class, destination}
        counters.add_reply(spool.root, cls, destination_label(hmail.todo.domain, outcome.host))
    logs.event(keyword, id=hmail.todo.uuid, domain=hmail.todo.domain, host=outcome.host,
               ip=outcome.ip, port=outcome.port, mode=outcome.mode,
               tls="Y" if outcome.secured else "N", tlslevel=outcome.tls_level,
               auth="Y" if outcome.authenticated else "N",
               response=str(first) if first else "-", delay=delay, fails=hmail.num_failures,
               rcpts=f"{len(ok)}/{len(deferred)}/{len(failed)}", **({"via": via} if via else {}),
               **({"source": outcome.source} if outcome.source else {}), **labels(hmail.todo.notes),
               **({"class": cls} if cls else {}))
    if ok:
        response = str(outcome.results[ok[0]])
        events.message_event(config.current(), "delivered", hmail.todo, ok,
                             status=outcome.results[ok[0]].enhanced, response=response, host=outcome.host,
                             ip=outcome.ip, tls_level=outcome.tls_level, num_failures=hmail.num_failures,
                             source=outcome.source)
        params = [outcome.host, outcome.ip, response, delay, outcome.port, outcome.mode, ok,
                  outcome.secured]
        hooks.decide(hooks.delivered, raised=CONT, hmail=hmail, host=outcome.host, ip=outcome.ip,
                     response=response, delay=delay, port=outcome.port, mode=outcome.mode,
                     ok_recips=ok, secured=outcome.secured, params=params, tls_level=outcome.tls_level)
        if hmail.todo.notes.get(DSN_NOTE):  # NOTIFY=SUCCESS, and the next hop took no DSN
            try:
                bounces.success_notice(hmail, {a: outcome.results[a] for a in ok}, outcome)
            except Exception as exc:  # the delivery stands; the notice is said to be missing
                log.warning("success notice for %s not made: %s", hmail.todo.uuid, exc)
    if failed:
        fail(spool, hmail, {a: outcome.results[a] for a in failed}, outcome.host)
    if deferred:
        defer(spool, hmail, {a: outcome.results[a] for a in deferred}, outcome.host, settings)
    else:
        hmail.path.unlink(missing_ok=True)
        if ok:
            counters.add_outcome(spool.root, "delivered", hmail.todo.notes)
    if ok:
        counters.add(spool.root, tls_counter(outcome.tls_level))
        observe_delivery(delay)


def _status_of(reply: Reply, remote_mta: str) -> dict[str, Any]:
    return {"code": reply.code, "status": reply.enhanced, "text": reply.text,
            "command": reply.command, "remote_mta": remote_mta, "at": now_ms()}


def fail(spool: Spool, hmail: HMail, failed: dict[str, Reply], remote_mta: str,
         reason: str | None = None) -> None:
    """Move the permanently failed recipients to failed/, each with its own status."""
    cls = reply_class(next(iter(failed.values())), remote_mta)
    todo = replace(hmail.todo, rcpt_to=[r for r in hmail.todo.rcpt_to if r.address in failed],
                   record={**hmail.todo.record,
                          "rcpt_status": {a: _status_of(r, remote_mta) for a, r in failed.items()},
                          "reason": reason or str(next(iter(failed.values()))), "last_class": cls})
    # a new stage: its failure count counts attempts to make the bounce (queue/bounces.py)
    name = replace(hmail.name, id=f"{hmail.todo.uuid}.f{hmail.num_failures}", next_attempt_ms=now_ms(),
                   num_failures=0)
    todo.uuid = name.id
    spool.ensure()
    spool.rewrite(hmail.path, name, todo, FAILED)
    for address, reply in failed.items():
        log.info("failed id=%s rcpt=%s status=%s response=%r", hmail.todo.uuid, address,
                 reply.enhanced, str(reply))
    first = next(iter(failed.values()))
    events.message_event(config.current(), "bounced", hmail.todo, list(failed), status=first.enhanced,
                         response=str(first), host=remote_mta, num_failures=hmail.num_failures,
                         bounce_class=cls)
    if reason is None:  # refused as it stands, not "Too many failures"
        store = suppression.for_config(config.current())
        for address, reply in failed.items():
            suppression.suppress_failure(store, address, reply, reply_class(reply, remote_mta),
                                         config.current().classify_actions.suppress)


def defer(spool: Spool, hmail: HMail, deferred: dict[str, Reply], remote_mta: str,
          settings: Outbound) -> None:
    """Reschedule the deferred recipients, or fail them when the schedule is used up."""
    fails = hmail.num_failures + 1
    err = str(next(iter(deferred.values())))
    cls = reply_class(next(iter(deferred.values())), remote_mta)
    actions = config.current().classify_actions
    if cls in actions.bounce_now:  # classify.ini: this class is not worth retrying
        fail(spool, hmail, dict(deferred), remote_mta, reason=f"{cls}, not retried ({err})")
        hmail.path.unlink(missing_ok=True)
        return
    intervals = actions.retry.get(cls, settings.temp_fail_intervals)
    if fails > len(intervals):
        # The last reply as it was received: the DSN says Action: failed with its own 4.x.x
        # status and diagnostic (RFC 3464 2.3.6), never a 5xx reply no server sent.
        fail(spool, hmail, dict(deferred), remote_mta, reason=f"Too many failures ({err})")
        hmail.path.unlink(missing_ok=True)
        return
    hmail.num_failures = fails
    delay: float = intervals[fails - 1]
    extra: dict[str, Any] = {"class": cls}  # a keyword Python spells only this way
    answer = hooks.decide(hooks.deferred, hmail=hmail, delay=delay, err=err, **extra)
    if answer.code is OK:
        logs.event("dropped", id=hmail.todo.uuid, reason=f"deferred hook: {answer.value or 'OK'}")
        events.message_event(config.current(), "dropped", hmail.todo,
                             [r.address for r in hmail.todo.rcpt_to], response=err, host=remote_mta,
                             num_failures=fails)
        hmail.path.unlink(missing_ok=True)
        counters.add_outcome(spool.root, "dropped", hmail.todo.notes)
        tally.count("dropped")
        return
    if answer.code is DENYSOFT and isinstance(answer.value, int | float):
        delay = float(answer.value)
    history = list(hmail.todo.record.get("history", []))[-49:]  # the last 50 attempts
    history.append({"at": now_ms(), "host": remote_mta, "error": err})
    todo = replace(hmail.todo, rcpt_to=[r for r in hmail.todo.rcpt_to if r.address in deferred],
                   record={**hmail.todo.record, "last_error": err, "history": history, "last_class": cls,
                          "rcpt_status": {a: _status_of(r, remote_mta) for a, r in deferred.items()}})
    try:  # waited delay_warning: the sender is told, once
        todo = bounces.delay_notice(hmail, todo, settings)
    except Exception as exc:  # the deferral itself must stand: told at the next one instead
        log.warning("delay notice for %s not made now: %s", hmail.todo.uuid, exc)
    name = hmail.name.rescheduled(now_ms() + int(delay * 1000), fails)
    if todo.rcpt_to == hmail.todo.rcpt_to and todo.record == hmail.todo.record:
        spool.release(hmail.path, name)
    else:
        spool.rewrite(hmail.path, name, todo, PENDING)
        hmail.path.unlink(missing_ok=True)
    counters.add_outcome(spool.root, "deferred_total", hmail.todo.notes)
    first = next(iter(deferred.values()))
    events.message_event(config.current(), "deferred", todo, list(deferred), status=first.enhanced,
                         response=err, host=remote_mta, num_failures=fails, bounce_class=cls)
    countdowns.note(name, delay, err)


def fail_all(spool: Spool, hmail: HMail, reply: Reply, outcome: Outcome, settings: Outbound) -> None:
    """One reply for every recipient (DNS, connection, or a whole-session refusal)."""
    outcome.results = {r.address: reply for r in hmail.todo.rcpt_to}
    record(spool, hmail, outcome, settings)


def delay_entry(spool: Spool, hmail: HMail, seconds: float) -> None:
    """``send_email`` hook DELAY: try again later, not counted as a failure."""
    tally.count("delayed")
    spool.release(hmail.path, hmail.name.rescheduled(now_ms() + int(seconds * 1000)))


def fail_each(spool: Spool, hmails: list[HMail], exc: DeliveryError, settings: Outbound) -> None:
    """The same failure for every entry (no MX address took a session, say)."""
    outcome = Outcome(host=exc.host or "-", ip=exc.ip or "-", port=exc.port)
    for hmail in hmails:
        with guarded(spool, hmail, settings):
            fail_all(spool, hmail, exc.reply, replace(outcome), settings)


def crashed(spool: Spool, hmail: HMail, exc: BaseException, settings: Outbound,
            outcome: Outcome | None = None) -> None:
    """An exception nobody planned for, met while handling this entry: defer the entry.

    It counts as a temporary failure, so it goes through the ``deferred`` hook and
    the schedule and is bounced in the end -- never left in its claim to come back
    at every lease expiry.  The traceback goes to the log, the exception into the
    entry's history.  If even that cannot be written (a full disk), the entry is
    renamed back to pending/ with its failure counted: a rename needs no space.
    """
    log.error("unexpected error handling %s: %s: %s (deferred)", hmail.todo.uuid,
              type(exc).__name__, exc, exc_info=exc)
    reply = local_reply("4.3.0", f"internal error: {type(exc).__name__}: {exc}")
    try:
        fail_all(spool, hmail, reply, outcome or Outcome(), settings)
    except Exception as again:
        log.error("could not record the deferral of %s (%s); rescheduled by rename",
                  hmail.todo.uuid, again)
        defer_by_rename(spool, hmail, settings)


def defer_by_rename(spool: Spool, hmail: HMail, settings: Outbound) -> None:
    """Back to pending/ with one more failure counted and its wait, changing nothing inside."""
    tally.count("deferred")
    name = hmail.name
    fails = name.num_failures + 1
    intervals = settings.temp_fail_intervals
    delay = intervals[min(fails, len(intervals)) - 1] if intervals else 0
    later = name.rescheduled(now_ms() + int(delay * 1000), fails)
    try:
        spool.release(hmail.path, later)
    except FileNotFoundError:  # already handled
        return
    countdowns.note(later, delay, "internal error (see the log)")


@contextmanager
def guarded(spool: Spool, hmail: HMail, settings: Outbound,
            outcome: Outcome | None = None) -> Iterator[None]:
    """Run a step for one entry; whatever it raises defers that entry alone (see crashed)."""
    try:
        yield
    except Exception as exc:
        crashed(spool, hmail, exc, settings, outcome)
