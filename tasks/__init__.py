"""mailflow's Celery tasks: one module per pipeline step, each task named ``mailflow.<step>``."""

from tasks import bounce, connect, flush, mx, record_outcomes, transmit, webhook  # noqa: F401  (registers the tasks)
