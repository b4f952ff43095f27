"""mailflow's Celery tasks: one module per pipeline step, each task named ``mailflow.<step>``."""
