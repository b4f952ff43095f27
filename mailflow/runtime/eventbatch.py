"""Task events (Flower's feed) published a tenth of a second's worth at a time.

Celery's worker buffers its task events (received, started, succeeded) and asks its
event loop to flush them *at once*: every event became a broker publish of its own (a
Redis PUBLISH, a round trip on the consumer's loop), and with three to four tasks per
destination batch that was a fifth of the worker's CPU in the mix benchmark
(bench/README.md).  This consumer step lets the buffer fill for ``FLUSH_DELAY`` and
publishes what gathered as one ``task.multi`` message, the grouped form Flower already
reads; Flower sees each event at most that much later, none is dropped.

The ``task-sent`` event that goes with every task published (by the queue manager, and
by each step handing on to the next) is gathered the same way, by ``SentEvents``, in
whichever process publishes: Celery published each one on its own, beside its task.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.events.dispatcher import EventDispatcher

#: How long task events may wait before they are published together (s).
FLUSH_DELAY = 0.1
#: Past this many buffered events the dispatcher publishes at once, whatever the delay.
BUFFER_LIMIT = 500
#: How many retried tasks' ids are remembered (a late task-sent comes within a second).
RETRIED_KEPT = 10_000


class Coalesced:
    """``on_send_buffered`` for Celery's event dispatcher: one flush per ``delay``, run on
    the worker's event loop (the only thread that may touch its timers)."""

    def __init__(self, hub: Any, flush: Callable[[], None], delay: float = FLUSH_DELAY):
        self.hub, self.flush, self.delay = hub, flush, delay
        self._armed = False
        self._lock = threading.Lock()  # events are sent from the pool's threads too

    def __call__(self) -> None:
        with self._lock:
            if self._armed:
                return
            self._armed = True
        self.hub.call_soon(self._arm)  # call_soon is what Celery itself calls from any thread

    def _arm(self) -> None:
        self.hub.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        with self._lock:
            self._armed = False
        self.flush()


class EventBatches(bootsteps.StartStopStep):
    """Runs after Celery's Events step, each time the consumer (re)starts: the dispatcher
    it made is told to gather its task events (``FLUSH_DELAY``)."""

    label = "mailflow event batches"
    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or c.hub is None or dispatcher.on_send_buffered is None:
            return  # events off, or a pool without an event loop: Celery publishes each
        dispatcher.buffer_limit = BUFFER_LIMIT
        dispatcher.on_send_buffered = Coalesced(c.hub, dispatcher.flush)
        sent = vars(c.app.amqp).get("_event_dispatcher")
        if isinstance(sent, SentEvents):
            sent.through(dispatcher)


class Retried:
    """The ids of the tasks this process sent a ``task-retried`` event for, lately.

    Celery sends a task's ``task-sent`` event after it has published the task: the thread
    that published may be descheduled long enough for the task to be received, to run and
    to retry (a deferral's countdown) before its task-sent goes. Flower's state lets any
    event that comes after a RETRY replace it, so the deferred task would show PENDING.
    Such a task-sent says nothing Flower does not know by then: it is dropped."""

    def __init__(self, kept: int = RETRIED_KEPT):
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._kept = kept
        self._lock = threading.Lock()

    def add(self, task_id: str) -> None:
        with self._lock:
            if task_id in self._ids:
                return
            self._order.append(task_id)
            self._ids.add(task_id)
            if len(self._order) > self._kept:
                self._ids.discard(self._order.popleft())

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids


def note_retried(app: Celery, task_id: str) -> None:
    """The worker is about to send ``task_id``'s task-retried event (runtime/authentic.py):
    a task-sent for it that comes later is dropped (:class:`Retried`)."""
    sent = vars(app.amqp).get("_event_dispatcher")
    if isinstance(sent, SentEvents):
        sent.retried.add(task_id)


class SentEvents:
    """What Celery publishes each ``task-sent`` event through (``app.amqp``'s dispatcher):
    the events are buffered, and a timer publishes them ``FLUSH_DELAY`` later, together,
    on a connection of this process's own (made at the first event, again after a fork)."""

    def __init__(self, app: Celery, delay: float = FLUSH_DELAY):
        self.app, self.delay = app, delay
        self._lock = threading.Lock()
        self._dispatcher: EventDispatcher | None = None
        self._pid = 0
        self._armed = False
        #: in a worker, its consumer's dispatcher (EventBatches), and the process it is in
        self._via: tuple[EventDispatcher, int] | None = None
        #: the tasks retried here lately: a task-sent that comes after is dropped (Retried)
        self.retried = Retried()
        atexit.register(self.flush)  # what is buffered at exit still goes

    def through(self, dispatcher: EventDispatcher) -> None:
        """Send through a worker's own dispatcher: a task-sent event then goes out in order
        with the worker's events -- before the task-retried of the task that sent it, else
        Flower would show the retried task as sent again (PENDING)."""
        self._via = (dispatcher, os.getpid())

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **kwargs: Any) -> None:
        """Celery's ``EventDispatcher.publish`` signature; the producer (the task's) is not
        used: the event waits for the next flush."""
        if type == "task-sent" and fields.get("uuid") in self.retried:
            return  # late: the task already ran and retried (Retried)
        via = self._via
        if via is not None and via[1] == os.getpid() and via[0].enabled and (
                not via[0].groups or "task" in via[0].groups):
            via[0].send(type, **fields)
        else:
            self._current().send(type, **fields)

    def _current(self) -> EventDispatcher:
        with self._lock:
            if self._dispatcher is None or self._pid != os.getpid():
                self._pid, self._armed = os.getpid(), False
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), buffer_group=["task"],
                    buffer_limit=BUFFER_LIMIT, on_send_buffered=self._arm)
            return self._dispatcher

    def _arm(self) -> None:
        with self._lock:
            if self._armed:
                return
            self._armed = True
        timer = threading.Timer(self.delay, self.flush)
        timer.daemon = True
        timer.start()

    def flush(self) -> None:
        with self._lock:
            self._armed = False
            dispatcher = self._dispatcher if self._pid == os.getpid() else None
        if dispatcher is not None:
            try:
                dispatcher.flush()
            except Exception:  # Flower's feed, not the mail: the broker may be away
                pass


def gather_sent_events(app: Celery) -> None:
    """Have ``app`` publish its task-sent events (when ``task_send_sent_event`` is on)
    through a :class:`SentEvents`: set before its first task is sent, since Celery's sender
    keeps the dispatcher it finds then, and without reading the configuration yet."""
    vars(app.amqp)["_event_dispatcher"] = SentEvents(app)
