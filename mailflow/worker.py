"""Start-up of ``celery -A mailflow worker``: the same config and plugins as every process.

The config directory comes from ``$MAILFLOW_CONFIG`` (default ``./config``):
Celery's own ``--config`` option already means something else.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from mailflow import compat, config, logs, proctitle
from mailflow.config import environ, startup
from mailflow.queue import manager as qmgr

_qmgr: list[Any] = []


@celeryd_init.connect
def _json_from_the_start(instance: Any = None, **_kwargs: Any) -> None:
    """In JSON mode, JSON before Celery writes anything: no banner (not a log line, and a
    JSON log shipper would choke on it), warnings through logging, and the root handler
    set up now -- Celery keeps a handler it finds and only adds its own to a bare logger."""
    if logs.log_format() != "json":
        return
    if instance is not None:
        instance.quiet = True
    logs.setup("json")
    logging.captureWarnings(True)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: Any = None, **_kwargs: Any) -> None:
    """``MAILFLOW_LOG_FORMAT`` (``mailflow --log-format``) for Celery's handlers too."""
    if logger is not None:
        logs.format_handlers(logger)


@worker_init.connect
def _load_config(**_kwargs: Any) -> None:
    # SystemExit passes through Celery's signal dispatch (it catches Exception
    # only), so a broken config stops the worker with a non-zero status.
    environ.check_or_exit()
    compat.check_or_exit()
    startup.load_or_exit(os.environ.get("MAILFLOW_CONFIG"))


@worker_ready.connect
def _start_queue_manager(**_kwargs: Any) -> None:
    """Every worker offers to run the queue manager of its host's queue directory."""
    _qmgr.append(qmgr.QueueManager(config.current()).start())
    proctitle.start("worker", config.current())


@worker_shutdown.connect
def _stop_queue_manager(**_kwargs: Any) -> None:
    while _qmgr:
        _qmgr.pop().stop()
