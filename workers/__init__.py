"""Celeriac workers: the Celery app and its tasks (imports celeriac.platform, never the reverse)."""
