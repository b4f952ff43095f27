"""mailflow: the outbound half of a mail transfer agent, on Celery.

``celery -A mailflow worker`` finds the Celery application here as ``app``.
"""

from __future__ import annotations

import os

from celery import Celery

__version__ = "0.1.0"

if os.environ.get("MAILFLOW_BROKER_URL"):
    # Celery lets CELERY_BROKER_URL override any config, so ours must be the one it sees.
    os.environ["CELERY_BROKER_URL"] = os.environ["MAILFLOW_BROKER_URL"]

from .embedded import register as _register_embedded_broker  # noqa: E402

_register_embedded_broker()

app = Celery("mailflow")
app.config_from_object("celeryconfig")

from . import worker as _worker  # noqa: E402,F401  (connects the worker start-up)

__all__ = ["app", "__version__"]
