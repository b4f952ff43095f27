"""mailflow's Celery tasks: one module per pipeline step, each task named ``mailflow.<step>``."""

from tasks import bounce, connect, flush, mx, report, transmit, webhook  # noqa: F401  (registers the tasks)
