"""Flower settings for mailflow: ``celery -A mailflow flower --conf=deploy/flower/flowerconfig.py``.

Basic auth comes from ``FLOWER_BASIC_AUTH=user:password``, which Flower reads
itself.  Flower keeps task history in memory: ``max_tasks`` bounds it (its
default of 100,000 costs about 0.5 GB).  ``FLOWER_PERSISTENT=true`` keeps it
across restarts in ``FLOWER_DB``.
"""

import os

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
max_tasks = int(os.environ.get("FLOWER_MAX_TASKS", "10000"))
persistent = os.environ.get("FLOWER_PERSISTENT", "false").lower() in ("1", "true", "yes")
db = os.environ.get("FLOWER_DB", ".mailflow/flower.db")
