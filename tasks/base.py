"""What every step of the delivery pipeline shares, said once."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import Ignore, Retry
from celery.utils import uuid

from mailflow import config
from mailflow.errors import Deferred, NothingToDo
from mailflow.observation import tally
from mailflow.queue import countdowns
from mailflow.queue.claims import BROKER_RETRY_MS, give_back, load
from mailflow.queue.entry import EntryName
from mailflow.queue.identity import IDENTITY, owner_queue
from mailflow.queue.spool import Spool, now_ms
from mailflow.runtime.application import app
from mailflow.runtime.authentic import AuthenticTask
from mailflow.wire.payloads import LOOKUP_MX

log = logging.getLogger(__name__)


class PipelineTask(AuthenticTask):
    """Base of the ``mailflow.*`` pipeline tasks (Celery reads these class attributes).

    A step returns what it did to the mail, counted (mailflow/observation/tally.py): Celery sends the
    return value in the ``task-succeeded`` event, and Flower shows it as the task's result.

    A step that finds nothing to do -- its claim gone, its payload not this queue's --
    ends IGNORED, never SUCCESS, with one log line saying why; it also sends the
    ``task-ignored`` event, so that Flower shows it as IGNORED rather than leaving it
    STARTED: Celery sends no event for IGNORED, and its event state machine takes a
    ``task-rejected`` that follows ``task-started`` for an older one and keeps STARTED
    (REJECTED ranks below STARTED in ``celery.states.PRECEDENCE``; a state it does not
    know ranks above).
    """

    #: Acknowledge a step's message only once the step is done: a worker that dies mid-step
    #: gives it back, and the queue file decides whether anything is left to do.
    acks_late = True

    #: Give the message back too when the worker process is killed outright (SIGKILL, OOM),
    #: which Celery would otherwise take as the task having failed.
    reject_on_worker_lost = True

    #: Outcomes are recorded in the queue directory; a result backend would hold nothing.
    ignore_result = True

    #: A step retries once per deferral wait: as often as its entries are deferred.
    max_retries = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if args and is_retry(args[0]):
                return self._fire(args[0])
            with tally.tallied() as counts, countdowns.collecting() as deferrals:
                returned = super().__call__(*args, **kwargs)
            result = summary(args, counts) if returned is None else returned
            if deferrals:
                self._arm(deferrals, result)  # raises Retry when it armed a countdown
            return result
        except NothingToDo as why:
            log.warning("%s[%s] did nothing: %s", self.name, self.request.id, why)
            self.send_event("task-ignored", reason=str(why))
            raise Ignore(str(why)) from None

    # -- deferrals as countdown retries (mailflow/queue/countdowns.py) ------------------

    def _arm(self, deferrals: list[countdowns.Deferral], result: dict[str, Any]) -> None:
        """One countdown per wait; the first as this task's own retry (Flower: RETRY)."""
        cfg = config.current()
        groups = countdowns.groups(deferrals, countdowns.countdown_max(cfg.outbound))
        spool = Spool(cfg.queue_path())
        for index, group in enumerate(groups):
            self._countdown(spool, group, cfg.outbound.countdown_grace, result,
                            own=index == len(groups) - 1)

    def _countdown(self, spool: Spool, group: list[countdowns.Deferral], grace: float,
                   result: dict[str, Any], own: bool) -> None:
        ident = countdowns.arm(spool, group, grace)
        payload = {"owner": spool.identity, "domain": group[0].name.domain,
                   "retry": [str(d.name) for d in group], "armed": ident}
        delay = group[0].delay
        queue = owner_queue(spool.identity)
        done = ", ".join(f"{k} {v}" for k, v in result.items() if k != "domain")
        due = datetime.fromtimestamp(time.time() + delay, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        why = Deferred(f"{len(group)} deferred for {delay:.0f} s: {group[0].reason}"
                       + (f" ({done})" if done else "") + f"; next attempt {due}")
        try:
            if own and not self.request.called_directly:
                # A task id of its own: Celery's event state lets the retry's task-received
                # (sent as soon as a worker takes the countdown) overwrite this attempt's
                # RETRY when it shares the id, so Flower would show RECEIVED at random.
                raise self.retry(args=[payload], kwargs={}, countdown=delay, exc=why, queue=queue,
                                 task_id=uuid())
            app.send_task(self.name, args=[payload], countdown=delay, queue=queue)
        except Retry:
            raise
        except Exception as exc:  # the scan finds them when due
            countdowns.disarm(spool, ident)
            log.error("could not arm the countdown of %d deferred entries (%s); the queue "
                      "manager takes them when due", len(group), exc)

    def _fire(self, data: dict[str, Any]) -> dict[str, Any]:
        """A countdown came due: claim its entries if they still wait, and start their chain."""
        owner, domain, names, ident = retry_from(data)
        spool = Spool(config.current().queue_path())
        if not spool.exists() or spool.identity != owner:
            raise NothingToDo(f"a countdown of queue {owner}, and this host's queue is not it")
        batch = countdowns.fire(spool, owner, domain, names, ident)
        if batch is None:
            raise NothingToDo("its entries were attempted, flushed or deleted meanwhile")
        try:
            app.send_task(LOOKUP_MX, args=[batch.to_json()], queue=owner_queue(owner),
                          argsrepr=batch.shown())
        except Exception:
            give_back(spool, load(spool, batch), now_ms() + BROKER_RETRY_MS)
            spool.finish(batch.claim)
            raise
        return {"domain": domain, "claimed": len(batch.names)}


def summary(args: tuple[Any, ...], counts: Counter[str]) -> dict[str, Any]:
    """A step's result, as Flower shows it: the domain and what became of how many entries
    (delivered, deferred, failed, handed_on, handed_back, bounced…); never an address."""
    payload = args[0] if args and isinstance(args[0], dict) else {}
    domain = payload.get("domain")
    return {**({"domain": domain} if isinstance(domain, str) else {}), **dict(sorted(counts.items()))}


def is_retry(data: Any) -> bool:
    return isinstance(data, dict) and "retry" in data


def retry_from(data: dict[str, Any]) -> tuple[str, str, list[str], str]:
    """A countdown's payload: owner, domain, entry names, armed id; NothingToDo if malformed."""
    owner, domain, names, ident = (data.get(k) for k in ("owner", "domain", "retry", "armed"))
    if not (isinstance(owner, str) and IDENTITY.match(owner) and isinstance(domain, str)
            and isinstance(ident, str) and ident.isalnum() and isinstance(names, list)
            and all(isinstance(n, str) and EntryName.parse(n) for n in names)):
        raise NothingToDo(f"refused a countdown payload that is not well formed: {data!r:.200}")
    return owner, domain, names, ident
