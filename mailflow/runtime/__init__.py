"""What every mailflow process runs with, whatever its role: the Celery app's own parts."""
