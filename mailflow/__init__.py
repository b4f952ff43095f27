"""mailflow: the outbound half of a mail transfer agent, on Celery.

``celery -A mailflow worker`` finds the Celery application here as ``app``.
"""

from __future__ import annotations

from celery import Celery

__version__ = "0.1.0"

app = Celery("mailflow")
app.config_from_object("celeryconfig")

from . import worker as _worker  # noqa: E402,F401  (connects the worker start-up)

__all__ = ["app", "__version__"]
