"""Flower settings for mailflow: ``celery -A mailflow flower --conf=deploy/flower/flowerconfig.py``.

Basic auth comes from ``FLOWER_BASIC_AUTH=user:password``, which Flower reads
itself.  Flower keeps task history in memory: ``max_tasks`` bounds it (its
default of 100,000 costs about 0.5 GB).  ``FLOWER_PERSISTENT=true`` keeps it
across restarts in ``FLOWER_DB``.  Each variable is read, checked and documented
with mailflow's others (mailflow/config/environ.py).
"""

from mailflow.config import environ
from mailflow.config.state import state_dir

environ.check_or_exit()
address = environ.value("FLOWER_ADDRESS")
port = environ.value("FLOWER_PORT")
max_tasks = environ.value("FLOWER_MAX_TASKS")
persistent = environ.value("FLOWER_PERSISTENT")
db = environ.value("FLOWER_DB") or str(state_dir() / "flower.db")
