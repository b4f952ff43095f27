"""Celery settings for mailflow (``app.config_from_object('celeryconfig')``).

The broker is ``$MAILFLOW_BROKER_URL`` (or ``$CELERY_BROKER_URL``).  Unset
means the embedded default: kombu's ``filesystem://`` transport in the state
directory, which needs no server and supports everything mailflow uses
(chains, countdowns, ``celery call``, remote control, events for Flower).
It is *not* durable -- a killed worker loses the messages it had fetched --
which is why the queue directory, not the broker, is the record of truth.
"""

from __future__ import annotations

from mailflow.config import environ
from mailflow.config.state import state_dir

# A malformed variable stops the process with one line (mailflow.config.environ), even
# when Celery loads this module lazily in a process that did not check first.
environ.check_or_exit()

broker_url = environ.broker_url()

if broker_url.startswith("filesystem://"):
    _broker_dir = state_dir() / "broker"
    _folders = {name: _broker_dir / name for name in ("queue", "control", "processed")}
    for _path in _folders.values():
        _path.mkdir(parents=True, exist_ok=True)
    broker_transport_options = {
        "data_folder_in": str(_folders["queue"]),
        "data_folder_out": str(_folders["queue"]),
        "control_folder": str(_folders["control"]),
        "processed_folder": str(_folders["processed"]),
        "store_processed": False,
        # the transport polls a directory; 1 s (the default) adds a second per hop
        "polling_interval": 0.1,
    }

if environ.transport_options():
    # e.g. '{"visibility_timeout": 7200}' for Redis; merged over the defaults above
    broker_transport_options = {
        **globals().get("broker_transport_options", {}),
        **environ.transport_options(),
    }

imports = ("tasks",)

# JSON only: task arguments are queue ids and names, never pickles.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True

# A worker that dies mid-task gives the task back (the queue file decides
# whether there is anything left to do, so a re-run is harmless).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Events on, so Flower shows the pipeline without being asked to enable them.
worker_send_task_events = True
task_send_sent_event = True

# One process per worker node, many threads: SMTP work waits on the network, and the
# connection pool, concurrency_max and the leases handed from acquire_connection to
# transmit all live in that one process. worker_direct gives each node its own queue,
# to which transmit is routed (docs/architecture.md). The number of threads follows
# outbound.ini's concurrency_max, a thread per delivery it allows plus a few
# (mailflow/runtime/worker.py); `--concurrency N` sets it instead.
worker_pool = "threads"
worker_direct = True

broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
