"""mailflow: the outbound half of a mail transfer agent, on Celery.

``celery -A mailflow worker`` finds the Celery application here as ``app``: it is made
on first use of that name, with the worker's start-up signals connected, so that a plugin's
``from mailflow import hooks`` loads the hooks and not the whole product.
"""

from __future__ import annotations

from typing import Any

from mailflow import moved

moved.install()  # plugins written for 0.1's module paths keep loading

__version__ = "0.1.0"

__all__ = ["app", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from mailflow.runtime import worker  # noqa: F401  (connects the worker's start-up signals)
        from mailflow.runtime.application import app
        return app
    raise AttributeError(f"module 'mailflow' has no attribute {name!r}")
