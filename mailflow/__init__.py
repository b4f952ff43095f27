"""mailflow: the outbound half of a mail transfer agent, on Celery.

``celery -A mailflow worker`` finds the Celery application here as ``app``.
"""

from __future__ import annotations

from mailflow import worker as _worker  # noqa: F401  (connects the worker's start-up signals)
from mailflow.application import app

__version__ = "0.1.0"

__all__ = ["app", "__version__"]
