"""Start-up of ``celery -A mailflow worker``: the same config and plugins as every process.

The config directory comes from ``$MAILFLOW_CONFIG`` (default ``./config``):
Celery's own ``--config`` option already means something else.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown

from . import startup

_qmgr: list[Any] = []


@worker_init.connect
def _load_config(**_kwargs: Any) -> None:
    # SystemExit passes through Celery's signal dispatch (it catches Exception
    # only), so a broken config stops the worker with a non-zero status.
    startup.load_or_exit(os.environ.get("MAILFLOW_CONFIG"))


@worker_ready.connect
def _start_queue_manager(**_kwargs: Any) -> None:
    """Every worker offers to run the queue manager of its host's queue directory."""
    from . import config, proctitle, qmgr

    _qmgr.append(qmgr.QueueManager(config.current()).start())
    proctitle.start("worker", config.current())


@worker_shutdown.connect
def _stop_queue_manager(**_kwargs: Any) -> None:
    while _qmgr:
        _qmgr.pop().stop()
