"""The private parts of libraries that mailflow builds on, checked at start.

mailflow's submission server overrides aiosmtpd methods that are not public API
(its DATA reader replaces ``smtp_DATA`` and uses the protocol's stream and
state helpers), the embedded broker overrides kombu's filesystem transport's
``_put``, and the worker turns off Celery's banner through the worker object.
``pyproject.toml`` pins each library to the minor release this was tested with;
this module says, in one line per name, what a newer release changed, instead
of letting a session fail half-way with an AttributeError.
"""

from __future__ import annotations

import importlib
import inspect
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


@dataclass(frozen=True)
class Relied:
    """One private name: where it lives, and how it must look."""

    package: str
    module: str
    path: str  #: dotted inside the module, e.g. "SMTP._handle_client"
    params: tuple[str, ...] | None = None  #: the parameter names it must take, in order
    source_has: str | None = None  #: text the object's source must contain


RELIED: tuple[Relied, ...] = (
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._handle_client", ("self",)),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._create_session", ("self",)),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._call_handler_hook", ("self", "command", "args")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._set_post_data_state", ("self",)),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.check_helo_needed", ("self", "helo")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.check_auth_needed", ("self", "caller_method")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.challenge_auth"),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.smtp_AUTH", ("self", "arg")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.smtp_DATA", ("self", "arg")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._cb_client_connected",
           source_has="self._reader = reader"),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.connection_lost", ("self", "error")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "MISSING"),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._getaddr", ("self", "arg")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._cb_client_connected",
           source_has="self._writer = writer"),
    # the per-connection tables smtpd/tables.py gives a protocol instead of letting it build them
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has="self._smtp_methods: Dict["),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has="self._handle_hooks: Dict["),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has="self._auth_methods: Dict["),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has='self._ehlo_hook_ver = "new"'),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has="self.event_handler = handler"),
    # the idle timer smtpd/server.py keeps across commands
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._reset_timeout", ("self", "duration")),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._timeout_cb", ("self",)),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__", source_has="self._timeout_duration = timeout"),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.connection_lost", source_has="self._timeout_handle.cancel()"),
    # what smtpd/server.py drops once a connection has ended (its self-references)
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.connection_made",
           source_has="self._handler_coroutine = self.loop.create_task("),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP.__init__",
           source_has="client_connected_cb=self._cb_client_connected"),
    Relied("aiosmtpd", "aiosmtpd.smtp", "SMTP._cb_client_connected", source_has="self._writer = writer"),
    Relied("python", "asyncio.streams", "StreamReaderProtocol.__init__",
           source_has="self._client_connected_cb = client_connected_cb"),
    Relied("kombu", "kombu.transport", "TRANSPORT_ALIASES"),
    # the standard library's: checked the same way, against the running Python
    Relied("python", "smtplib", "SMTP._get_socket", ("self", "host", "port", "timeout")),
    Relied("python", "smtplib", "SMTP.starttls", source_has="server_hostname=self._host"),
    Relied("python", "argparse", "_SubParsersAction.__init__", source_has="self._choices_actions = []"),
    Relied("python", "argparse", "_ActionsContainer.__init__", source_has="self._actions = []"),
    Relied("kombu", "kombu.transport.filesystem", "Channel._put", ("self", "queue", "payload", "kwargs")),
    Relied("kombu", "kombu.transport.filesystem", "Channel.data_folder_out"),
    Relied("celery", "celery.apps.worker", "Worker.on_before_init", source_has="self.quiet = quiet"),
    Relied("celery", "celery.utils.dispatch.signal", "Signal._live_receivers", ("self", "sender")),
    Relied("celery", "celery.worker.request", "Request.revoked", ("self",)),
    Relied("celery", "celery.worker.request", "Request._already_revoked"),
    Relied("celery", "celery.worker.request", "Request.__init__", source_has="self._message = message"),
    Relied("celery", "celery.worker.request", "create_request_cls", source_has="if self.revoked():"),
    Relied("celery", "celery.events.dispatcher", "EventDispatcher.send",
           source_has="self.on_send_buffered()"),
    Relied("celery", "celery.app.amqp", "AMQP._create_task_sender",
           source_has="default_evd = self._event_dispatcher"),
    Relied("celery", "celery.events.dispatcher", "EventDispatcher.send",
           source_has="len(buf) >= self.buffer_limit"),
)


def _lookup(relied: Relied) -> object:
    obj: object = importlib.import_module(relied.module)
    for part in relied.path.split("."):
        obj = getattr(obj, part)
    return obj


def _problem(relied: Relied) -> str | None:
    where = f"{relied.module}.{relied.path}"
    try:
        obj = _lookup(relied)
    except (ImportError, AttributeError):
        return f"{where} is gone"
    target: Callable[..., object] | None = getattr(obj, "fget", None) or (
        obj if callable(obj) else None)
    if relied.params is not None and target is not None:
        try:
            params = tuple(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            params = ()
        if params != relied.params:
            return f"{where} takes ({', '.join(params)}), not ({', '.join(relied.params)})"
    if relied.source_has is not None:
        try:
            source = inspect.getsource(obj)  # type: ignore[arg-type]
        except (OSError, TypeError):
            return f"{where}: its source cannot be read to check it"
        if relied.source_has not in source:
            return f"{where} no longer does {relied.source_has!r}"
    return None


def problems(relied: tuple[Relied, ...] = RELIED) -> list[str]:
    """One line per private name that is not as mailflow expects, with the installed version."""
    out = []
    for item in relied:
        problem = _problem(item)
        if problem is not None:
            try:
                installed = platform.python_version() if item.package == "python" else version(item.package)
            except PackageNotFoundError:
                installed = "not installed"
            out.append(f"{item.package} {installed}: {problem} (mailflow relies on it; "
                       "see the version ranges in pyproject.toml)")
    return out


def check_or_exit() -> None:
    found = problems()
    if found:
        for line in found:
            print(f"mailflow: {line}", file=sys.stderr)
        raise SystemExit(2)
