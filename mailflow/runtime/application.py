"""The Celery application every mailflow process shares.

``celery -A mailflow worker`` finds it as ``mailflow.app``; library code that
publishes a task imports it from here, by name only, and never imports a task
module (tasks sit on top of the library, not beside it).
"""

from __future__ import annotations

import os

from celery import Celery

from mailflow.runtime.authentic import AuthenticTask
from mailflow.runtime.embedded import register as register_embedded_broker
from mailflow.runtime.eventbatch import gather_sent_events

if os.environ.get("MAILFLOW_BROKER_URL"):
    # Celery lets CELERY_BROKER_URL override any config, so ours must be the one it sees.
    os.environ["CELERY_BROKER_URL"] = os.environ["MAILFLOW_BROKER_URL"]

register_embedded_broker()

# Every task, Celery's built-in ones too, checks its message's MAC before it runs
# (mailflow/runtime/authentic.py, which also signs what this process publishes).
app = Celery("mailflow", task_cls=AuthenticTask)
app.config_from_object("celeryconfig")
gather_sent_events(app)
