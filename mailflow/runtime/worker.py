"""Start-up of ``celery -A mailflow worker``: the same config and plugins as every process.

The config directory comes from ``$MAILFLOW_CONFIG`` (default ``./config``):
Celery's own ``--config`` option already means something else.

A worker whose host has the queue directory (``queue_dir``) is its owner's worker: it
consumes the owner's Celery queue (mailflow/queue/identity.py) and offers to run the
queue manager.  A worker without one is a *worker host*: it says so, takes
no owner's work, and starts serving as soon as a queue directory appears on its host
(an smtpd started after it, or the first ``send_email``).  On the embedded broker there
is one host only: its worker makes the queue directory, as every process there does.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    celeryd_init,
    worker_init,
    worker_shutdown,
)

from mailflow import config, logs
from mailflow.config import environ, startup
from mailflow.config.files import ConfigError
from mailflow.config.loader import Config
from mailflow.queue.identity import owner_queue
from mailflow.runtime import compat, control, services, steps  # noqa: F401  (control: registers the commands)
from mailflow.runtime.steps import local_spool
from mailflow.util.descriptors import raise_descriptor_limit
from mailflow.wire.seal import KEY_FILE, key_exists, mac_key

log = logging.getLogger(__name__)


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


#: Threads beyond concurrency_max, for the steps that deliver nothing themselves
#: (lookup_mx, acquire_connection, report, bounce, countdown firings).
OTHER_STEP_THREADS = 8


@celeryd_init.connect
def _threads_from_concurrency_max(conf: Any = None, options: dict[str, Any] | None = None,
                                  **_kwargs: Any) -> None:
    """A threads-pool worker node gets a thread for each delivery ``concurrency_max``
    allows, unless ``--concurrency`` says otherwise: each transmit holds a thread for its
    batch, and with 16 threads a node never reached more than 16 slow receivers at once
    whatever outbound.ini promised (issue 14; docs/architecture.md, "Slow receivers")."""
    # loaded by worker_init, which Celery sends first (a broken config has stopped it)
    most = config.current().outbound.concurrency_max
    raise_descriptor_limit(most + 256, f"concurrency_max = {most}")
    if conf is None or (options or {}).get("concurrency") or conf.worker_pool != "threads":
        return
    conf.worker_concurrency = most + OTHER_STEP_THREADS


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
    cfg = startup.load_or_exit(os.environ.get("MAILFLOW_CONFIG"))
    _key_or_exit(cfg)
    try:  # connections bind these: an address this host does not have fails every one
        cfg.egress.check_local(cfg.directory / "egress.ini")
    except ConfigError as exc:
        print(f"mailflow: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _key_or_exit(cfg: Config) -> None:
    """A worker host must have its owners' ``broker.key``: with a key of its own making it
    would refuse every message they publish, and they every report it sends.  An owner's
    worker makes the key when there is none (the first process of a new install)."""
    if local_spool() is None and not key_exists(cfg.directory):
        print(f"mailflow: {cfg.directory / KEY_FILE} is missing: a worker host needs the broker.key "
              "of the queue owners that share its broker (copy it from one of them)",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    mac_key(cfg.directory)  # made now by an owner, not by its first publish
    cfg.restamp()  # a key made just now is no change to warn about


@celeryd_after_setup.connect
def _consume_the_owner_queue(sender: str = "", instance: Any = None, **_kwargs: Any) -> None:
    """Before the consumer starts: the owner's queue, when this host has the queue directory."""
    spool = local_spool()
    if spool is None:
        log.warning("no queue directory at %s: this worker serves no owner until one appears "
                    "(a worker host); the delivery steps of a queue run on the host that has it",
                    config.current().queue_path())
        return
    if instance is not None:
        instance.app.amqp.queues.select_add(owner_queue(spool.identity))
    log.info("serving the queue %s at %s", spool.identity, spool.root)


steps.install()


@worker_shutdown.connect
def _say_what_is_left(**_kwargs: Any) -> None:
    """After the parts have stopped: any thread of mailflow's still running is a part that
    did not stop in order -- said, so a test (and an operator) can see it."""
    left = services.left_running()
    if left:
        log.warning("still running after the worker stopped: %s", ", ".join(left))
    else:
        log.info("every mailflow part stopped")
