"""The outbound hooks, declared as Celery signals.

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
deferred = Signal(name="deferred", providing_args={"hmail", "delay", "err", "class"})
bounce = Signal(name="bounce", providing_args={"hmail", "error", "class"})
delivered = Signal(
    name="delivered",
    providing_args={
        "hmail", "host", "ip", "response", "delay", "port", "mode", "ok_recips", "secured",
        "params", "tls_level",
    },
)


class Answer:
    """The deciding answer of a hook: a code and an optional value.

    ``failed`` is set when the receiver raised (or answered nonsense): the code is then
    the hook's ``raised`` one, and a caller may say "plugin error" rather than quote it.
    """

    __slots__ = ("code", "value", "receiver", "failed")

    def __init__(self, code: Code, value: Any = None, receiver: Callable[..., Any] | None = None,
                 failed: bool = False):
        self.code = code
        self.value = value
        self.receiver = receiver
        self.failed = failed

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

    A receiver that raises anything -- ``SystemExit``, ``KeyboardInterrupt`` and
    ``GeneratorExit`` included, which Celery's ``send`` lets through and which would
    stop a worker thread or the listener -- is a plugin error: logged once, with its
    module and traceback, and counted as ``raised`` (DENYSOFT by default, CONT for hooks
    where a refusal has no meaning).  A receiver answering something that is not a code
    counts the same way, with a log line.
    """
    for receiver, response in _send(signal, **kwargs):
        failed = isinstance(response, BaseException)
        if failed:
            code, value = raised, f"plugin error in {signal.name} ({_named(receiver)}): {response!r}"
        else:
            try:
                code, value = _normalise(response)
            except TypeError as exc:
                log.error("hook %s receiver %s: %s", signal.name, _named(receiver), exc)
                code, value, failed = raised, str(exc), True
        if code is not CONT:
            return Answer(code, value, receiver, failed)
    return Answer(CONT)


def _named(receiver: Callable[..., Any]) -> str:
    """A receiver as a plugin's author knows it: ``module.function``."""
    return f"{getattr(receiver, '__module__', '?')}.{getattr(receiver, '__qualname__', receiver)}"


def _send(signal: Signal, **kwargs: Any) -> list[tuple[Callable[..., Any], Any]]:
    """Celery's ``Signal.send``, but nothing a receiver raises goes further than here."""
    responses: list[tuple[Callable[..., Any], Any]] = []
    if not signal.receivers:
        return responses
    for receiver in signal._live_receivers(signal.name):
        try:
            responses.append((receiver, receiver(signal=signal, sender=signal.name, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 -- a plugin's exit is a plugin error
            log.error("hook %s: the receiver %s raised %r", signal.name, _named(receiver), exc,
                      exc_info=(type(exc), exc, exc.__traceback__))
            responses.append((receiver, exc))
    return responses


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
