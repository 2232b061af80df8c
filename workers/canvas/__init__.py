"""The job canvas as plain functions: plans, state transitions and steps (no Celery)."""
