"""mailflow: the outbound half of a mail transfer agent, on Celery.

``celery -A mailflow worker`` finds the Celery application here as ``app``.
"""

from __future__ import annotations

from mailflow import moved, worker  # noqa: F401  (worker: connects the worker's start-up signals)
from mailflow.application import app

moved.install()  # plugins written for 0.1's module paths keep loading

__version__ = "0.1.0"

__all__ = ["app", "__version__"]
