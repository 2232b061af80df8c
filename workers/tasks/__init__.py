"""Celery tasks, one module per pool; each task is a thin shell over plain functions."""

from __future__ import annotations

from collections.abc import Sequence

from celery import current_app

from celeriac.platform.models import Priority
from celeriac.platform.tasks import Publication, publish, publish_many


def send(name: str, *, band: Priority | str, tenant_slug: str, kwargs: dict[str, str]) -> str:
    """Publish a task of a tenant's job from inside a worker, on the worker's own app."""
    return publish(name, band=band, tenant_slug=tenant_slug, kwargs=kwargs, app=current_app)


def send_many(publications: Sequence[Publication]) -> list[str]:
    """Publish several tasks at once (one producer, one dispatcher release per pool)."""
    return publish_many(publications, app=current_app)
