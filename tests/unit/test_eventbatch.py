"""Task events gathered (mailflow/runtime/eventbatch.py): a task-sent that comes after its
task's task-retried is dropped, so that Flower keeps showing the deferral as RETRY."""

from __future__ import annotations

from typing import Any

from celery import Celery

from mailflow.runtime.eventbatch import Retried, SentEvents, gather_sent_events, note_retried


class Dispatcher:
    """What SentEvents uses of a worker's event dispatcher."""

    enabled = True
    groups: set[str] = set()

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields.get("uuid")))


def test_a_task_sent_event_after_its_task_retried_is_dropped_and_others_go_in_order():
    app = Celery("eventbatch-test", set_as_current=False)
    gather_sent_events(app)
    sent = vars(app.amqp)["_event_dispatcher"]
    assert isinstance(sent, SentEvents)
    worker = Dispatcher()
    sent.through(worker)
    sent.publish("task-sent", {"uuid": "early"}, producer=None)
    worker.send("task-received", uuid="early")
    note_retried(app, "late")  # the worker's request, as it retries the task
    worker.send("task-retried", uuid="late")
    sent.publish("task-sent", {"uuid": "late"}, producer=None)  # its publisher was descheduled
    sent.publish("task-sent", {"uuid": "next"}, producer=None)
    assert worker.sent == [("task-sent", "early"), ("task-received", "early"),
                           ("task-retried", "late"), ("task-sent", "next")]


def test_only_the_latest_retried_tasks_are_remembered():
    retried = Retried(kept=2)
    for task_id in ("a", "b", "b", "c"):
        retried.add(task_id)
    assert "a" not in retried and "b" in retried and "c" in retried
