"""What every step of the delivery pipeline shares, said once."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from mailflow import tally
from mailflow.errors import NothingToDo

log = logging.getLogger(__name__)


class PipelineTask(Task):
    """Base of the ``mailflow.*`` pipeline tasks (Celery reads these class attributes).

    A step returns what it did to the mail, counted (mailflow/tally.py): Celery sends the
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with tally.tallied() as counts:
                returned = super().__call__(*args, **kwargs)
            return summary(args, counts) if returned is None else returned
        except NothingToDo as why:
            log.warning("%s[%s] did nothing: %s", self.name, self.request.id, why)
            self.send_event("task-ignored", reason=str(why))
            raise Ignore(str(why)) from None


def summary(args: tuple[Any, ...], counts: Counter[str]) -> dict[str, Any]:
    """A step's result, as Flower shows it: the domain and what became of how many entries
    (delivered, deferred, failed, handed_on, handed_back, bounced…); never an address."""
    payload = args[0] if args and isinstance(args[0], dict) else {}
    domain = payload.get("domain")
    return {**({"domain": domain} if isinstance(domain, str) else {}), **dict(sorted(counts.items()))}
