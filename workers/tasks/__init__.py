"""Celery tasks, one module per pool; each task is a thin shell over plain functions."""
