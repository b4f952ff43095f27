"""What every step of the delivery pipeline shares, said once."""

from __future__ import annotations

from celery import Task


class PipelineTask(Task):
    """Base of the ``mailflow.*`` pipeline tasks (Celery reads these class attributes)."""

    #: Acknowledge a step's message only once the step is done: a worker that dies mid-step
    #: gives it back, and the queue file decides whether anything is left to do.
    acks_late = True

    #: Give the message back too when the worker process is killed outright (SIGKILL, OOM),
    #: which Celery would otherwise take as the task having failed.
    reject_on_worker_lost = True

    #: Outcomes are recorded in the queue directory; a result backend would hold nothing.
    ignore_result = True
