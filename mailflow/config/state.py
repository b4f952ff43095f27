"""Where runtime state other than the queue lives (PRODUCT §1).

Everything goes under ``.mailflow/`` in the working directory, or
``$MAILFLOW_STATE_DIR``: two instances in two directories never meet.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    path = Path(os.environ.get("MAILFLOW_STATE_DIR") or ".mailflow").absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path
