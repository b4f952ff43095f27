"""The outbound hooks, declared as Celery signals (PRODUCT §3).

This module only declares; receivers live in plugins (``config/plugins``).
Receivers are held by weak reference unless connected with ``weak=False``:
define them at module level.  Every receiver must accept ``**kwargs``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery.utils.dispatch import Signal

from mailflow.codes import CONT, DENYSOFT, Code

log = logging.getLogger(__name__)

__all__ = [
    "connect",
    "queue_outbound",
    "send_email",
    "get_mx",
    "deferred",
    "bounce",
    "delivered",
    "Answer",
    "decide",
    "decide_off_loop",
]

# - Submission (mailflow smtpd)
connect = Signal(name="connect", providing_args={"connection"})
queue_outbound = Signal(name="queue_outbound", providing_args={"connection", "transaction"})

# - Delivery (workers)
send_email = Signal(name="send_email", providing_args={"hmail"})
get_mx = Signal(name="get_mx", providing_args={"hmail", "domain"})
deferred = Signal(name="deferred", providing_args={"hmail", "delay", "err"})
bounce = Signal(name="bounce", providing_args={"hmail", "error"})
delivered = Signal(
    name="delivered",
    providing_args={
        "hmail", "host", "ip", "response", "delay", "port", "mode", "ok_recips", "secured",
        "params", "tls_level",
    },
)


class Answer:
    """The deciding answer of a hook: a code and an optional value."""

    __slots__ = ("code", "value", "receiver")

    def __init__(self, code: Code, value: Any = None, receiver: Callable[..., Any] | None = None):
        self.code = code
        self.value = value
        self.receiver = receiver

    def __repr__(self) -> str:
        return f"Answer({self.code.name}, {self.value!r})"


def _normalise(response: Any) -> tuple[Code, Any]:
    if response is None:
        return CONT, None
    if isinstance(response, Code):
        return response, None
    if isinstance(response, tuple) and response and isinstance(response[0], Code):
        return response[0], response[1] if len(response) > 1 else None
    raise TypeError(f"a hook must return None, a Code or (Code, value), not {response!r}")


def decide(signal: Signal, *, raised: Code = DENYSOFT, **kwargs: Any) -> Answer:
    """Send ``signal`` and return the first answer, in connection order, that is not CONT.

    Celery's ``Signal.send`` runs *every* live receiver, even after one has
    answered; only the first non-CONT answer counts, the rest are ignored.
    (Haraka stops at the first answer; a mailflow receiver must not rely on
    running or not running after another one has decided.)

    ``send`` already logs a receiver's exception with its traceback; such a
    receiver counts as ``raised`` (DENYSOFT by default, CONT for hooks where
    a refusal has no meaning).  A receiver answering something that is not a
    code counts the same way, with a log line.
    """
    for receiver, response in signal.send(sender=signal.name, **kwargs):
        if isinstance(response, BaseException):
            code, value = raised, f"hook {signal.name} failed: {response!r}"
        else:
            try:
                code, value = _normalise(response)
            except TypeError as exc:
                log.error("hook %s receiver %r: %s", signal.name, receiver, exc)
                code, value = raised, str(exc)
        if code is not CONT:
            return Answer(code, value, receiver)
    return Answer(CONT)


async def decide_off_loop(signal: Signal, **kwargs: Any) -> Answer:
    """``decide`` for the submission server's event loop.

    Receivers may block (a database, an HTTP call), so they run in a thread;
    with none connected, the answer is CONT at once -- the hand-off to a
    thread and back costs more than the rest of an SMTP command.
    """
    if not signal.receivers:
        return Answer(CONT)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, partial(decide, signal, **kwargs))
