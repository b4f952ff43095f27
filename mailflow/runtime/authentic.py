"""Authenticated tasks: signed as they are published, checked before a worker runs them.

Every task message a mailflow process publishes -- the pipeline's steps, reports,
parcels, webhook batches, flushes, countdown retries -- is signed by
:func:`sign_published` (Celery's ``before_task_publish`` signal, so no publisher can
forget).  Every task of the app, Celery's own built-in ones included (``celery.group``
would otherwise publish whatever signatures it was handed, signed by us), runs through
:class:`VerifiedRequest`, which checks the MAC in the worker's consumer before the
request reaches a thread: a message that fails is refused with a WARNING naming the
task, counted (``refused_tasks``), rejected without being requeued, and never touches a
file nor opens a connection.  The MAC's recipe is in mailflow/wire/signing.py.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, current_app
from celery.signals import before_task_publish
from celery.worker.request import Request
from celery.worker.state import task_ready
from kombu.serialization import dumps

from mailflow import config
from mailflow.config.state import state_dir
from mailflow.errors import Deferred
from mailflow.queue import counters
from mailflow.runtime.eventbatch import note_retried
from mailflow.wire import signing
from mailflow.wire.seal import mac_key

log = logging.getLogger(__name__)

#: The counter (in the state directory's ``.counters/``) of messages refused.
REFUSED = "refused_tasks"


def _key() -> bytes:
    return mac_key(config.current().directory)


def body_bytes(body: Any, serializer: str) -> bytes:
    """The body as kombu will serialize it for the broker (what the worker receives)."""
    _content_type, encoding, data = dumps(body, serializer=serializer)
    return data.encode(encoding or "utf-8") if isinstance(data, str) else bytes(data)


@before_task_publish.connect
def sign_published(sender: str | None = None, body: Any = None, routing_key: str | None = None,
                   headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Add the MAC to a task message this process is about to publish."""
    if headers is None:
        return
    data = body_bytes(body, current_app.conf.task_serializer)
    headers[signing.HEADER] = signing.task_mac(_key(), headers, routing_key, data)


def refused() -> int:
    """How many broker messages this host has refused."""
    return counters.read(state_dir(), REFUSED)


def count_refusal() -> None:
    try:
        counters.add(state_dir(), REFUSED)
    except OSError as exc:  # counting must not stop the refusal
        log.error("could not count a refused broker message: %s", exc)


def signed(command: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A remote-control broadcast's arguments, stamped and signed."""
    return signing.sign_broadcast(_key(), command, arguments)


def broadcast_accepted(command: str, arguments: dict[str, Any]) -> bool:
    """Whether a broadcast is mailflow's own and fresh; a WARNING and a count when not."""
    why = signing.broadcast_refusal(_key(), command, arguments)
    if why is None:
        return True
    log.warning("refused broadcast %s from the broker: %s; nothing was done", command, why)
    count_refusal()
    return False


class VerifiedRequest(Request):
    """A task request that runs only when its message carries mailflow's MAC.

    The check sits in ``revoked()``, which Celery's worker asks first on every way a
    request can run (``execute_using_pool``, which the worker's per-task subclass
    replaces whole, and ``execute``): a refused message is taken for revoked, so it
    is dropped before it reaches a thread, and the consumer frees its place.
    """

    _verdict: bool | None = None

    def _authentic(self) -> bool:
        if self._verdict is None:
            message = self._message
            body = message.body
            raw = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
            try:
                self._verdict = signing.task_authentic(
                    _key(), message.headers or {}, (message.delivery_info or {}).get("routing_key"), raw)
            except Exception:
                log.exception("could not check the MAC of %s[%s]", self.name, self.id)
                self._verdict = False
        return self._verdict

    def revoked(self) -> bool:
        if self._already_revoked:
            return True
        if not self._authentic():
            self._refuse()
            return True
        return bool(super().revoked())

    def on_retry(self, exc_info: Any) -> None:
        """A deferral's RETRY, as Flower shows it: the reason as it reads -- the reply and the
        next attempt -- not the repr of an exception inside a Retry, with a traceback."""
        note_retried(self.app, self.id)  # before its task-retried event goes
        reason = exc_info.exception  # the pool's wrapper, the Retry inside it, its reason
        for _ in range(3):
            if isinstance(reason, Deferred):
                break
            reason = getattr(reason, "exc", None)
        if not isinstance(reason, Deferred):
            super().on_retry(exc_info)
            return
        if self.task.acks_late:
            self.acknowledge()
        self.send_event("task-retried", exception=str(reason), traceback="")

    def _refuse(self) -> None:
        routing_key = (self._message.delivery_info or {}).get("routing_key")
        log.warning("refused task %s[%s] from the broker (queue %s): it does not carry mailflow's "
                    "MAC under broker.key; nothing was done", self.name, self.id, routing_key)
        count_refusal()
        self._already_revoked = True
        task_ready(self)
        self.reject(requeue=False)


class AuthenticTask(Task):
    """The base of every task of mailflow's app (``task_cls``): requests are verified."""

    Request = VerifiedRequest
